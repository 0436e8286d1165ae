"""What ``bet_retrain_columns: choose`` (the default) chose, cell by cell: the chosen action with its first columns
(the paper's layout, the run's ``@prefix`` row) against the same action with each row's largest pretrained entries.

    python benchmarks/columns_choice.py RUN_ROOT [...] [--out=results/columns-choice]

Reads every BET ``report.json`` below the given folders whose search has a ``columns_choice`` (a ``choose`` run:
its top actions retrained with their prefixes, the chosen one once more with its largest entries, the better on
validation kept). Per cell: validation NDCG@20 and test Recall@20 of both trainings of the chosen action and which
one was kept. Per dataset, model, label and sparsity: the mean gain of the kept model over the prefix one (what
``choose`` adds to the default, on the same search and seed) and a paired t-test over seeds, on validation (which
decides) and on test (which only reports). Entries are kept in ``<out>.json`` by cell, so cells whose run folders
are gone (results/runs is not committed) stay in ``<out>.md``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from reports import bet_reports


def entry_key(e: dict) -> str:
    return f"{e['dataset']}/{e['model']}/{e['label']}/{e['sparsity']:g}/seed{e['seed']}"


def cells(roots) -> list:
    out = []
    for path, report, search, label in bet_reports(roots):
        choice = search.get("columns_choice")
        if not choice:
            continue
        prefix = search["retrained"][search["chosen"]]
        largest = choice["magnitude"]
        out.append({"dataset": report["dataset"], "model": report["model"], "label": label,
                    "sparsity": report["sparsity"], "seed": report["seed"], "kept": choice["kept"],
                    "prefix": {"valid_ndcg@20": prefix["valid"]["ndcg@20"],
                               "test_recall@20": (prefix.get("test") or {}).get("recall@20")},
                    "largest": {"valid_ndcg@20": largest["valid"]["ndcg@20"],
                                "test_recall@20": (largest.get("test") or {}).get("recall@20")},
                    "final": {"valid_ndcg@20": report["valid"]["ndcg@20"],
                              "test_recall@20": report["test"]["recall@20"]}})
    return out


def paired(a: list, b: list) -> tuple:
    """(mean of b - a, two-sided paired t-test p or None under 2 pairs or with all differences equal)."""
    from scipy.stats import ttest_rel

    diff = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    if len(diff) < 2 or np.allclose(diff, diff[0]):
        return float(diff.mean()), None
    return float(diff.mean()), float(ttest_rel(b, a).pvalue)


def write_md(path: Path, entries: list, command: str) -> None:
    def f(x):
        return "–" if x is None else f"{x:.4f}"

    def p(x):
        return "n/a" if x is None else f"{x:.3g}"

    lines = ["# `bet_retrain_columns: choose`, cell by cell", "", f"Produced by `{command}` "
             "(benchmarks/columns_choice.py; its docstring says what is read).", "",
             "Each cell's chosen action trained twice from the pretrained weights: keeping each row's first columns "
             "(the paper's layout, the run's `@prefix` row) and keeping its largest entries; *kept* is the one with "
             "the higher validation quality (the run's model). Validation NDCG@20 decides; test Recall@20 only "
             "reports.", "",
             "| dataset | model | label | sparsity | seed | valid N@20 first / largest | test R@20 first / largest | kept |",
             "|---|---|---|--:|--:|---|---|---|"]
    key = lambda e: (e["dataset"], e["model"], e["label"], e["sparsity"], e["seed"])  # noqa: E731
    for e in sorted(entries, key=key):
        lines.append(f"| {e['dataset']} | {e['model']} | {e['label']} | {e['sparsity']:g} | {e['seed']} | "
                     f"{f(e['prefix']['valid_ndcg@20'])} / {f(e['largest']['valid_ndcg@20'])} | "
                     f"{f(e['prefix']['test_recall@20'])} / {f(e['largest']['test_recall@20'])} | {e['kept']} |")
    lines += ["", "What `choose` adds to the first-columns model of the same search, paired over seeds "
              "(Δ = kept - first columns; p: two-sided paired t-test):", "",
              "| dataset | model | label | sparsity | seeds | largest kept | Δ valid N@20 | p | Δ test R@20 | p |",
              "|---|---|---|--:|--:|--:|--:|--:|--:|--:|"]
    groups = {}
    for e in entries:
        groups.setdefault(key(e)[:4], []).append(e)
    for g, members in sorted(groups.items()):
        dv, pv = paired([m["prefix"]["valid_ndcg@20"] for m in members], [m["final"]["valid_ndcg@20"] for m in members])
        tested = [m for m in members if m["prefix"]["test_recall@20"] is not None]
        dt, pt = paired([m["prefix"]["test_recall@20"] for m in tested], [m["final"]["test_recall@20"] for m in tested])
        kept = sum(m["kept"] == "magnitude" for m in members)
        lines.append(f"| {g[0]} | {g[1]} | {g[2]} | {g[3]:g} | {len(members)} | {kept}/{len(members)} | "
                     f"{dv:+.4f} | {p(pv)} | {dt:+.4f} | {p(pt)} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("roots", nargs="+", help="grid output roots or run folders")
    ap.add_argument("--out", default="results/columns-choice", help="writes OUT.json and OUT.md")
    args = ap.parse_args(argv)
    command = "python benchmarks/columns_choice.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out_json, out_md = Path(args.out + ".json"), Path(args.out + ".md")
    entries = {entry_key(e): e for e in (json.loads(out_json.read_text()) if out_json.exists() else [])}
    found = cells(args.roots)
    entries.update({entry_key(e): e for e in found})
    out_json.write_text(json.dumps(list(entries.values()), indent=1) + "\n")
    write_md(out_md, list(entries.values()), command)
    print(f"{len(found)} choose cell(s) read, {len(entries)} in {out_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
