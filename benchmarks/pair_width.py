"""How many columns a training pair's user and item both keep, under ES and under BET's candidate actions.

    OMP_NUM_THREADS=1 python benchmarks/pair_width.py --dataset=ml-100k --out=results/pair-width-ml-100k

A dot product of a user's and an item's stored vectors (MF, NeuMF's GMF part) can use only the columns both
keep: min(d_u, d_i) for prefix sizes. This script draws ``--candidates`` actions from BET's sampler at each
sparsity (the run's frequencies), with each ``--sides`` setting (``bet_sides``: independent, the paper's, and
tied), and over the training pairs reports the mean of that shared width (``budget.size_summary``'s
``pair_shared_mean``) against equal sizes'. No training: sizes only.
Writes ``<out>.json`` and ``<out>.md``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def measure(dataset: str, model: str, sparsities, candidates: int, seed: int, sides_list) -> list:
    from perf import make_ctx

    from recbole_bet.budget import equal_sizes, make_budget, size_summary
    from recbole_bet.methods.bet.sampler import ActionSampler

    ctx = make_ctx(model, dataset, "cpu", sparsity=sparsities[0])
    train = ctx.train_data.dataset
    users = train.inter_feat[train.uid_field].numpy() - 1
    items = train.inter_feat[train.iid_field].numpy() - 1
    rows = []
    for sides, sparsity in ((sides, sparsity) for sides in sides_list for sparsity in sparsities):
        rng = np.random.default_rng(seed)
        b = ctx.budget
        budget = make_budget(sparsity, b.d_max, b.d_min, b.n_users, b.n_items, b.tables_per_entity)
        es = size_summary(budget, equal_sizes(budget, ctx.user_freq, ctx.item_freq), users, items)
        drawn = ActionSampler(budget, ctx.user_freq, ctx.item_freq, sides=sides).sample(candidates, rng)
        summaries = [size_summary(budget, sizes, users, items) for sizes in drawn]
        shared = np.array([s["pair_shared_mean"] for s in summaries])
        share = np.array([s["user_share"] for s in summaries])
        rows.append({"sides": sides, "sparsity": sparsity, "es_pair_shared_mean": es["pair_shared_mean"],
                     "es_pair_mean": es["pair_mean"], "candidates": candidates,
                     "candidates_pair_shared": {q: round(float(np.percentile(shared, q)), 2)
                                                for q in (10, 50, 90, 100)},
                     "share_above_es": round(float(np.mean(shared > es["pair_shared_mean"])), 3),
                     "user_share_of_widest": round(float(share[shared.argmax()]), 3),
                     "user_share_median": round(float(np.median(share)), 3),
                     "widest_shared_at_user_share_0_9_or_more": round(float(shared[share >= 0.9].max()), 2)
                     if np.any(share >= 0.9) else None})
    return rows


def write_md(path: Path, out: dict) -> None:
    lines = ["# Columns a training pair's user and item both keep: ES against BET's candidates", "",
             "Produced by", "", "```", out["command"], "```", "",
             f"{out['when']}; {out['dataset']}, {out['model']} (d_max and frequencies of its run), "
             f"{out['rows'][0]['candidates']} candidates per sparsity and `bet_sides` from BET's sampler (seed "
             f"{out['seed']}). Mean over the training pairs of min(d_u, d_i): what a dot product of the stored "
             "vectors (NeuMF's GMF) can use.", "",
             "| bet_sides | sparsity | ES | BET candidates p10 / median / p90 / max | candidates above ES | "
             "users' share, median / of the widest | widest with users' share >= 0.9 |", "|---|--:|--:|---|--:|--:|--:|"]
    for r in out["rows"]:
        c = r["candidates_pair_shared"]
        lines.append(f"| {r['sides']} | {r['sparsity']} | {r['es_pair_shared_mean']} | {c[10]} / {c[50]} / {c[90]} / "
                     f"{c[100]} | {r['share_above_es']:.1%} | {r['user_share_median']} / {r['user_share_of_widest']} | "
                     f"{r['widest_shared_at_user_share_0_9_or_more']} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--model", default="NeuMF")
    parser.add_argument("--sparsities", default="0.8,0.9,0.95")
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--sides", default="independent,tied", help="bet_sides settings to draw candidates with")
    parser.add_argument("--out", default="results/pair-width-ml-100k")
    args = parser.parse_args(argv)
    sparsities = [float(s) for s in args.sparsities.split(",")]
    out = {"command": "OMP_NUM_THREADS=1 python benchmarks/pair_width.py " + " ".join(argv or sys.argv[1:]),
           "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "dataset": args.dataset,
           "model": args.model, "seed": args.seed,
           "rows": measure(args.dataset, args.model, sparsities, args.candidates, args.seed, args.sides.split(","))}
    base = Path(args.out)
    base.parent.mkdir(parents=True, exist_ok=True)
    base.with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")
    write_md(base.with_suffix(".md"), out)
    print(base.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
