"""Fork server for the CLI tests (conftest.run_python): run ``python ARGS`` commands without paying the
interpreter start and the torch/RecBole imports (about 4 s) for each one.

The server imports the CLI once and never trains, so each forked child starts from the state a fresh
``python run_bet.py`` has after its imports: no logger set up, no threads started, no seeds drawn.
Protocol, one JSON object a line: request ``{"argv": [...], "stdout": PATH, "stderr": PATH}`` on stdin;
replies ``{"pid": N}`` when the child starts and ``{"returncode": N}`` when it ends (negative: killed by
that signal, as subprocess reports it).
"""
import json
import os
import runpy
import sys
import traceback

import recbole_bet.cli  # noqa: F401  the imports every child shares
import recbole_bet.pipeline  # noqa: F401


def _exit_code(code) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # sys.exit("message"), as the interpreter does
    return 1


def child(argv: list, stdout: str, stderr: str) -> None:
    """Become ``python *argv``: redirect the standard streams, run the script or module as __main__, exit."""
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, stdout, os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        opened = os.open(path, flags, 0o644)
        os.dup2(opened, fd)
        os.close(opened)
    code = 1
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            sys.path[0] = os.getcwd()
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(argv)
            sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
            runpy.run_path(argv[0], run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except BaseException:  # noqa: B902  an uncaught error prints its traceback and exits 1, as python does
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def reply(obj: dict, out) -> None:
    out.write(json.dumps(obj) + "\n")
    out.flush()


def main() -> None:
    replies = os.fdopen(os.dup(1), "w")  # the reply pipe, kept off fd 1 so children never write to it
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            replies.close()
            child(request["argv"], request["stdout"], request["stderr"])
        reply({"pid": pid}, replies)
        _, status = os.waitpid(pid, 0)
        reply({"returncode": os.waitstatus_to_exitcode(status)}, replies)


if __name__ == "__main__":
    main()
