"""Parking interrupted BET cells in the results folder, so that they resume from a commit.

Run folders are not committed (results/runs/ is ignored): an interrupted BET cell's checkpoint stays on the
machine it ran on, and a grid that spans sessions on fresh machines would start the cell over. ``grid --park``
copies each interrupted cell's checkpoint (and the wall time of its attempts) to
``<results_dir>/parked/<grid>/<cell id>/``; a later run of the grid, in any clone that has those files,
restores it into the cell's run folder and resumes. The parked copy is removed once the cell has finished.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from recbole_bet.grid.cells import CHECKPOINT, PARTIAL, Cell, cell_state

PARKED_FILES = (CHECKPOINT, PARTIAL)


def _copy_atomic(source: Path, target: Path) -> None:
    """Copy then rename: an interrupted copy never leaves a truncated checkpoint under the final name."""
    partial = target.with_name(target.name + ".tmp")
    shutil.copyfile(source, partial)
    os.replace(partial, target)


def park(cells: list) -> list:
    """Copy the checkpoint of every interrupted BET cell among ``cells`` to its parked folder; the parked cells."""
    parked = []
    for cell in cells:
        if cell_state(cell) != "resume":
            continue
        cell.parked_dir.mkdir(parents=True, exist_ok=True)
        for name in PARKED_FILES:
            if (cell.dir / name).is_file():
                _copy_atomic(cell.dir / name, cell.parked_dir / name)
            elif (cell.parked_dir / name).exists():  # from an earlier parking: no longer true
                (cell.parked_dir / name).unlink()
        parked.append(cell)
    return parked


def unpark(cell: Cell) -> None:
    """Put a parked checkpoint into the cell's (absent) run folder, where ``--resume`` reads it."""
    cell.dir.mkdir(parents=True, exist_ok=True)
    for name in PARKED_FILES:
        if (cell.parked_dir / name).is_file():
            _copy_atomic(cell.parked_dir / name, cell.dir / name)


def drop_parked(cell: Cell) -> bool:
    """Remove a finished cell's parked copy (and the folders it leaves empty); whether there was one."""
    folder = cell.parked_dir
    if not folder.is_dir():
        return False
    shutil.rmtree(folder)
    root = cell.grid.results_dir / "parked"
    for parent in folder.parents:  # <results>/parked/<grid>/<dataset>/... up to parked/ itself
        if parent == root.parent or not parent.is_dir() or any(parent.iterdir()):
            break
        parent.rmdir()
    return True
