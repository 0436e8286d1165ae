"""What keeping, cell by cell, the best of several rows on validation would give: a lever read off committed cells.

    python benchmarks/best_on_validation.py results/ml-100k.csv --model=LightGCN \
        --rows bet es-users-warm es-warm --against=es-users-warm [--out=results/best-on-validation-lightgcn]

Where a BET lever would only add trainings whose results some rows already hold (``bet_retrain_pick:
fittest_and_anchors`` retrains the anchors, which the es-users-warm and es-warm controls train the same way), the
lever's effect can be read off the grid's CSV before spending a grid on it: per sparsity and seed, the row with the
highest validation NDCG@20 among ``--rows`` (the first row wins ties: it is the one the lever starts from), then
its test Recall@20 against ``--against``'s, paired over the seeds every row has. Validation decides, test only
reports. Prints a markdown table; ``--out`` also writes it to ``<out>.md``.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from recbole_bet.grid.stats import paired  # noqa: E402

DECIDE, REPORT = "valid_ndcg@20", "test_recall@20"


def read(path: Path, dataset: str | None, model: str) -> dict:
    """{(row label, sparsity): {seed: (validation, test)}} of one model's rows."""
    cells = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            if row["model"] != model or (dataset and row["dataset"] != dataset) or not row[DECIDE]:
                continue
            key = (row["method"], float(row["sparsity"]))
            cells.setdefault(key, {})[int(row["seed"])] = (float(row[DECIDE]), float(row[REPORT]))
    return cells


def pick(cells: dict, rows: list, against: str) -> list:
    """Per sparsity: seeds, the row kept on each, and the pick's / the first row's / ``against``'s means and paired
    tests. Only seeds every row (and ``against``) has are read."""
    out = []
    for s in sorted({s for (_, s) in cells}):
        have = [cells.get((r, s), {}) for r in rows]
        base = cells.get((against, s), {})
        seeds = sorted(set(base).intersection(*map(set, have)))
        if not seeds:
            continue
        kept = {k: max(range(len(rows)), key=lambda i: (have[i][k][0], -i)) for k in seeds}
        chosen = {k: have[kept[k]][k] for k in seeds}
        first = {k: have[0][k] for k in seeds}
        test = {k: v[1] for k, v in chosen.items()}
        out.append({"sparsity": s, "seeds": seeds, "kept": [rows[kept[k]] for k in seeds],
                    "changed": sum(kept[k] != 0 for k in seeds),
                    "test": sum(test.values()) / len(seeds),
                    "first_test": sum(v[1] for v in first.values()) / len(seeds),
                    "vs_against": paired(test, {k: base[k][1] for k in seeds}),
                    "first_vs_against": paired({k: v[1] for k, v in first.items()}, {k: base[k][1] for k in seeds})})
    return out


def table(result: list, rows: list, against: str, model: str) -> str:
    def p(x):
        return "n/a" if x is None else f"{x:.3f}"
    lines = [f"# Best of {', '.join(rows)} on validation NDCG@20, {model}",
             "",
             f"Per sparsity and seed the row with the highest validation NDCG@20 is kept (ties: the first, "
             f"`{rows[0]}`); test Recall@20 of what is kept against `{against}`, paired t-test over seeds "
             "(`scipy.stats.ttest_rel`). Validation decides, test reports.",
             "",
             f"| sparsity | seeds | kept per seed | changed | test R@20 kept | test R@20 `{rows[0]}` | "
             f"Δ kept - `{against}` | p | Δ `{rows[0]}` - `{against}` | p |",
             "|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|"]
    for r in result:
        (d, pv, _), (d0, p0, _) = r["vs_against"], r["first_vs_against"]
        lines.append(f"| {r['sparsity']:g} | {len(r['seeds'])} | {', '.join(r['kept'])} | {r['changed']} | "
                     f"{r['test']:.4f} | {r['first_test']:.4f} | {d:+.4f} | {p(pv)} | {d0:+.4f} | {p(p0)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", type=Path, help="a grid's results CSV, e.g. results/ml-100k.csv")
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", default=None, help="only this dataset's rows (default: every dataset's)")
    parser.add_argument("--rows", nargs="+", required=True, help="row labels (the CSV's method column); first: "
                                                                  "the one the lever starts from")
    parser.add_argument("--against", required=True, help="the baseline row the pick is tested against")
    parser.add_argument("--out", type=Path, default=None, help="also write <out>.md")
    args = parser.parse_args(argv)
    result = pick(read(args.csv, args.dataset, args.model), args.rows, args.against)
    if not result:
        print(f"error: no seed has every row of {args.rows} and {args.against!r} for {args.model}", file=sys.stderr)
        return 2
    text = table(result, args.rows, args.against, args.model)
    print(text, end="")
    if args.out:
        args.out.with_suffix(".md").write_text(
            text + f"\n`python benchmarks/best_on_validation.py {args.csv} --model={args.model} --rows "
                   f"{' '.join(args.rows)} --against={args.against}`\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
