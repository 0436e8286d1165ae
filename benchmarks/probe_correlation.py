"""How well BET's probe fitness predicts the quality an action reaches when retrained: Spearman per BET cell.

    python benchmarks/probe_correlation.py RUN_ROOT|RESULTS.csv [...] [--out=results/probe-correlation.md]

Reads every ``report.json`` of a BET run below the given folders (grid output roots or single runs), and the
``probe_spearman`` column of grid results CSVs for the cells whose run folders are not here (results/runs is not
committed; the CSV keeps the per-cell value but not the probe batch or the actions' range: "–"). Each BET
report lists its retrained actions (``search.retrained``: search fitness and validation quality after retraining,
Eq. 13), so each cell gives a Spearman correlation over its top-k actions (k = 5 by default: a noisy estimate per
cell, hence the mean over cells). Cells are grouped by dataset, model, method label (the grid's folder name),
finetuning batch and steps per probe. "valid range" is the mean over cells of the largest minus the smallest
retrained validation quality: where the top actions retrain to nearly the same quality, their ranking (and so the
correlation) says little. Validation data only; test metrics are not read.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from recbole_bet.grid.rows import probe_spearman
from reports import bet_reports


def cells(roots) -> list:
    out = []
    for path, report, search, label in bet_reports(roots):
        retrained = search.get("retrained")
        if not retrained:
            continue
        quality = [r["valid_quality"] for r in retrained]
        rho = probe_spearman(retrained)  # the grid CSV's probe_spearman, computed the same way
        out.append({"path": str(path.parent), "dataset": report["dataset"], "model": report["model"],
                    "label": label, "valid_range": max(quality) - min(quality),
                    "sparsity": report["sparsity"], "seed": report["seed"],
                    "batch": search.get("finetune_batch_size", "10000 (before auto)"),
                    "steps": search.get("finetune_steps_per_probe"), "k": len(retrained), "spearman": rho})
    return out


def csv_cells(paths, seen: set) -> list:
    """Cells from results CSVs (grid rows with a probe_spearman), except those already read from a report."""
    import csv

    out = []
    for path in paths:
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                if not row.get("probe_spearman"):
                    continue
                key = (row["dataset"], row["model"], row["method"], float(row["sparsity"]), int(row["seed"]))
                if key in seen:
                    continue
                seen.add(key)
                out.append({"path": row.get("output_dir", ""), "dataset": row["dataset"], "model": row["model"],
                            "label": row["method"], "valid_range": None, "sparsity": float(row["sparsity"]),
                            "seed": int(row["seed"]), "batch": "–", "steps": None,
                            "k": int(row["selected_from"]), "spearman": float(row["probe_spearman"])})
    return out


def table(rows: list) -> list:
    groups = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["model"], r["label"], r["batch"], r["steps"]), []).append(r)
    lines = ["| dataset | model | label | probe batch | steps per probe | cells | mean Spearman | valid range | per cell |",
             "|---|---|---|--:|--:|--:|--:|--:|---|"]
    for (dataset, model, label, batch, steps), group in sorted(groups.items(), key=lambda kv: str(kv[0])):
        values = [g["spearman"] for g in group if g["spearman"] is not None]
        mean = f"{np.mean(values):+.3f}" if values else "n/a"
        per = ", ".join(f"{g['sparsity']:g}/s{g['seed']}: " + ("n/a" if g["spearman"] is None else f"{g['spearman']:+.2f}")
                        for g in group)
        ranges = [g["valid_range"] for g in group if g["valid_range"] is not None]
        spread = f"{np.mean(ranges):.4f}" if ranges else "–"
        lines.append(f"| {dataset} | {model} | {label} | {batch} | {steps if steps is not None else '–'} | {len(group)} "
                     f"| {mean} | {spread} | {per} |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("roots", nargs="+")
    p.add_argument("--out", default=None, help="also write the table to this Markdown file")
    args = p.parse_args(argv)
    rows = cells([r for r in args.roots if not r.endswith(".csv")])
    seen = {(r["dataset"], r["model"], r["label"], float(r["sparsity"]), int(r["seed"])) for r in rows}
    rows += csv_cells([r for r in args.roots if r.endswith(".csv")], seen)
    if not rows:
        print("no BET reports with retrained actions under " + ", ".join(args.roots), file=sys.stderr)
        return 1
    lines = table(rows)
    print("\n".join(lines))
    if args.out:
        command = "python benchmarks/probe_correlation.py " + " ".join(argv if argv is not None else sys.argv[1:])
        Path(args.out).write_text("# Probe fitness against retrained validation quality\n\nProduced by `"
                                  + command + "`.\n\n" + __doc__.split("\n\n", 2)[2] + "\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
