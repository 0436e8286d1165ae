"""Running cells: one ``python -m recbole_bet run ...`` subprocess per cell, in the grid's workdir, and the local
executor, which runs the cells one after another.

A cell whose report.json exists is never rerun; an interrupted BET cell (checkpoint.pt, no report.json)
continues with ``--resume``, from its run folder or from the checkpoint ``grid --park`` left in the results
folder (recbole_bet.grid.parking); any other leftover directory is deleted and the cell runs again. ``run_cell`` is
also what a Ray task runs on a worker node (recbole_bet.grid.ray_executor), so both executors leave the same
folders behind.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from recbole_bet.grid.cells import PARTIAL, Cell, cell_state, extendable, load_json, shown, stale_note
from recbole_bet.grid.parking import drop_parked, unpark

ANSI = re.compile(r"\x1b\[[0-9;]*m")
CELL_COMMAND = ("-m", "recbole_bet", "run")  # after the interpreter: works from an installed package
# Run before the cell's command in a Ray task: the cell gets SIGTERM when the Ray worker that started it dies
# (ray stop, a cancelled or crashed task), instead of running on unseen. Set in the child itself, after fork:
# Popen's preexec_fn is unsafe in a process with threads, which a Ray worker has.
DIE_WITH_PARENT = ("import ctypes, os, signal, sys\n"
                   "if sys.platform == 'linux':\n"
                   "    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
                   "    if os.getppid() != int(sys.argv[1]):\n"
                   "        os._exit(143)  # the parent died before prctl\n"
                   "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])\n")


@dataclass
class Outcome:
    status: str  # done, failed, interrupted
    seconds: float
    returncode: int | None = None
    resumed: bool = False
    stderr_tail: str = ""
    log: Path | None = None
    note: str = ""  # e.g. "resume refused, started over"
    host: str = ""  # the machine the cell ran on (its log is there)
    reason: str = ""  # why a cell failed without an exit status: "harness error", "Ray worker died", ...

    @property
    def why(self) -> str:
        """Why a cell failed, in a few words."""
        if self.returncode is None:
            return self.reason or "harness error"
        if self.returncode < 0:
            return f"killed by signal {-self.returncode}"
        return f"exit {self.returncode}"

    @property
    def label(self) -> str:
        if self.status == "failed":
            return f"FAILED ({self.why})"
        return "done (resumed)" if self.resumed else self.status


def command_for(args: list) -> list:
    return [sys.executable, *CELL_COMMAND, *args]


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = ANSI.sub("", Path(path).read_text(errors="replace"))
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _add_partial(cell: Cell, seconds: float) -> None:
    """An attempt ended without a report but left its directory (resumable): remember its wall time."""
    if cell.dir.is_dir():
        path = cell.dir / PARTIAL
        before = (load_json(path) or {}).get("wall_s", 0.0)
        path.write_text(json.dumps({"wall_s": round(before + seconds, 3)}) + "\n")


def _wait(proc) -> int:
    """proc.wait(), in slices: a cancelled Ray task is told by an exception raised between two Python
    steps, which a single blocking wait for the child would hold back until the cell ended."""
    while True:
        try:
            return proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            continue


def _launch(cell: Cell, args: list, extra_args=(), die_with_parent=False) -> tuple:
    err = cell.log_err()
    err.parent.mkdir(parents=True, exist_ok=True)
    out = err.with_suffix(".out")
    command = command_for([*args, *extra_args])
    launched = [sys.executable, "-c", DIE_WITH_PARENT, str(os.getpid()), *command[1:]] if die_with_parent \
        else command
    start = time.perf_counter()
    with open(out, "w") as fo, open(err, "w") as fe:
        fe.write(f"# {shlex.join(command)}\n")
        fe.flush()
        proc = subprocess.Popen(launched, cwd=cell.grid.workdir, stdout=fo, stderr=fe,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            code = _wait(proc)
        except BaseException:  # Ctrl-C, SIGTERM or a cancelled Ray task: stop the cell too (its checkpoints
            # are atomic: resumable)
            if proc.poll() is None:
                proc.terminate()  # SIGTERM: a Ctrl-C reached it already, but a background job ignores SIGINT
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            _add_partial(cell, time.perf_counter() - start)
            raise
    return code, time.perf_counter() - start, err


def _safe_rmtree(cell: Cell) -> None:
    root, target = cell.grid.output_root.resolve(), cell.dir.resolve()
    if root not in target.parents:  # never delete anything outside the grid's own output_root
        raise RuntimeError(f"refusing to delete {target}: not inside {root}")
    shutil.rmtree(target)


def _afresh(cell: Cell, args: list, extra_args, die_with_parent):
    """After a refused resume or reuse: whatever the refused run left is deleted and the cell runs from scratch."""
    if cell.dir.exists():
        _safe_rmtree(cell)
    return _launch(cell, args, extra_args, die_with_parent)


def run_cell(cell: Cell, extra_args=(), die_with_parent=False) -> Outcome:
    """Run one cell to its report. wall_s in cell.json is this attempt's subprocess time; wall_s_total adds
    the attempts it resumed (recorded in interrupted.json when they stopped). ``extra_args`` reach the
    command but not the recorded arguments (the GPU a Ray task was given: where it ran, not what it ran)."""
    host = socket.gethostname()
    if not cell.grid.workdir.is_dir():
        return Outcome("failed", 0.0, None, host=host, reason="no workdir",
                       stderr_tail=f"the grid's folder {cell.grid.workdir} does not exist on {host}: run the grid "
                                   "from a folder that every node has at the same path (a shared filesystem)")
    state = cell_state(cell)
    args = cell.run_args()
    started = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    resumed, earlier, note = False, 0.0, ""
    if state == "reuse":
        return _reuse(cell, args, extra_args, die_with_parent, host)
    if state == "rerun":
        _safe_rmtree(cell)
        state = cell_state(cell)  # the leftover of a failed extension extends again
    if state == "extend":
        return _extend(cell, args, extra_args, die_with_parent, host, started)
    if state == "parked":
        unpark(cell)
        state = "resume"
    if state == "resume":
        earlier = (load_json(cell.dir / PARTIAL) or {}).get("wall_s", 0.0)
        code, seconds, err = _launch(cell, args + [f"--resume={cell.dir_arg}"], extra_args, die_with_parent)
        resumed = code == 0
        if code == 2:  # refused (damaged checkpoint or another configuration): start the cell afresh
            note, earlier = "resume refused, started over", 0.0
            code, more, err = _afresh(cell, args, extra_args, die_with_parent)
            seconds += more
    else:
        code, seconds, err = _launch(cell, args, extra_args, die_with_parent)
    if code != 0 or not cell.report_path.is_file():
        _add_partial(cell, seconds)  # a BET cell that crashed after a checkpoint resumes next time
        return Outcome("failed", seconds, code, resumed, tail(err), err, note, host)
    record = _record(cell, args, extra_args, resumed, started, seconds, earlier + seconds, code, host)
    (cell.dir / "cell.json").write_text(json.dumps(record, indent=2) + "\n")
    if (cell.dir / PARTIAL).exists():
        (cell.dir / PARTIAL).unlink()
    drop_parked(cell)  # finished: its parked checkpoint would only resume a done cell
    return Outcome("done", seconds, code, resumed, log=err, note=note, host=host)


def _record(cell: Cell, args, extra_args, resumed, started, seconds, total, code, host) -> dict:
    """cell.json of a finished cell."""
    record = {"cell": cell.id, "grid": cell.grid.name, "label": cell.spec.label, "method": cell.spec.method,
              "args": args, "command": shlex.join(command_for([*args, *extra_args])),
              "resumed": resumed, "started": started,
              "finished": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
              "wall_s": round(seconds, 3), "wall_s_total": round(total, 3), "returncode": code, "host": host}
    if extra_args:
        record["extra_args"] = list(extra_args)
    return record


def _reuse(cell: Cell, args: list, extra_args, die_with_parent, host: str) -> Outcome:
    """``--reuse-search``: the finished cell once more with ``--bet_reuse_run`` on its own folder, which keeps its
    search and retrainings and adds choose's training; cell.json then records the arguments asked now and the wall
    time of both runs. A refused or failed run leaves the finished cell as it was (the run writes its report last)."""
    before = load_json(cell.dir / "cell.json") or {}
    code, seconds, err = _launch(cell, args + [f"--bet_reuse_run={cell.dir_arg}"], extra_args, die_with_parent)
    if code != 0:
        return Outcome("failed", seconds, code, False, tail(err), err, "reusing its search", host)
    earlier = (before.get("wall_s_total", before.get("wall_s", 0.0)) or 0.0) + \
        (load_json(cell.dir / PARTIAL) or {}).get("wall_s", 0.0)  # an interrupted attempt at reusing it
    record = {**before, "args": args, "reused": {
        "command": shlex.join(command_for([*args, f"--bet_reuse_run={cell.dir_arg}", *extra_args])),
        "finished": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "wall_s": round(seconds, 3),
        "host": host, "args_before": before.get("args")}, "wall_s_total": round(earlier + seconds, 3)}
    (cell.dir / "cell.json").write_text(json.dumps(record, indent=2) + "\n")
    if (cell.dir / PARTIAL).exists():
        (cell.dir / PARTIAL).unlink()
    return Outcome("done", seconds, code, False, log=err, note="search reused, choose's training added", host=host)


def source_arg(cell: Cell) -> str:
    """The ``reuse_from`` cell's folder as the cell's command (run in the grid's workdir) is given it."""
    return shown(cell.reuse_source, cell.grid.workdir)


def _extend(cell: Cell, args: list, extra_args, die_with_parent, host: str, started: str) -> Outcome:
    """A new cell whose ``reuse_from`` cell has finished here: run with ``--bet_reuse_run`` on that folder, which keeps
    its search and retrainings and adds what this cell's keys add. cell.json records the source and counts its wall
    time in ``wall_s_total`` (what the cell cost from scratch). Refused (another configuration): run afresh."""
    source = source_arg(cell)
    code, seconds, err = _launch(cell, args + [f"--bet_reuse_run={source}"], extra_args, die_with_parent)
    note, earlier, reused = f"extended {source}", 0.0, None
    if code == 0 and cell.report_path.is_file():
        before = load_json(cell.reuse_source / "cell.json") or {}
        earlier = before.get("wall_s_total", before.get("wall_s", 0.0)) or 0.0
        reused = {"from": source, "wall_s_from": earlier}
    else:
        if code == 2:  # refused: its search cannot stand for this cell's
            note = f"reusing {source} refused, started over"
            code, more, err = _afresh(cell, args, extra_args, die_with_parent)
            seconds += more
        if code != 0 or not cell.report_path.is_file():
            _add_partial(cell, seconds)
            return Outcome("failed", seconds, code, False, tail(err), err, note, host)
    record = _record(cell, args, extra_args, False, started, seconds, earlier + seconds, code, host)
    if reused is not None:
        record["reused"] = dict(reused, command=shlex.join(command_for([*args, f"--bet_reuse_run={source}",
                                                                          *extra_args])))
    (cell.dir / "cell.json").write_text(json.dumps(record, indent=2) + "\n")
    return Outcome("done", seconds, code, False, log=err, note=note, host=host)


def status_prefix(i: int, n: int, cell: Cell) -> str:
    width = len(str(n))
    return f"[{i:>{width}}/{n}] {cell.id:<44} "


def skip_line(cell: Cell) -> str:
    info = load_json(cell.dir / "cell.json") or {}
    adopted = info.get("relabelled_from")
    if adopted:  # grid --adopt: it ran with the screen's arguments by design, not a stale cell
        return f"skipped (report.json exists; adopted from {adopted['grid']}:{adopted['label']})"
    note = stale_note(cell, info.get("args"))
    return "skipped (report.json exists)" + (f"; WARNING: {note}" if note else "")


def outcome_line(outcome: Outcome) -> str:
    return (f"({outcome.note}) " if outcome.note else "") + f"{outcome.label} {outcome.seconds:.1f} s"


def describe(cells: list) -> dict:
    """A dry run: every cell, what would happen to it and its command; runs and writes nothing."""
    counts = {}
    for i, cell in enumerate(cells, 1):
        state = cell_state(cell)
        line = status_prefix(i, len(cells), cell)
        if state == "done":
            print(line + skip_line(cell), flush=True)
            counts["skipped"] = counts.get("skipped", 0) + 1
            continue
        extends = state == "extend" or (state == "rerun" and extendable(cell))
        if state == "parked":
            what = f"would resume from the checkpoint parked in {shown(cell.parked_dir)}"
        elif extends:
            what = f"would extend the finished run in {shown(cell.reuse_source)} (--bet_reuse_run)" + \
                (" after deleting the leftover directory without report.json" if state == "rerun" else "")
        else:
            what = {"new": "would run", "reuse": "would add choose's training, reusing its search (--bet_reuse_run)",
                    "rerun": "would rerun (leftover directory without report.json is deleted)",
                    "resume": "would resume (--resume, interrupted BET run)"}[state]
        print(line + what)
        args = cell.run_args() + ([f"--bet_reuse_run={source_arg(cell)}"] if extends else [])
        print(f"      python {' '.join(CELL_COMMAND)} {shlex.join(args)}", flush=True)
        counts[state] = counts.get(state, 0) + 1
    return counts


def print_summary(n: int, counts: dict, dry_run: bool = False) -> None:
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    print(f"{n} cell(s){' (dry run)' if dry_run else ''}: {summary or 'nothing to do'}")


def run_local(cells: list) -> list:
    """Run the cells in order, one at a time; returns the failed (cell, outcome) pairs."""
    n = len(cells)
    failures, counts = [], {}
    for i, cell in enumerate(cells, 1):
        print(status_prefix(i, n, cell), end="", flush=True)
        if cell_state(cell) == "done":
            print(skip_line(cell), flush=True)
            counts["skipped"] = counts.get("skipped", 0) + 1
            continue
        try:
            outcome = run_cell(cell)
        except Exception as exc:  # the harness's own trouble with this cell (e.g. a directory it cannot delete)
            outcome = Outcome("failed", 0.0, None, stderr_tail=f"grid: {type(exc).__name__}: {exc}")
        if outcome.status == "failed":
            failures.append((cell, outcome))
        print(outcome_line(outcome), flush=True)
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    print_summary(n, counts)
    return failures
