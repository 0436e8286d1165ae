"""Run the CLI, but SIGKILL this process at a chosen moment (used by test_resume.py).

    python tests/kill_runner.py EVENT N run_bet.py-args...

EVENT: finetune (inside the N-th finetuning), evaluate (inside the N-th evaluation), checkpoint (the N-th
checkpoint: temp file written, not yet renamed), retrain (inside the N-th retraining of a top action).
"""
import os
import signal
import sys


def main():
    event, nth, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    sys.argv = ["run_bet.py", *args]
    calls = {"n": 0}

    def kill_on_nth(original, before=True):
        def wrapper(*a, **k):
            calls["n"] += 1
            if calls["n"] == nth and before:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*a, **k)
        return wrapper

    from recbole_bet import pipeline, training
    from recbole_bet.methods.bet import checkpoint

    if event == "finetune":
        original = training.Finetuner._train_epoch
        training.Finetuner._train_epoch = kill_on_nth(original)
    elif event == "evaluate":
        from recbole.evaluator import Evaluator

        Evaluator.evaluate = kill_on_nth(Evaluator.evaluate)
    elif event == "checkpoint":
        real_replace = os.replace

        def replace(src, dst):
            if os.path.basename(dst) == checkpoint.FILENAME:
                calls["n"] += 1
                if calls["n"] == nth:
                    os.kill(os.getpid(), signal.SIGKILL)
            return real_replace(src, dst)

        checkpoint.os.replace = replace
    elif event == "retrain":
        # every retraining of the top actions goes through train_from (from scratch or from the pretrained weights)
        pipeline.RunContext.train_from = kill_on_nth(pipeline.RunContext.train_from)
    else:
        raise SystemExit(f"unknown event {event}")
    from recbole_bet.cli import run_bet_main

    sys.exit(run_bet_main())


if __name__ == "__main__":
    main()
