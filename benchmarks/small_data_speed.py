"""Two per-epoch costs that matter on small data, where Python and cache misses weigh more than arithmetic.

    OMP_NUM_THREADS=1 python benchmarks/small_data_speed.py --out=results/small-data-speed

1. NeuMF's full-ranking validation (``models.neumf_full_sort_predict``) by the size of the (user, item, hidden)
   block it scores at once: ml-100k with equal sizes at sparsity 0.9, and a synthetic catalogue of Gowalla's
   size (41,000 items, 50 users, NeuMF's default MLP) for the large-catalogue branch. Validation runs after
   every training epoch under the protocol, so on ml-100k it is as large as the epoch itself.
2. A LightGCN ml-100k training epoch with the symmetric-backward torch-function mode entered around the whole
   epoch (as before) or around the model's forward only (``models.symmetric_backward`` now).
3. LightGCN ml-100k trainings with fixed masks (``--trim_epochs`` epochs, a validation after each, from the same
   fresh weights) at full width and with ``trim_columns`` (on the kept columns only): equal sizes at 0.9 and one
   size per side with the users holding the whole budget (what BET's chosen actions look like there); seconds,
   the best validation NDCG@20 and the largest difference between the two trainings' weights.

Timings are medians of interleaved repeats (so that the machine's load drifts alike over the variants); the load
average is recorded beside them. Writes ``<out>.json`` and ``<out>.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

BLOCKS = [1 << 16, 1 << 18, 1 << 20, 1 << 22, 1 << 24]


def log(msg: str) -> None:
    print(f"[small_data_speed {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def interleaved(variants: dict, repeats: int) -> dict:
    """Median seconds of each callable, run in turn ``repeats`` times after one untimed call each."""
    for fn in variants.values():
        fn()
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: round(statistics.median(ts), 4) for name, ts in times.items()}


def with_block(size: int, fn):
    from recbole_bet import models

    def run():
        old = models._CHUNK_ELEMENTS["cpu"]
        models._CHUNK_ELEMENTS["cpu"] = size
        try:
            return fn()
        finally:
            models._CHUNK_ELEMENTS["cpu"] = old
    return run


def neumf_validation(repeats: int) -> dict:
    from perf import make_ctx

    from recbole_bet.budget import equal_sizes

    ctx = make_ctx("NeuMF", "ml-100k", "cpu", sparsity=0.9)
    ctx.masked.load(ctx.init_state, equal_sizes(ctx.budget))
    ndcg = {size: with_block(size, lambda: ctx.evaluate(ctx.valid_data))()["ndcg@20"] for size in BLOCKS}
    seconds = interleaved({size: with_block(size, lambda: ctx.evaluate(ctx.valid_data)) for size in BLOCKS}, repeats)
    return {"seconds": seconds, "valid_ndcg@20": ndcg}


def large_catalogue(repeats: int, n_users: int = 50, n_items: int = 41000) -> dict:
    from recbole_bet import models

    gen = torch.Generator().manual_seed(0)
    user_part, item_part = torch.randn(n_users, 128, generator=gen), torch.randn(n_items, 128, generator=gen)
    rest = nn.Sequential(nn.ReLU(), nn.Linear(128, 64), nn.ReLU()).eval()
    w = torch.randn(64, generator=gen)

    @torch.no_grad()
    def score():
        out = torch.empty(n_users, n_items)
        for us, its in models._pair_blocks(n_users, n_items, 128, torch.device("cpu")):
            out[us, its] = rest(user_part[us, None, :] + item_part[None, its, :]) @ w
        return out

    ref = with_block(BLOCKS[-1], score)()
    max_diff = {size: float((with_block(size, score)() - ref).abs().max()) for size in BLOCKS}
    return {"users": n_users, "items": n_items, "seconds": interleaved({s: with_block(s, score) for s in BLOCKS},
                                                                        repeats), "max_abs_diff": max_diff}


def lightgcn_epoch(repeats: int) -> dict:
    from perf import make_ctx
    from recbole.trainer import Trainer

    from recbole_bet import models
    from recbole_bet.budget import equal_sizes
    from recbole_bet.training import FusedAdamTrainer

    ctx = make_ctx("LightGCN", "ml-100k", "cpu", sparsity=0.9)
    trainer = FusedAdamTrainer(ctx.config, ctx.model)
    ctx.masked.load(ctx.init_state, equal_sizes(ctx.budget))
    adjacency = ctx.model._bet_symmetric_adjacency

    def whole_epoch():
        with models._SymmetricAdjacencyMode(adjacency):
            Trainer._train_epoch(trainer, ctx.train_data, 0, show_progress=False)

    def forward_only():
        trainer._train_epoch(ctx.train_data, 0, show_progress=False)

    return {"seconds": interleaved({"mode around the epoch": whole_epoch, "mode around forward": forward_only},
                                   repeats)}


def trimmed_trainings(epochs: int) -> dict:
    from perf import make_ctx

    from recbole_bet.budget import equal_sizes, split_equal_sizes

    arms = {"equal sizes": lambda ctx: equal_sizes(ctx.budget, ctx.user_freq, ctx.item_freq),
            "users hold the budget": lambda ctx: split_equal_sizes(ctx.budget, 1.0, ctx.user_freq, ctx.item_freq)}
    out = {}
    ctx = make_ctx("LightGCN", "ml-100k", "cpu", sparsity=0.9, epochs=epochs, convergence_window=0,
                   stopping_step=10 ** 6)
    for arm, sizes_of in arms.items():
        runs = {}
        for trim in (False, True):  # both from the initial weights, RNGs reseeded (train_from)
            ctx.trimmer.enabled = trim
            state, valid, seconds = ctx.train_from_scratch(sizes_of(ctx))
            runs[trim] = (state, valid, seconds, ctx.trainings[-1].get("columns", ctx.masked.d_max))
        diff = max(float((runs[True][0][k] - runs[False][0][k]).abs().max()) for k in runs[False][0])
        out[arm] = {"epochs": epochs, "full_s": round(runs[False][2], 2), "trimmed_s": round(runs[True][2], 2),
                    "columns": runs[True][3], "full_valid_ndcg@20": runs[False][1]["ndcg@20"],
                    "trimmed_valid_ndcg@20": runs[True][1]["ndcg@20"], "max_abs_weight_diff": diff}
    return out


def write_md(path: Path, out: dict) -> None:
    nv, lc, lg = out["neumf_validation"], out["large_catalogue"], out["lightgcn_epoch"]["seconds"]
    lines = ["# Small-data speed: NeuMF validation blocks, LightGCN's torch-function mode, trimmed columns", "",
             "Produced by", "", "```", out["command"], "```", "",
             f"{out['when']}, {out['machine']}, {out['threads']} thread(s); load average before / after: "
             f"{out['load_before']} / {out['load_after']}. Medians of {out['repeats']} interleaved repeats.", "",
             "## NeuMF full-ranking validation by block size (floats scored at once)", "",
             f"| block | ml-100k validation s | valid NDCG@20 | {lc['items']:,}-item catalogue, {lc['users']} users s | "
             "max abs diff |",
             "|--:|--:|--:|--:|--:|"]
    for size in BLOCKS:
        lines.append(f"| 2^{size.bit_length() - 1} | {nv['seconds'][size]} | {nv['valid_ndcg@20'][size]:.6f} | "
                     f"{lc['seconds'][size]} | {lc['max_abs_diff'][size]:g} |")
    lines += ["", "## LightGCN ml-100k training epoch (equal sizes at 0.9, batch 2048)", "",
              "| symmetric-backward mode entered | epoch s |", "|---|--:|"]
    lines += [f"| {name} | {s} |" for name, s in lg.items()]
    lines += ["", "## LightGCN ml-100k trainings with fixed masks: full width and `trim_columns` (sparsity 0.9)", "",
              "| sizes | epochs | columns kept | full width s | trimmed s | valid NDCG@20 full / trimmed | "
              "max abs weight diff |", "|---|--:|--:|--:|--:|--:|--:|"]
    for arm, r in out["trimmed_trainings"].items():
        lines.append(f"| {arm} | {r['epochs']} | {r['columns']} | {r['full_s']} | {r['trimmed_s']} | "
                     f"{r['full_valid_ndcg@20']:.6f} / {r['trimmed_valid_ndcg@20']:.6f} | {r['max_abs_weight_diff']:.2g} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="results/small-data-speed")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--catalogue_items", type=int, default=41000, help="items of the synthetic catalogue")
    parser.add_argument("--trim_epochs", type=int, default=100, help="epochs of each fixed-mask training")
    args = parser.parse_args(argv)
    out = {"command": "OMP_NUM_THREADS=1 python benchmarks/small_data_speed.py " + " ".join(argv or sys.argv[1:]),
           "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.machine(),
           "threads": torch.get_num_threads(), "repeats": args.repeats,
           "load_before": [round(x, 2) for x in os.getloadavg()]}
    log("NeuMF validation by block size")
    out["neumf_validation"] = neumf_validation(args.repeats)
    log("large catalogue")
    out["large_catalogue"] = large_catalogue(args.repeats, n_items=args.catalogue_items)
    log("LightGCN epoch")
    out["lightgcn_epoch"] = lightgcn_epoch(args.repeats)
    log(f"fixed-mask trainings, {args.trim_epochs} epochs, full width and trimmed")
    out["trimmed_trainings"] = trimmed_trainings(args.trim_epochs)
    out["load_after"] = [round(x, 2) for x in os.getloadavg()]
    base = Path(args.out)
    base.parent.mkdir(parents=True, exist_ok=True)
    base.with_suffix(".json").write_text(json.dumps(out, indent=1, default=str) + "\n")
    write_md(base.with_suffix(".md"), out)
    log(f"wrote {base}.json and {base}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
