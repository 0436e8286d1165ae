"""Convergence calibration: validation curves of long trainings, and which stopping rule meets the criterion.

    python benchmarks/convergence.py --dataset=ml-100k --model=LightGCN --epochs=1000 \
        --setting=1e-3:2048 --setting=5e-3:2048 --arms=full,es0.9 --out=results/convergence-ml-100k

Each (setting, arm) trains once for ``--epochs`` epochs with a validation after every epoch and no early
stopping; the per-epoch validation NDCG@20 (and the training loss) goes to ``<out>.json`` (one entry per run,
written as soon as a run ends, so an interrupted calibration keeps what finished; runs already there are
skipped). ``--report-only`` rebuilds ``<out>.md`` and ``<out>.png`` from that file: the curves, and for each
candidate stopping rule, where it would have stopped each run, its best-so-far validation NDCG@20 there
against the run's best in all its epochs (the criterion: within 1%), and the epochs it costs.

Arms: ``full`` (every row d_max wide: the pretraining), ``es<S>`` (equal sizes at sparsity S, as
``--method=es`` chooses them) and ``NAME=PATH`` (the per-row sizes or element masks of a run's compact artifact
``table.npz``, e.g. BET's chosen action, trained from a fresh initialisation: ``bet0.95=results/runs/.../table.npz``).
Settings are ``LR:BATCH``.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
from time import perf_counter

import numpy as np

METRIC = "ndcg@20"
PROG = "python benchmarks/convergence.py"


class _TimeUp(Exception):
    pass


def train_curve(model: str, dataset: str, lr: float, batch: int, arm: str, epochs: int, seed: int,
                config_files: list, device: str = "cpu", max_minutes: float | None = None) -> dict:
    """One long training with a validation each epoch: {"valid": [...], "loss": [...], "epoch_s": ...}.
    With ``max_minutes`` the run ends after the first validation past that time ("time_limited": true)."""
    from recbole.utils import init_logger, init_seed

    from recbole_bet.budget import equal_sizes, make_budget
    from recbole_bet.config import make_config
    from recbole_bet.pipeline import prepare
    from recbole_bet.training import BestStateTrainer

    artifact = arm.split("=", 1)[1] if "=" in arm else None
    if artifact is not None:
        from recbole_bet.export import read_artifact
        meta, _ = read_artifact(artifact)
        sparsity = float(meta["sparsity"])
    else:
        sparsity = 0.9 if arm == "full" else float(arm[2:])
    config = make_config(model, dataset, config_files, {
        "method": "es", "sparsity": sparsity, "learning_rate": lr, "train_batch_size": batch, "epochs": epochs,
        "stopping_step": 10 ** 9, "convergence_window": 0, "warmup_epochs": 0, "eval_step": 1, "seed": seed, "show_progress": False,
        "state": "WARNING",  # RecBole's per-epoch INFO lines for 1000 epochs say nothing the curve does not
        "use_gpu": device != "cpu",
    })
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    ctx = prepare(config)
    ctx.reseed()
    b = ctx.budget
    if artifact is not None:  # the artifact's masks on a fresh initialisation: load it, then put init weights back
        from recbole_bet.export import load_artifact
        load_artifact(artifact, ctx.model, ctx.masked, model, dataset)
        masks = ctx.masked.keep, ctx.masked.sizes
        ctx.masked.load(ctx.init_state, sizes=masks[1], keep=masks[0])
    else:
        sizes = None if arm == "full" else equal_sizes(make_budget(sparsity, b.d_max, b.d_min, b.n_users, b.n_items,
                                                                   b.tables_per_entity))
        ctx.masked.load(ctx.init_state, sizes)
    curve, losses = [], []

    class CurveTrainer(BestStateTrainer):
        def _valid_epoch(self, valid_data, show_progress=False):
            score, result = super()._valid_epoch(valid_data, show_progress=show_progress)
            curve.append(float(result[METRIC]))
            if max_minutes is not None and perf_counter() - start > 60 * max_minutes:
                raise _TimeUp
            if len(curve) % 50 == 0:
                print(f"  {arm} lr={lr} batch={batch}: epoch {len(curve)}, valid {METRIC} {curve[-1]:.4f} "
                      f"(best {max(curve):.4f} at {int(np.argmax(curve)) + 1})", flush=True)
            return score, result

        def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
            loss = super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)
            losses.append(float(sum(loss) if isinstance(loss, tuple) else loss))
            return loss

    start = perf_counter()
    trainer = CurveTrainer(config, ctx.model)
    try:
        trainer.fit(ctx.train_data, ctx.valid_data, verbose=False, saved=True, show_progress=False)
    except _TimeUp:
        pass
    seconds = perf_counter() - start
    return {"model": model, "dataset": dataset, "lr": lr, "batch": batch, "arm": arm.split("=")[0], "seed": seed,
            "artifact": artifact,
            "epochs": len(curve), "valid": curve, "loss": losses, "seconds": seconds,
            "epoch_s": seconds / max(1, len(curve)), "device": device,
            "time_limited": len(curve) < epochs}


# ------------------------------------------------------------------------------------ stopping rules

def stop_epoch(curve, rule: dict) -> int:
    """Epochs a rule would run on this validation curve (1-based), capped at the curve's length.

    Rules (all keep the best-validation weights, so what they deliver is the best so far where they stop):
    - ``{"kind": "patience", "patience": P, "warmup": W}``: today's rule; stop P epochs after the best, never
      before epoch W;
    - ``{"kind": "window", "window": K, "tol": T, "min": M, "cap": C}``: stop at the first epoch e >= M at
      which the best of the last K epochs is not more than T (relative) above the best before them, i.e. the
      last K epochs gained less than T; always by C.
    """
    n = len(curve)
    if rule["kind"] == "patience":
        best, best_at = -np.inf, 0
        for e, v in enumerate(curve, 1):
            if v > best:
                best, best_at = v, e
            if e >= rule.get("warmup", 0) and e - best_at >= rule["patience"]:
                return e
        return n
    k, tol, first, cap = rule["window"], rule["tol"], rule.get("min", rule["window"]), rule.get("cap", n)
    arr = np.asarray(curve)
    for e in range(max(first, k + 1), min(cap, n) + 1):
        before, recent = arr[: e - k].max(), arr[e - k: e].max()
        if recent <= before * (1 + tol):
            return e
    return min(cap, n)


def rule_name(rule: dict) -> str:
    if rule["kind"] == "patience":
        return f"patience {rule['patience']}, warm-up {rule.get('warmup', 0)}"
    return f"window {rule['window']}, tol {rule['tol']:g}, min {rule.get('min', rule['window'])}"


CANDIDATE_RULES = (
    [{"kind": "patience", "patience": 10, "warmup": 30}]
    + [{"kind": "patience", "patience": p, "warmup": 30} for p in (25, 50, 100)]
    + [{"kind": "window", "window": k, "tol": t, "min": m}
       for k in (25, 50, 100) for t in (0.0, 0.002, 0.005, 0.01) for m in (50, 100)]
)


def evaluate_rules(runs: list, rules=CANDIDATE_RULES, criterion: float = 0.01) -> list:
    """For each rule: per run (stop epoch, best-so-far there / best overall), all-met, total epochs."""
    out = []
    for rule in rules:
        rows = []
        for r in runs:
            curve = np.asarray(r["valid"])
            e = stop_epoch(curve, rule)
            ratio = float(curve[:e].max() / curve.max())
            rows.append({"stop": e, "ratio": ratio, "met": ratio >= 1 - criterion})
        out.append({"rule": rule, "name": rule_name(rule), "runs": rows, "all_met": all(x["met"] for x in rows),
                    "epochs": int(sum(x["stop"] for x in rows)), "worst": min(x["ratio"] for x in rows)})
    return out


# ---------------------------------------------------------------------------------------------- report

def run_key(r) -> str:
    device = "" if r.get("device", "cpu") == "cpu" else f"/{r['device']}"
    return f"{r['model']}/{r['arm']}/lr{r['lr']:g}/b{r['batch']}/seed{r['seed']}{device}"


def write_report(out: str, command: str) -> None:
    with open(out + ".json") as fh:
        data = json.load(fh)
    runs = data["runs"]
    lines = [f"# Convergence calibration: {', '.join(sorted({r['dataset'] for r in runs}))}", "",
             "Produced by", "", "```", *[c for c in data.get("commands", [command]) if c.strip() != PROG], "```", "",
             f"Each run trains for its epoch count with a validation after every epoch and no early stopping "
             f"(validation {METRIC.upper()}, full ranking). 'best' is the run's best validation over all its "
             f"epochs; 'best@E' the best within the first E epochs. A run marked '(time limit)' was ended by "
             f"--max_minutes: its 'best' is only the best so far.", "",
             "| run | epochs | s/epoch | best | best at | best@100 | best@200 | best@300 | best@500 | best@1000 |",
             "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in runs:
        v = np.asarray(r["valid"])
        at = [f"{v[:e].max():.4f}" if len(v) >= e else "" for e in (100, 200, 300, 500, 1000)]
        cut = " (time limit)" if r.get("time_limited") else ""
        lines.append(f"| {run_key(r)} | {len(v)}{cut} | {r['epoch_s']:.2f} | {v.max():.4f} | {int(v.argmax()) + 1} | "
                     + " | ".join(at) + " |")
    lines += ["", "## Stopping rules on these curves", "",
              "Per training setting: where each rule would stop each run (it keeps the best-validation weights), "
              f"the validation {METRIC.upper()} it would deliver as a fraction of the run's best, and the epochs it "
              "costs in total. Criterion: every run within 1% of its best."]
    settings = sorted({(r["model"], r["lr"], r["batch"]) for r in runs})
    if all(r.get("time_limited") for r in runs):
        lines += ["", "No run here is complete (all ended by --max_minutes): no rule can be judged on them."]
    for model, lr, batch in settings:
        group = [r for r in runs if (r["model"], r["lr"], r["batch"]) == (model, lr, batch)
                 and not r.get("time_limited")]  # a cut curve has no "best over 1000 epochs" to judge a rule by
        if not group:
            continue
        lines += ["", f"### {model}, lr {lr:g}, batch {batch}: runs " + ", ".join(r["arm"] for r in group), "",
                  "| rule | all within 1% | worst | total epochs | stops |", "|---|---|--:|--:|---|"]
        for ev in evaluate_rules(group):
            stops = ", ".join(str(x["stop"]) for x in ev["runs"])
            lines.append(f"| {ev['name']} | {'yes' if ev['all_met'] else 'no'} | {ev['worst']:.4f} | "
                         f"{ev['epochs']} | {stops} |")
    with open(out + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return
    models = sorted({r["model"] for r in runs})
    fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 4.5), squeeze=False)
    for ax, m in zip(axes[0], models):
        for r in (r for r in runs if r["model"] == m):
            ax.plot(np.arange(1, len(r["valid"]) + 1), r["valid"], lw=0.8,
                    label=f"{r['arm']} lr {r['lr']:g} b{r['batch']} s{r['seed']}")
        ax.set_title(f"{m}: validation {METRIC.upper()} per epoch")
        ax.set_xlabel("epoch")
        ax.set_ylabel(METRIC.upper())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out + ".png", dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--model", default="LightGCN")
    p.add_argument("--epochs", type=int, default=1000)
    p.add_argument("--setting", action="append", default=[], help="LR:BATCH (repeatable)")
    p.add_argument("--arms", default="full,es0.9")
    p.add_argument("--seed", type=int, default=2020)
    p.add_argument("--config_files", default="")
    p.add_argument("--out", required=True, help="path without suffix: writes .json, .md, .png")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--max_minutes", type=float, default=None, help="end each run after this long (marked)")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    command = "python benchmarks/convergence.py " + " ".join(argv if argv is not None else sys.argv[1:])
    sys.argv = sys.argv[:1]  # RecBole's Config reads sys.argv for --KEY=VALUE: ours are not its keys
    path = args.out + ".json"
    data = {"runs": [], "commands": []}
    if os.path.exists(path):
        with open(path) as fh:
            data = json.load(fh)
    if not args.report_only:
        if command not in data["commands"]:
            data["commands"].append(command)
        done = {run_key(r) for r in data["runs"]}
        files = args.config_files.split() if args.config_files else []
        for setting in args.setting or ["1e-3:2048"]:
            lr, batch = setting.split(":")
            for arm in args.arms.split(","):
                key = run_key({"model": args.model, "arm": arm.split("=")[0], "lr": float(lr), "batch": int(batch),
                               "seed": args.seed, "device": args.device})
                if key in done:
                    print(f"{key}: already in {path}")
                    continue
                print(f"{key}: training {args.epochs} epochs", flush=True)
                run = train_curve(args.model, args.dataset, float(lr), int(batch), arm, args.epochs, args.seed, files,
                                  args.device, args.max_minutes)
                print(f"{key}: best {max(run['valid']):.4f} at epoch {int(np.argmax(run['valid'])) + 1}, "
                      f"{run['seconds']:.0f} s", flush=True)
                with open(path + ".lock", "w") as lock:  # two calibrations may share one file
                    fcntl.flock(lock, fcntl.LOCK_EX)
                    if os.path.exists(path):
                        with open(path) as fh:
                            saved = json.load(fh)
                        data["runs"] = saved["runs"]
                        data["commands"] = saved["commands"] + [c for c in data["commands"] if c not in saved["commands"]]
                    data["runs"].append(run)
                    tmp = path + ".tmp"
                    with open(tmp, "w") as fh:
                        json.dump(data, fh)
                    os.replace(tmp, path)
    write_report(args.out, command)
    print(f"wrote {args.out}.json, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
