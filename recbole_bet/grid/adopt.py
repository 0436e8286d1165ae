"""``grid --adopt=GRID:LABEL [--as=LABEL]``: give finished cells of another grid's label (a screen) to a label of
this grid, without running anything again.

A screen runs a lever under its own label and grid; once validation adopts it as a default, its cells are the
default's cells. Adopting moves their rows in ``<results_dir>/<dataset>.csv`` (method, grid, output_dir; every
number as it was, the ``@1``/``@prefix`` rows with them) and, where they are on this machine, their run folders and
logs, recording ``relabelled_from`` in each cell.json. Only rows that match a cell of this grid's label (dataset,
model, sparsity, seed, and ``--only``) move; the rest stay. Nothing moves if one of those cells already has a row,
a run folder or a parked checkpoint: move those out first, by adopting them into another grid's label.
The harness does not check that the two labels mean the same configuration: that is what an adoption asserts.
"""
from __future__ import annotations

import csv
import datetime as _dt
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from recbole_bet.grid.cells import Cell, cell_log_base, grid_cells, load_json, select_cells, shown
from recbole_bet.grid.load import Grid, GridError
from recbole_bet.grid.rows import DERIVED


@dataclass
class Move:
    cell: Cell  # the adopting cell
    old_dir: str  # the row's output_dir before (relative to the workdir, as the CSV keys it)
    rows: int  # CSV rows moved: the cell's and its derived ones
    folder: bool  # its run folder is on this machine and moves too


def parse_adopt(value: str, as_label: str | None) -> tuple:
    """``GRID:LABEL`` (and ``--as``) -> (source grid name, source label, target label)."""
    grid_name, sep, label = value.rpartition(":")
    if not sep or not grid_name or not label:
        raise GridError(f"--adopt={value!r}: give GRID:LABEL, the grid name and label of the cells to adopt, "
                        "e.g. --adopt=ml100k-ngcf-bet-anchors-3seeds:bet-anchors-retrained")
    return grid_name, label, as_label or label


def _source_dir(output_dir: str, workdir: Path) -> Path:
    path = Path(output_dir)
    return path if path.is_absolute() else workdir / path


def _log_files(run_dir: Path) -> list:
    """A cell's .err/.out logs, from its run folder ``<output_root>/<dataset>/<model>/<label>/<sparsity>/seed<k>``."""
    base = cell_log_base(run_dir.parents[4], "/".join(run_dir.parts[-5:]))
    return [p for p in (base.parent / f"{base.name}.err", base.parent / f"{base.name}.out") if p.is_file()]


def plan(grid: Grid, source_grid: str, source_label: str, label: str, only: list) -> tuple:
    """(moves, csv rows by dataset, rows left in place): what ``adopt`` would do; raises GridError when it must
    not."""
    labels = [m.label for m in grid.methods]
    if label not in labels:
        raise GridError(f"--as={label}: grid {grid.name} has no such label (it has {', '.join(labels)}); add it to "
                        f"{shown(grid.path)} first, with the configuration the adopted cells ran with")
    if (source_grid, source_label) == (grid.name, label):
        raise GridError("--adopt names the cells' own grid and label: nothing to move")
    targets = {(c.dataset, c.model, float(c.sparsity), c.seed): c
               for c in select_cells(grid_cells(grid), only) if c.spec.label == label}
    moves, tables, left = [], {}, 0
    for dataset in grid.datasets:
        path = grid.results_dir / f"{dataset}.csv"
        if not path.is_file():
            continue
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
        tables[dataset] = (path, reader.fieldnames, rows)
        taken = {r["output_dir"].partition("#")[0] for r in rows}
        for row in rows:
            if row.get("grid") != source_grid or row["method"] != source_label:
                continue  # derived rows (label@1, label@prefix) follow their cell's row below
            cell = targets.get((dataset, row["model"], float(row["sparsity"]), int(float(row["seed"]))))
            if cell is None:
                left += 1
                continue
            if cell.dir_arg in taken:
                raise GridError(f"{cell.id} already has a row in {shown(path)} ({cell.dir_arg}): adopt it into "
                                "another grid's label first, or delete that row")
            for where in (cell.dir, cell.parked_dir):
                if where.exists():
                    raise GridError(f"{cell.id} already has {shown(where)}: move or delete it first")
            old = row["output_dir"]
            n = sum(1 for r in rows if r["output_dir"] == old or r["output_dir"].startswith(old + "#"))
            run_dir = _source_dir(old, grid.workdir)
            if run_dir.exists() and not (run_dir / "report.json").is_file():
                raise GridError(f"{shown(run_dir)} has no report.json: an unfinished cell is not adopted")
            moves.append(Move(cell, old, n, run_dir.is_dir()))
    return moves, tables, left


def adopt(grid: Grid, source_grid: str, source_label: str, label: str, only: list, dry_run: bool = False) -> list:
    """Move the rows (and run folders here) of ``source_grid``'s ``source_label`` to ``grid``'s ``label``; returns
    the moves (none written with ``dry_run``)."""
    moves, tables, left = plan(grid, source_grid, source_label, label, only)
    verb = "would move" if dry_run else "moved"
    for move in moves:
        print(f"{verb} {move.old_dir} -> {move.cell.dir_arg} ({move.rows} row(s)"
              f"{', run folder and logs' if move.folder else ''})")
    if left:
        print(f"{left} cell(s) of {source_grid}:{source_label} match no cell of {grid.name}:{label}"
              f"{' selected by --only' if only else ''}: left where they are")
    if not moves:
        print(f"no row of grid {source_grid}, label {source_label} to adopt")
    if dry_run or not moves:
        return moves
    by_old = {m.old_dir: m for m in moves}
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    for move in moves:
        if move.folder:
            old_dir = _source_dir(move.old_dir, grid.workdir)
            logs = _log_files(old_dir)
            move.cell.dir.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(old_dir), str(move.cell.dir))
            new_logs = move.cell.log_base()
            new_logs.parent.mkdir(parents=True, exist_ok=True)
            for log in logs:
                shutil.move(str(log), str(new_logs.parent / f"{new_logs.name}{log.suffix}"))
            info_path = move.cell.dir / "cell.json"
            info = load_json(info_path) or {}
            info["relabelled_from"] = {"grid": source_grid, "label": source_label, "output_dir": move.old_dir,
                                       "at": now}
            info_path.write_text(json.dumps(info, indent=2))
    for path, fields, rows in tables.values():
        for row in rows:
            old, _, suffix = row["output_dir"].partition("#")
            move = by_old.get(old)
            if move is None or row.get("grid") != source_grid:
                continue
            derived = suffix if suffix in DERIVED else ""
            row.update(method=label + derived, grid=grid.name,
                       output_dir=move.cell.dir_arg + (f"#{suffix}" if suffix else ""))
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    return moves
