"""Collecting rows: one per finished cell of every grid merged into a dataset's tables, and the rows of the
results CSV already there for listed cells whose run folders are gone (run folders are not in git; the CSV is).
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

from recbole_bet.grid.cells import comparable_args, grid_cells, load_json
from recbole_bet.grid.load import METRICS, Grid, GridError, load_grid

TIMINGS = ("pretrain", "search", "retrain", "total")
DERIVED = ("@1", "@prefix")  # the labels' suffixes of derived_rows
# where the final model's units went (the report's `sizes`), kept in the CSV because run folders are not in git
SIZE_COLUMNS = {"user_share": ("user_share",), "users_mean_size": ("users", "mean"),
                "items_mean_size": ("items", "mean"), "pair_shared_mean": ("pair_shared_mean",)}
CSV_COLUMNS = (["dataset", "model", "method", "base_method", "sparsity", "seed", "realized_sparsity", "kept_params",
                "budget_params", "budget_applied"] + [f"{s}_{m}" for s in ("valid", "test") for m in METRICS]
               + [f"{t}_s" for t in TIMINGS] + ["wall_s", "resumed", "selected_from", "all_converged", "max_epochs"]
               + list(SIZE_COLUMNS) + ["probe_spearman", "grid", "output_dir"])


def merge_set(grid: Grid) -> list:
    """The grid plus every sibling YAML (same folder) that writes its tables to the same results_dir."""
    grids = [grid]
    for path in sorted(grid.path.parent.glob("*.yaml")):
        if path.resolve() == grid.path:
            continue
        try:
            other = load_grid(path, workdir=grid.workdir)
        except GridError as exc:
            print(f"warning: ignoring {path} for the tables: {exc}", file=sys.stderr)
            continue
        if other.results_dir.resolve() == grid.results_dir.resolve():
            grids.append(other)
    return grids


def _typed(row: dict) -> dict:
    """A row read back from a results CSV, with the types collect() gives its own rows."""
    out = {}
    for k in CSV_COLUMNS:
        v = row.get(k, "")
        if v == "" or v is None:
            out[k] = None
        elif k in ("budget_applied", "resumed", "all_converged"):
            out[k] = v == "True"
        elif k in ("seed", "kept_params", "budget_params", "selected_from", "max_epochs"):
            out[k] = int(float(v))
        elif k in ("dataset", "model", "method", "base_method", "grid", "output_dir"):
            out[k] = v
        else:
            out[k] = float(v)
    return out


def previous_rows(path: Path) -> dict:
    """Rows of an earlier <dataset>.csv by output_dir: the durable record of cells whose run folders are gone
    (results/runs is not in git, so a fresh clone or a cleaned disk has none of them)."""
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        return {r["output_dir"]: _typed(r) for r in csv.DictReader(fh) if r.get("output_dir")}


def collect(grids: list, dataset: str, previous: dict | None = None) -> tuple:
    """(rows, expected) for one dataset: a row per finished cell; expected[(model, label, sparsity)] =
    {"n": cells the grids ask for, "base": the method}. A cell listed by two grids with the same arguments
    counts once (the copy that finished); with other arguments the later grid's label becomes ``label@grid``.
    A cell without a report but with a row in ``previous`` (the earlier CSV, by output folder) keeps that row,
    marked ``carried``."""
    previous = previous or {}
    chosen = {}  # (dataset, model, label, sparsity, seed) -> (cell, label), in grid order
    for grid in grids:
        if dataset not in grid.datasets:
            continue
        for cell in grid_cells(grid):
            if cell.dataset != dataset:
                continue
            key, label = cell.key, cell.spec.label
            if key in chosen:
                other = chosen[key][0]
                if comparable_args(other.run_args()) == comparable_args(cell.run_args()):
                    if not other.report_path.is_file() and cell.report_path.is_file():
                        chosen[key] = (cell, label)
                    continue
                label = f"{label}@{grid.name}"
                key = (*key[:2], label, *key[3:])
                print(f"warning: {cell.id} is in grids {other.grid.name} and {grid.name} with different "
                      f"settings; the second is shown as {label}", file=sys.stderr)
            chosen[key] = (cell, label)
    rows, expected = [], {}
    for cell, label in chosen.values():
        group = expected.setdefault((cell.model, label, float(cell.sparsity)), {"n": 0, "base": cell.spec.method})
        group["n"] += 1
        report = load_json(cell.report_path)
        if report is None:
            kept = previous.get(cell.dir_arg)
            if kept is not None and kept["method"] == label and kept["seed"] == cell.seed:
                rows.append({**kept, "carried": True})
                for suffix in DERIVED:
                    derived = previous.get(f"{cell.dir_arg}#{suffix}")
                    if derived is not None:
                        rows.append({**derived, "carried": True})
                        expected.setdefault((cell.model, f"{label}{suffix}", float(cell.sparsity)),
                                            {"n": 0, "base": cell.spec.method})["n"] += 1
            continue
        info = load_json(cell.dir / "cell.json") or {}
        timings = report.get("timings_s") or {}
        row = {"dataset": dataset, "model": cell.model, "method": label, "base_method": cell.spec.method,
               "sparsity": float(cell.sparsity), "seed": cell.seed, "grid": cell.grid.name,
               "realized_sparsity": report.get("realized_sparsity"), "kept_params": report.get("kept_params"),
               "budget_params": report.get("budget_params"),
               # false for a method run as published without a budget (esapn_budget=none)
               "budget_applied": report.get("budget_applied", True)}
        for split in ("valid", "test"):
            for m in METRICS:
                row[f"{split}_{m}"] = (report.get(split) or {}).get(m)
        for t in TIMINGS:
            row[f"{t}_s"] = timings.get(t)
        row["wall_s"] = info.get("wall_s_total", info.get("wall_s"))
        row["resumed"] = info.get("resumed")
        row["output_dir"] = cell.dir_arg
        search = report.get("search") or {}
        retrained = search.get("retrained") if cell.spec.method == "bet" else None
        # the final model was chosen (on validation) among this many trainings: BET's top-k (and, with
        # bet_retrain_columns: choose, the chosen action's retraining with its largest entries), one elsewhere
        extra = 1 if search.get("columns_choice") else 0
        row["selected_from"] = len(retrained) + extra if retrained else 1
        trainings = report.get("trainings") or []
        row["all_converged"] = all(t.get("converged", False) for t in trainings) if trainings else None
        row["max_epochs"] = max((t.get("epochs") or 0 for t in trainings), default=None) if trainings else None
        for column, path in SIZE_COLUMNS.items():
            value = report.get("sizes")
            for part in path:
                value = value.get(part) if isinstance(value, dict) else None
            row[column] = value
        # bet@1: the fittest action retrained once, at no extra cost. Not under successive halving, whose first
        # action may have been stopped after one short round: its metrics are not a training to convergence
        # (nor are the actions' qualities comparable for the probe correlation).
        halving = search.get("retrain_schedule") == "halving"
        row["probe_spearman"] = None if halving else probe_spearman(retrained)
        rows.append(row)
        for suffix, derived in derived_rows(row, report, halving):
            rows.append(dict(derived, method=f"{label}{suffix}", output_dir=f"{cell.dir_arg}#{suffix}"))
            expected.setdefault((cell.model, f"{label}{suffix}", float(cell.sparsity)),
                                {"n": 0, "base": cell.spec.method})["n"] += 1
    return rows, expected


def derived_rows(row: dict, report: dict, halving: bool) -> list:
    """Second rows of a BET cell, at no extra cost: ``@1``, the fittest action retrained once (not under successive
    halving, whose first action may have been stopped after one short round: not a training to convergence), and,
    under ``bet_retrain_columns: choose``, ``@prefix``, the model the top actions' first columns gave (chosen among
    them on validation: the run as it would be without the choice)."""
    search = report.get("search") or {}
    retrained = search.get("retrained") or []
    out = []

    def from_entry(entry: dict, selected_from: int, same_sizes: bool) -> dict:
        derived = dict(row, selected_from=selected_from, probe_spearman=None,
                       realized_sparsity=1 - entry["kept_params"] / report["full_params"],
                       kept_params=entry["kept_params"])
        if not same_sizes:  # the report describes the chosen action's sizes only
            derived.update(dict.fromkeys(SIZE_COLUMNS))
        for split in ("valid", "test"):
            for m in METRICS:
                derived[f"{split}_{m}"] = entry[split].get(m)
        return derived

    if retrained and "test" in retrained[0] and not halving:
        out.append(("@1", from_entry(retrained[0], 1, same_sizes=False)))
    chosen = search.get("chosen")
    if search.get("columns_choice") and chosen is not None and "test" in retrained[chosen]:
        # choose changes which entries a row keeps, never its size: the size columns are the chosen action's
        out.append(("@prefix", from_entry(retrained[chosen], len(retrained), same_sizes=True)))
    return out


def probe_spearman(retrained) -> float | None:
    """Spearman correlation of BET's probe fitness with the validation quality its top actions reached when
    retrained (docs/deviations.md, "Probe finetuning scaled"); None under 3 actions or with ties all round."""
    if not retrained or len(retrained) < 3 or any("valid_quality" not in r for r in retrained):
        return None
    import numpy as np
    from scipy.stats import spearmanr

    fitness, quality = [r["fitness"] for r in retrained], [r["valid_quality"] for r in retrained]
    if np.std(fitness) == 0 or np.std(quality) == 0:
        return None
    return round(float(spearmanr(fitness, quality).statistic), 6)


def is_derived(label: str) -> bool:
    """A second row of BET's cells (``derived_rows``), not a cell of its own."""
    return label.endswith(DERIVED)


def n_asked(expected: dict) -> int:
    """Cells the grids ask for, derived labels left out."""
    return sum(g["n"] for (_, label, _), g in expected.items() if not is_derived(label))


def n_finished(rows: list) -> int:
    """Finished cells: rows less those derived from BET's (the same rule as ``n_asked``)."""
    return sum(1 for r in rows if not is_derived(r["method"]))
