"""``python -m recbole_bet grid``: run a grid's cells (here one at a time, or as Ray tasks), then build its tables.

Exit status: 0 when every selected cell finished; 1 when a cell failed (the tables are still built, the
failures listed at the end with their logs); 2 for a bad grid file or option; 130 when interrupted.
"""
from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading

from recbole_bet.grid.adopt import adopt, parse_adopt
from recbole_bet.grid.cells import cell_state, grid_cells, select_cells, shown
from recbole_bet.grid.load import GridError, bundled_grids, load_grid
from recbole_bet.grid.parking import park
from recbole_bet.grid.rows import merge_set, previous_rows
from recbole_bet.grid.running import describe, print_summary, run_local
from recbole_bet.grid.tables import build_tables

PROG = "python -m recbole_bet grid"


def parse_args(argv: list, prog: str):
    parser = argparse.ArgumentParser(
        prog=prog, description="Run a grid of datasets x models x methods x sparsities x seeds, then build tables.",
        epilog="Bundled grids (--grid=NAME): " + (", ".join(bundled_grids()) or "none found")
        + ". See docs/reproduction.md.")
    parser.add_argument("--grid", required=True,
                        help="a grid YAML, or the name of a bundled grid, e.g. tiny or ml100k-lightgcn-5seeds")
    parser.add_argument("--only", action="append", default=[],
                        help="run only cells whose id DATASET/MODEL/LABEL/SPARSITY/seedSEED matches one of these "
                             "comma-separated globs, e.g. --only='*/bet/*' (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="list the cells and what would happen; run nothing")
    parser.add_argument("--tables-only", action="store_true", help="build the tables from finished cells; run nothing")
    parser.add_argument("--park", action="store_true",
                        help="copy the checkpoints of interrupted BET cells to RESULTS_DIR/parked/GRID/ (commit them: "
                             "the cells then resume in any clone); run nothing")
    parser.add_argument("--reuse-search", action="store_true",
                        help="finished BET cells that kept first columns (warm retraining, no columns choice) are run "
                             "once more with --bet_reuse_run on their folder: their search and retrainings are kept "
                             "and bet_retrain_columns: choose's one training is added, for a grid whose BET runs "
                             "under choose")
    parser.add_argument("--adopt", metavar="GRID:LABEL", default=None,
                        help="give the finished cells of GRID's LABEL (e.g. a screen whose lever became a default) to "
                             "this grid's label of the same name, or to --as: their rows in the results CSV move, "
                             "and their run folders where they are here; no cell runs, the tables are rebuilt")
    parser.add_argument("--as", dest="as_label", metavar="LABEL", default=None,
                        help="with --adopt: this grid's label that the cells become (default: the adopted label)")
    parser.add_argument("--output-root", default=None,
                        help="override the grid's output_root (relative paths: from the current folder)")
    parser.add_argument("--results-dir", default=None, help="override the grid's results_dir (default results)")
    parser.add_argument("--executor", choices=("local", "ray"), default="local",
                        help="local: one cell after another here (default); ray: every cell a Ray task")
    parser.add_argument("--ray_address", "--ray-address", default=None,
                        help="with --executor=ray: auto (the cluster `ray start` began on this machine) or "
                             "HOST:PORT; default: start a Ray on this machine alone")
    parser.add_argument("--ray_num_cpus", "--ray-num-cpus", type=int, default=None,
                        help="with --executor=ray and no --ray_address: the CPUs of that Ray (default: all)")
    return parser.parse_args(argv)


def _report_failures(failures: list) -> None:
    print(f"\n{len(failures)} cell(s) failed:", file=sys.stderr)
    for cell, outcome in failures:
        where = f" on {outcome.host}" if outcome.host else ""
        log = shown(outcome.log) if outcome.log else "none here"
        print(f"\n--- {cell.id} ({outcome.why}, {outcome.seconds:.1f} s{where}); full stderr: {log}",
              file=sys.stderr)
        print("\n".join("    " + line for line in outcome.stderr_tail.splitlines()), file=sys.stderr)


def _skip_committed(grid, cells: list) -> list:
    """Cells whose row is in the committed ``<dataset>.csv`` but whose run folder is gone (results/runs is not in
    git: a fresh clone, another machine) are finished: running them again would only spend the compute twice."""
    committed = set()
    for dataset in grid.datasets:
        committed |= set(previous_rows(grid.results_dir / f"{dataset}.csv"))
    # a leftover folder reruns
    skipped = [c for c in cells if c.dir_arg in committed and cell_state(c) in ("new", "extend")]
    if skipped:
        print(f"{len(skipped)} cell(s) already have a row in {shown(grid.results_dir)}/<dataset>.csv but no run folder "
              f"here: skipped as finished (delete a row there to run its cell again)", flush=True)
    return [c for c in cells if c not in skipped]


def _park(grid, only) -> int:
    parked = park(select_cells(grid_cells(grid), only))
    for cell in parked:
        print(f"parked {cell.id} -> {shown(cell.parked_dir)}")
    if parked:
        where = shown(grid.results_dir / "parked" / grid.name)
        print(f"{len(parked)} interrupted cell(s) parked: commit {where} (git add {where}) and run the grid again "
              "in any clone to resume them")
    else:
        print("no interrupted BET cell (a checkpoint and no report.json) to park")
    return 0


def _adopt(grid, args, only) -> int | None:
    """--adopt: exit status when nothing more is to be done (a dry run, nothing to move), else None (tables)."""
    source_grid, source_label, label = parse_adopt(args.adopt, args.as_label)
    moves = adopt(grid, source_grid, source_label, label, only, dry_run=args.dry_run)
    if args.dry_run or not moves:
        return 0
    still = [g for g in merge_set(grid) if g.name == source_grid and any(m.label == source_label for m in g.methods)]
    if still:
        print(f"note: {shown(still[0].path)} still lists label {source_label}: a run of that grid would train the "
              "adopted cells again; remove the label (or the file) once nothing else needs it")
    return None


def _run_cells(grid, args, only) -> tuple:
    """(exit status or None, failures)."""
    cells = select_cells(grid_cells(grid), only)
    if only and not cells:
        raise GridError(f"--only {only} matches none of the grid's cells, e.g. {grid_cells(grid)[0].id}")
    print(f"grid {grid.name}: {len(cells)} cell(s) -> {shown(grid.output_root)}")
    cells = _skip_committed(grid, cells)
    for cell in cells:
        cell.reuse_search = args.reuse_search
    if args.dry_run:
        print_summary(len(cells), describe(cells), dry_run=True)
        return 0, []
    if args.executor == "ray":
        from recbole_bet.grid.ray_executor import run_ray

        return None, run_ray(cells, args.ray_address, args.ray_num_cpus)
    return None, run_local(cells)


def main(argv=None, prog: str = PROG) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv, prog)
    command = f"{prog} {shlex.join(argv)}"
    only = [p.strip() for group in args.only for p in group.split(",") if p.strip()]
    in_main_thread = threading.current_thread() is threading.main_thread()

    def _term(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _term) if in_main_thread else None
    try:
        grid = load_grid(args.grid, args.output_root, args.results_dir)
        failures = []
        if args.park:
            return _park(grid, only)
        if args.as_label and not args.adopt:
            raise GridError("--as goes with --adopt=GRID:LABEL")
        if args.adopt:
            code = _adopt(grid, args, only)
            if code is not None:
                return code
        elif not args.tables_only:
            code, failures = _run_cells(grid, args, only)
            if code is not None:
                return code
        build_tables(grid, command)
    except GridError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to continue (finished cells are skipped, an "
              "interrupted BET cell resumes from its checkpoint); to continue on another machine, add --park "
              "to the same command and commit what it parks", file=sys.stderr)
        return 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    if failures:
        _report_failures(failures)
        return 1
    return 0
