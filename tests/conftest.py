"""Shared fixtures: in-process run contexts and cached end-to-end CLI runs (each trained once per session)."""

import atexit
import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
QUICK = "properties/quick.yaml"

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one pytest worker per core: one thread each (and in the processes they start), or the
    # workers' thread pools would contend for the same cores
    os.environ["OMP_NUM_THREADS"] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def make_context(model: str, tmp_dir, **config):
    """``prepare`` on ml-100k with the quick profile, as run_bet.py would, without RecBole reading pytest's argv."""
    from recbole_bet.config import make_config
    from recbole_bet.pipeline import prepare

    config = {"checkpoint_dir": str(Path(tmp_dir) / "ckpt"), "pretrain_cache_dir": str(Path(tmp_dir) / "pretrain"),
              **config}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["run_bet.py"])
        return prepare(make_config(model, "ml-100k", config_file_list=["quick"], config_dict=config))


class _ForkServer:
    """Client of tests/fork_server.py: one server per test session, started on first use."""

    def __init__(self):
        self.proc = None
        self.buffer = b""

    def run(self, argv: list, timeout: float) -> subprocess.CompletedProcess:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen([sys.executable, "tests/fork_server.py"], cwd=REPO, text=True,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=1)
            self.buffer = b""
        with tempfile.TemporaryDirectory() as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            self.proc.stdin.write(json.dumps({"argv": argv, "stdout": str(out), "stderr": str(err)}) + "\n")
            self.proc.stdin.flush()
            pid = self._read(None)["pid"]
            try:
                code = self._read(timeout)["returncode"]
            except subprocess.TimeoutExpired:
                os.kill(pid, signal.SIGKILL)
                self._read(None)
                raise subprocess.TimeoutExpired([sys.executable, *argv], timeout, out.read_text(), err.read_text())
            return subprocess.CompletedProcess([sys.executable, *argv], code, out.read_text(), err.read_text())

    def _read(self, timeout):
        """The next reply line; raw reads, so a reply already buffered is never missed by select."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self.proc.stdout], [], [], left)[0]:
                raise subprocess.TimeoutExpired("fork server", timeout)
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            assert chunk, "the fork server died (tests/fork_server.py)"
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


_FORK_SERVER = _ForkServer()
atexit.register(_FORK_SERVER.close)


def run_python(*argv, timeout=900):
    """``python ARGV`` from the repository root, as a process of its own, forked from a server that has
    already imported the CLI (tests/fork_server.py): the same entry points, exit codes and output streams,
    without 4 s of start-up per command. Killed by a signal: returncode is minus the signal, as subprocess."""
    return _FORK_SERVER.run([str(a) for a in argv], timeout)


def run_cli(*args, timeout=900, module=False):
    """``python run_bet.py ARGS`` (or ``python -m recbole_bet ARGS``) from the repository root."""
    entry = ["-m", "recbole_bet"] if module else ["run_bet.py"]
    return run_python(*entry, *args, timeout=timeout)


@pytest.fixture(scope="session")
def cli_run(tmp_path_factory):
    """``cli_run(model, method)``: one real CLI run with quick.yaml (and one epoch) on ml-100k, cached for the
    session: test_cli checks its report, test_export reloads its artifact."""
    base = tmp_path_factory.mktemp("cli_runs")
    cache = {}

    def get(model: str, method: str):
        if (model, method) not in cache:
            out = base / f"{model}-{method}"
            proc = run_cli(f"--model={model}", "--dataset=ml-100k", f"--method={method}", f"--config_files={QUICK}",
                           "--epochs=1", f"--output_dir={out}", f"--checkpoint_dir={base / 'ckpt'}",
                           f"--pretrain_cache_dir={base / 'pretrain'}")
            cache[model, method] = SimpleNamespace(model=model, method=method, proc=proc, out=out,
                                                   report=out / "report.json", table=out / "table.npz")
        return cache[model, method]

    return get


ANSI = re.compile(r"\x1b\[[0-9;]*m")
LOG_LINE = re.compile(r"^\d{2} \w{3} \d{2}:\d{2}\s+(INFO|WARNING)\s")


def check_refused(proc, out_dir, expect):
    """Exit 2, one ``error:`` line (the last stderr line), only RecBole log lines before it, no traceback."""
    assert proc.returncode == 2, (proc.stdout[-2000:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [ANSI.sub("", line) for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert lines[-1] == errors[0]
    assert all(LOG_LINE.match(line) for line in lines[:-1]), proc.stderr
    assert re.search(expect, errors[0]), errors[0]
    assert "report:" not in proc.stdout
    assert not out_dir.exists(), "a refused run must leave no output directory"
