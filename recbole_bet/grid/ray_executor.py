"""The Ray executor: every cell that is not done is a Ray task asking for the grid's ``resources`` (default one
CPU), so a cluster runs as many cells at once as it has room for; Ray does the scheduling.

Each task runs ``running.run_cell`` on its worker node: the same subprocess, in the same folder (the driver's
workdir, which must exist on that node), with the same outputs and logs as the local executor, so a grid can be
resumed with either. Cells that share a pretraining do not train it twice: ``recbole_bet.pretrain`` holds a
lock beside the cache file while one of them trains, and the others wait and load the file. A failed cell (an
exit status, a killed worker, the harness's own error) is reported with its log and the others go on.

Ray is imported only here, and this module only when ``--executor=ray`` is chosen.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import warnings

from recbole_bet.grid.cells import cell_state
from recbole_bet.grid.load import GridError
from recbole_bet.grid.running import Outcome, outcome_line, print_summary, run_cell, skip_line, status_prefix, tail

RAY_PIN = "ray<=2.6.3"  # what RecBole 1.2.1 asks for (setup.cfg)


def import_ray():
    try:
        with warnings.catch_warnings():  # ray 2.6 imports pkg_resources, which warns on setuptools >= 67
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
            import ray
    except ImportError as exc:
        raise GridError(f"--executor=ray needs Ray, which cannot be imported here ({exc}); install it with "
                        f"pip install '{RAY_PIN}' or run with --executor=local") from None
    return ray


def connect(ray, address=None, num_cpus=None) -> bool:
    """Join the cluster at ``address`` (``auto``: the one ``ray start`` began on this machine, or HOST:PORT),
    or start a Ray on this machine alone. Returns whether this call did so (then it shuts Ray down after)."""
    if ray.is_initialized():  # a caller (a test, a notebook) connected already
        return False
    quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
    try:
        if address:
            ray.init(address=address, **quiet)
        else:  # no dashboard: it is slow to start and nothing here reads it
            ray.init(num_cpus=num_cpus, include_dashboard=False, **quiet)
    except Exception as exc:  # ConnectionError, or whatever Ray raises for an address it cannot use
        where = f"reach a Ray cluster at {address}" if address else "start Ray on this machine"
        raise GridError(f"could not {where}: {exc}".rstrip()) from None
    return True


def _sets_gpu_id(cell) -> bool:
    return any(a.startswith("--gpu_id=") for a in cell.run_args())


def check_room(ray, cells: list, resources: dict) -> None:
    """A task that asks for more than any node has waits forever: refuse the grid instead."""
    total = ray.cluster_resources()
    for key, ray_key in (("num_cpus", "CPU"), ("num_gpus", "GPU")):
        asked = resources.get(key, 0)
        if asked and total.get(ray_key, 0) < asked:
            raise GridError(f"the grid asks {asked:g} {ray_key}(s) per cell (`resources`); the Ray cluster has "
                            f"{total.get(ray_key, 0):g}: add a node that has them (ray start --address=...) "
                            "or lower `resources`")
    if resources.get("num_gpus") and any(_sets_gpu_id(c) for c in cells):
        raise GridError("the grid asks Ray for GPUs (`resources: {num_gpus: ...}`) and sets gpu_id in `config`: "
                        "with Ray, Ray chooses each cell's GPU; drop gpu_id")


def run_cell_task(cell) -> Outcome:
    """What a Ray worker runs for one cell. RecBole writes ``gpu_id`` into CUDA_VISIBLE_DEVICES, which would
    put every cell on GPU 0: the cell gets the GPUs Ray gave this task as ``--gpu_id``, or ``--gpu_id=``
    (the CPU) when the grid asks for none, unless the grid sets gpu_id itself."""
    extra = []
    if not _sets_gpu_id(cell):
        gpus = ""
        if cell.grid.resources.get("num_gpus"):
            import ray

            gpus = os.environ.get("CUDA_VISIBLE_DEVICES") or ",".join(str(g) for g in ray.get_gpu_ids())
        extra.append(f"--gpu_id={gpus}")
    return run_cell(cell, extra, die_with_parent=True)


def _outcome_of(ray, ref, cell, submitted: float, submitted_wall: float) -> Outcome:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:  # run_cell itself raised on the worker
        cause = getattr(exc, "cause", None) or exc
        return Outcome("failed", time.perf_counter() - submitted, None, reason="harness error",
                       stderr_tail=f"grid: {type(cause).__name__}: {cause}")
    except ray.exceptions.RayError as exc:  # the worker or its node died (killed, out of memory), or cancelled
        log = cell.log_err()
        try:  # the log is the cell's only if this attempt wrote it (a shared filesystem, or the same node)
            fresh = log.stat().st_mtime >= submitted_wall - 1
        except OSError:
            fresh = False
        message = str(exc).strip().splitlines()
        reason = "Ray worker died" if isinstance(exc, ray.exceptions.WorkerCrashedError) else type(exc).__name__
        return Outcome("failed", time.perf_counter() - submitted, None, reason=reason, log=log if fresh else None,
                       stderr_tail="\n".join(([tail(log)] if fresh else []) + [f"ray: {m}" for m in message[:3]]))


class Progress:
    """A bar over the cells on a terminal (stderr), with the cell lines above it; plain lines otherwise."""

    def __init__(self, total: int):
        self.bar = None
        if sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="cell", file=sys.stderr, dynamic_ncols=True)
            except ImportError:
                pass

    def line(self, text: str) -> None:
        if self.bar is None:
            print(text, flush=True)
        else:
            self.bar.write(text, file=sys.stdout)
            self.bar.update(1)

    def tick(self, failed: int) -> None:
        """Between finished cells: keep the elapsed time current, and say how many failed so far."""
        if self.bar is not None:
            self.bar.set_postfix_str(f"{failed} failed" if failed else "", refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _StopFlag:
    """While installed (main thread only), SIGINT and SIGTERM interrupt at once and also set a flag that ``check``
    turns into KeyboardInterrupt, for when the first one was lost inside Ray's own calls."""

    def __init__(self):
        self.event, self.previous = threading.Event(), {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.event.set()  # if Ray swallows the exception below, check() raises it again within a second
        raise KeyboardInterrupt

    def check(self) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}


def run_ray(cells: list, address=None, num_cpus=None) -> list:
    """Run the cells that are not done as Ray tasks; returns the failed (cell, outcome) pairs."""
    ray = import_ray()
    n = len(cells)
    failures, counts, todo = [], {}, []
    for i, cell in enumerate(cells, 1):
        if cell_state(cell) == "done":
            print(status_prefix(i, n, cell) + skip_line(cell), flush=True)
            counts["skipped"] = counts.get("skipped", 0) + 1
        else:
            todo.append((i, cell))
    if not todo:
        print_summary(n, counts)
        return failures
    started = connect(ray, address, num_cpus)
    try:
        resources = todo[0][1].grid.resources
        check_room(ray, [c for _, c in todo], resources)
        room = ray.cluster_resources()
        print(f"ray: {len(todo)} cell(s) to run, each asking {resources}; the cluster has "
              f"{room.get('CPU', 0):g} CPU(s), {room.get('GPU', 0):g} GPU(s)", flush=True)
        # no retries: a cell that killed its worker (out of memory, say) is reported, not silently run again
        task = ray.remote(run_cell_task).options(max_retries=0, num_cpus=resources.get("num_cpus", 1),
                                                 num_gpus=resources.get("num_gpus", 0))
        submitted = {}
        for i, cell in todo:
            submitted[task.remote(cell)] = (i, cell, time.perf_counter(), time.time())
        pending = list(submitted)
        progress = Progress(len(todo))
        stop = _StopFlag()
        try:
            while pending:
                # an interruption raised by the signal can land inside Ray's own calls and be lost there (seen under
                # load): the flag it also sets is checked here at least once a second
                stop.check()
                ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
                progress.tick(len(failures))
                for ref in ready:
                    i, cell, t0, wall0 = submitted[ref]
                    outcome = _outcome_of(ray, ref, cell, t0, wall0)
                    if outcome.status == "failed":
                        failures.append((cell, outcome))
                    counts[outcome.status] = counts.get(outcome.status, 0) + 1
                    progress.line(status_prefix(i, n, cell) + outcome_line(outcome))
        except KeyboardInterrupt:
            # a cancelled task gets a KeyboardInterrupt: run_cell stops its subprocess (BET's checkpoints are
            # atomic, so it resumes) and records the attempt's wall time
            for ref in pending:
                ray.cancel(ref)
            if pending:
                ray.wait(pending, num_returns=len(pending), timeout=60)
            raise
        finally:
            stop.restore()
            progress.close()
    finally:
        if started:
            ray.shutdown()
    print_summary(n, counts)
    return sorted(failures, key=lambda pair: cells.index(pair[0]))
