"""How much of a budget should go to users rather than items? Equal sizes within each side, a share of the
budget to users, each split trained from scratch under the training protocol (as BET retrains its actions).

    OMP_NUM_THREADS=1 python benchmarks/side_split.py --model=LightGCN --sparsity=0.9 --seed=2020 \
        --shares=0.05,0.36,0.95 --out=results/side-split-ml-100k

BET's chosen actions on ml-100k LightGCN put 90-98% of the budget on users or 97-99% on items, depending on the
seed (docs/reproduction.md, "Where BET's budget goes"). This separates the split from the sizes within a side: if
"users take nearly everything, at equal sizes" trains as well as BET's chosen action, the search's gain is the
split. The sizes are ``budget.split_equal_sizes`` (also ES's ``es_user_share``): a share is clipped so that both
sides give every row between d_min and d_max; within a side every row gets the side's total divided equally, the
remainder one unit each to its most frequent rows, so the budget is used to the unit. ES's share is
n_users / (n_users + n_items) (0.36 on ml-100k).

Appends one entry per (model, dataset, sparsity, seed, share) to ``<out>.json`` (replacing an older one) and
rewrites ``<out>.md`` from all entries. Progress goes to stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

METRICS = ("recall@20", "ndcg@20")


def entry_key(e: dict) -> str:
    return f"{e['model']}/{e['dataset']}/{e['sparsity']:g}/seed{e['seed']}/share{e['share']:g}"


def write_md(path: Path, entries: list) -> None:
    commands = list(dict.fromkeys(e["command"] for e in entries if e.get("command")))
    lines = ["# Budget split between users and items: equal sizes within each side", "",
             "Produced by (benchmarks/side_split.py; its docstring says what is trained):", "",
             *[f"    {c}" for c in commands], "",
             "Each row: one training from scratch under the training protocol (window 100, at most 1000 epochs), "
             "the seed's initial weights (those of BET's retrainings and of ES in the same seed). *user share* is "
             "the users' fraction of the kept units as trained (after clipping to [d_min, d_max]).", "",
             "| model | dataset | sparsity | seed | asked share | user share | user size | item size | "
             "valid N@20 | valid R@20 | test N@20 | test R@20 | epochs | best epoch | converged | minutes |",
             "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|"]
    for e in sorted(entries, key=lambda e: (e["model"], e["dataset"], e["sparsity"], e["seed"], e["share"])):
        lines.append(
            f"| {e['model']} | {e['dataset']} | {e['sparsity']:g} | {e['seed']} | {e['share']:g} | "
            f"{e['user_share']:.3f} | {e['user_size']:.1f} | {e['item_size']:.1f} | {e['valid']['ndcg@20']:.4f} | "
            f"{e['valid']['recall@20']:.4f} | {e['test']['ndcg@20']:.4f} | {e['test']['recall@20']:.4f} | "
            f"{e['epochs']} | {e['best_epoch']} | {e['converged']} | {e['seconds'] / 60:.1f} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="LightGCN")
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=2020)
    p.add_argument("--shares", default="0.05,0.36,0.95", help="users' shares of the budget, comma-separated")
    p.add_argument("--out", default="results/side-split-ml-100k", help="writes OUT.json and OUT.md")
    p.add_argument("--epochs", type=int, default=None, help="the protocol's epoch cap (default: properties/)")
    args = p.parse_args(argv)
    command = "OMP_NUM_THREADS=1 python benchmarks/side_split.py " + " ".join(argv if argv is not None else sys.argv[1:])

    from perf import make_ctx
    from recbole_bet.budget import split_equal_sizes
    from recbole_bet.training import pick

    out_json, out_md = Path(args.out + ".json"), Path(args.out + ".md")
    entries = {entry_key(e): e for e in (json.loads(out_json.read_text()) if out_json.exists() else [])}
    extra = {} if args.epochs is None else {"epochs": args.epochs}
    ctx = make_ctx(args.model, args.dataset, "cpu", sparsity=args.sparsity, seed=args.seed, **extra)
    b = ctx.budget
    for share in (float(s) for s in args.shares.split(",")):
        sizes = split_equal_sizes(b, share, ctx.user_freq, ctx.item_freq)
        print(f"[side_split {time.strftime('%H:%M:%S')}] share {share:g}: users {sizes[:b.n_users].mean():.1f}, "
              f"items {sizes[b.n_users:].mean():.1f} per row", file=sys.stderr, flush=True)
        n_trainings = len(ctx.trainings)
        state, valid, seconds = ctx.train_from_scratch(sizes, label=f"side split {share:g}")
        training = ctx.trainings[n_trainings] if len(ctx.trainings) > n_trainings else {}
        test = ctx.evaluate(ctx.test_data)
        entry = {"model": args.model, "dataset": args.dataset, "sparsity": args.sparsity, "seed": args.seed,
                 "share": share, "user_share": float(sizes[:b.n_users].sum() / sizes.sum()),
                 "user_size": float(sizes[:b.n_users].mean()), "item_size": float(sizes[b.n_users:].mean()),
                 "kept_units": int(sizes.sum()), "budget_units": int(b.budget_units),
                 "valid": pick(valid, METRICS), "test": pick(test, METRICS), "seconds": seconds,
                 "epochs": training.get("epochs"), "best_epoch": training.get("best_epoch"),
                 "converged": training.get("converged"), "command": command}
        entries[entry_key(entry)] = entry
        out_json.write_text(json.dumps(list(entries.values()), indent=1) + "\n")
        write_md(out_md, list(entries.values()))
        print(f"  valid N@20 {entry['valid']['ndcg@20']:.4f}, test R@20 {entry['test']['recall@20']:.4f}, "
              f"{seconds / 60:.1f} min", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
