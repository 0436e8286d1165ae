"""Where a masked model's training time goes, next to the stock model's (docs/performance.md).

    python benchmarks/mask_overhead.py                                   # ml-100k, LightGCN/NGCF/NeuMF; ~3 minutes
    python benchmarks/mask_overhead.py --dataset=gowalla --models=NeuMF --batch-size=10000 --repeats=3

Three measurements, each on this machine, written to results/mask_overhead-<dataset>.{md,json}:
1. ``sqrt``: torch's CPU ``sqrt`` on a Gowalla-item-table-sized tensor of zeros and of positive values (and
   numpy's), because Adam takes the square root of every second moment and masked entries keep zero ones;
2. ``adam_step``: one Adam step on that tensor with dense and 90%-zero gradients, for torch's foreach (RecBole's
   default), single-tensor and fused implementations;
3. ``epochs``: train-epoch seconds of the unmasked and the masked model, both as recbole-bet builds them
   (so the ratio is the masks' cost alone; benchmarks/perf.py compares with RecBole's own build) (``--sizes``: MR's mixed sizes, like the
   varied sizes a search probes, or equal sizes, at ``--sparsity``; same initial weights, seed and batches), interleaved repeats, median, for the stock optimiser and for
   ``fused_adam=True`` on both sides, with each masked table's masking mode (masking.py).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

GOWALLA_ITEM_TABLE = (40982, 128)  # items + padding row, d_max


def log(msg):
    print(f"[mask_overhead {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def per_call_ms(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return round((time.perf_counter() - start) / repeats * 1e3, 2)


def sqrt_times(repeats: int = 20) -> dict:
    zeros = torch.zeros(GOWALLA_ITEM_TABLE)
    values = torch.rand(GOWALLA_ITEM_TABLE) * 1e-6 + 1e-9  # second moments are small and positive
    return {"shape": list(GOWALLA_ITEM_TABLE),
            "torch_zeros_ms": per_call_ms(zeros.sqrt, repeats), "torch_values_ms": per_call_ms(values.sqrt, repeats),
            "numpy_zeros_ms": per_call_ms(lambda: np.sqrt(zeros.numpy()), repeats),
            "numpy_values_ms": per_call_ms(lambda: np.sqrt(values.numpy()), repeats)}


def adam_step_times(repeats: int = 10) -> dict:
    out = {}
    for kind, kwargs in (("foreach", {"foreach": True}), ("single", {"foreach": False}), ("fused", {"fused": True})):
        for zero_fraction in (0.0, 0.9):
            torch.manual_seed(0)
            param = torch.nn.Parameter(torch.randn(GOWALLA_ITEM_TABLE))
            grad = torch.randn(GOWALLA_ITEM_TABLE) * (torch.rand(GOWALLA_ITEM_TABLE) >= zero_fraction)
            optimizer = torch.optim.Adam([param], lr=1e-3, **kwargs)

            def step():
                param.grad = grad.clone()
                optimizer.step()

            out[f"{kind}_{'dense' if zero_fraction == 0 else '90pct_zero'}_ms"] = per_call_ms(step, repeats)
    return out


def epoch_ratios(model_name: str, dataset: str, batch_size, sparsity: float, sizes: str, repeats: int) -> dict:
    from perf import make_ctx, mask_overhead, stock_copy

    from recbole_bet.budget import equal_sizes
    from recbole_bet.training import train_loader_with_batch_size

    ctx = make_ctx(model_name, dataset, "cpu", sparsity=sparsity)
    loader = ctx.train_data if batch_size is None else train_loader_with_batch_size(ctx.config, ctx.train_data,
                                                                                     batch_size)
    action = equal_sizes(ctx.budget) if sizes == "equal" else None  # None: perf.py's default, MR's sizes
    stock = stock_copy(ctx, same_build=True)  # the masks' cost alone; perf.py compares with RecBole's build
    rows = {}
    for fused in (False, True):
        ctx.config["fused_adam"] = fused
        row = mask_overhead(ctx, loader, repeats, sizes=action, stock=stock)
        rows["fused_adam" if fused else "stock_adam"] = row
        log(f"{model_name} fused_adam={fused}: stock {row['stock_epoch_s']:.2f} s, masked {row['masked_epoch_s']:.2f} s")
    rows["masking_modes"] = ctx.masked.modes()
    rows["sizes"] = sizes
    # train_batch_size rows per step; RecBole's loader counts positives only (NeuMF: half the rows, 1 negative each)
    rows["batch_size"] = batch_size or ctx.config["train_batch_size"]
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--models", default="LightGCN,NGCF,NeuMF")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the model's train_batch_size")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--sizes", choices=["mixed", "equal"], default="mixed",
                        help="mixed: MR's random sizes (default); equal: ES's")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(REPO / "results"))
    args = parser.parse_args()
    os.chdir(REPO)
    details = {"sqrt": sqrt_times(), "adam_step": adam_step_times(), "epochs": {}}
    log(f"sqrt: {details['sqrt']}")
    log(f"adam step: {details['adam_step']}")
    for model in args.models.split(","):
        log(f"{args.dataset} {model}: train epochs, masked vs stock")
        details["epochs"][model] = epoch_ratios(model, args.dataset, args.batch_size, args.sparsity, args.sizes,
                                                args.repeats)
    command = "python benchmarks/mask_overhead.py " + " ".join(sys.argv[1:])
    write(Path(args.out), args.dataset, details, command.strip())
    print(json.dumps({m: {k: v["ratio"] for k, v in r.items() if isinstance(v, dict) and "ratio" in v}
                      for m, r in details["epochs"].items()}))


def write(out: Path, dataset: str, details: dict, command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    name = f"mask_overhead-{dataset}"
    (out / f"{name}.json").write_text(json.dumps(details, indent=1) + "\n")
    s, a = details["sqrt"], details["adam_step"]
    lines = [f"# Masked vs stock training time ({dataset})", "",
             f"Command: `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: "
             f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
             f"({torch.backends.cpu.get_cpu_capability()}) with {torch.get_num_threads()} threads.", "",
             f"## sqrt of a {s['shape'][0]} x {s['shape'][1]} tensor (ms)", "",
             "| | zeros | positive values |", "|---|---|---|",
             f"| torch | {s['torch_zeros_ms']} | {s['torch_values_ms']} |",
             f"| numpy | {s['numpy_zeros_ms']} | {s['numpy_values_ms']} |", "",
             "## One Adam step on that tensor (ms)", "", "| implementation | dense gradient | 90% zero gradient |",
             "|---|---|---|"]
    for kind in ("foreach", "single", "fused"):
        lines.append(f"| {kind} | {a[f'{kind}_dense_ms']} | {a[f'{kind}_90pct_zero_ms']} |")
    lines += ["", "## Train epochs, masked / stock (median of interleaved repeats)", "",
              "| model | sizes | batch | optimiser | stock s | masked s | ratio | masking modes |",
              "|---|---|---|---|---|---|---|---|"]
    for model, rows in details["epochs"].items():
        modes = ", ".join(sorted(set(rows["masking_modes"].values())))
        for opt in ("stock_adam", "fused_adam"):
            r = rows[opt]
            lines.append(f"| {model} | {rows['sizes']} | {rows['batch_size']} | {opt.replace('_', ' ')} | {r['stock_epoch_s']} | "
                         f"{r['masked_epoch_s']} | {r['ratio']} | {modes} |")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
