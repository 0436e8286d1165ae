"""What a grid cell costs on this machine: per-epoch training and per-evaluation times measured on a dataset, turned
into minutes per cell under the training protocol.

    python benchmarks/cell_cost.py --dataset=gowalla-u6000 --out=results/cost            # CPU
    python benchmarks/cell_cost.py --dataset=gowalla --device=cuda --out=results/cost     # a GPU
    python benchmarks/cell_cost.py --out=results/cost --report_only                       # the .md again

Measured (median of ``--repeats``, after one untimed warm-up epoch of each kind): preparing the data; one training
epoch at ``train_batch_size`` of the full-width model (pretraining), of equal sizes and of mixed random sizes at
``--sparsity`` (ES; MR and BET's retrainings); one finetuning epoch at BET's finetuning batch; one full-ranking
validation; BET's sampler and predictor per iteration; for LightGCN with ``trim_columns``, a training epoch, a
validation and a finetuning epoch of the narrow model at 16, 32 and 64 columns. The epochs a training runs
cannot be measured without running it to convergence, so the cell estimate multiplies the measured times by epoch counts that are stated
(``--epochs_full``, ``--epochs_budgeted``; by default the ml-100k calibration's, results/convergence-ml-100k.md,
a lower bound on larger data, which converges later).

Appends one entry per (dataset, model, device) to ``<out>.json`` (replacing an older entry for the same key)
and rewrites ``<out>.md`` from all entries. Progress goes to stderr.
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

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

# Epochs each training runs under the protocol (window 100, tol 0) on ml-100k LightGCN at lr 1e-3, batch 2048:
# where the window rule stops the calibration curves (results/convergence-ml-100k.md).
CALIBRATED_EPOCHS_FULL = 223
CALIBRATED_EPOCHS_BUDGETED = {0.8: 444, 0.9: 528, 0.95: 751}
TRIM_WIDTHS = (16, 32, 64)  # narrow LightGCN widths timed for trim_columns (prefix widths round up to 16)


def log(msg: str) -> None:
    print(f"[cell_cost {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats: int) -> tuple[float, list]:
    """Median seconds of ``repeats`` calls after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), [round(t, 3) for t in times]


def measure(dataset: str, model: str, device: str, sparsity: float, repeats: int) -> dict:
    from perf import make_ctx, search_parts

    from recbole_bet.budget import equal_sizes
    from recbole_bet.methods.bet.method import finetune_batch_size
    from recbole_bet.methods.fixed import MixedRandom
    from recbole_bet.training import FusedAdamTrainer, Finetuner, train_loader_with_batch_size

    start = time.perf_counter()
    ctx = make_ctx(model, dataset, device, sparsity=sparsity)
    prepare_s = time.perf_counter() - start
    config, ds = ctx.config, ctx.train_data.dataset
    log(f"{dataset}: prepared in {prepare_s:.1f} s ({ds.user_num - 1} users, {ds.item_num - 1} items, "
        f"{len(ds)} training interactions)")
    out = {"dataset": dataset, "model": model, "device": device, "sparsity": sparsity, "repeats": repeats,
           "users": ds.user_num - 1, "items": ds.item_num - 1, "train_interactions": len(ds),
           "train_batch_size": config["train_batch_size"], "steps_per_epoch": len(ctx.train_data),
           "prepare_s": round(prepare_s, 2), "d_max": ctx.masked.d_max}
    trainer = FusedAdamTrainer(config, ctx.model)  # RecBole's Trainer (Adam at learning_rate)
    arms = {"full": None, "es": equal_sizes(ctx.budget), "mr": MixedRandom().propose(ctx)}
    for arm, sizes in arms.items():
        ctx.masked.load(ctx.init_state, sizes)
        median, all_s = timed(lambda: trainer._train_epoch(ctx.train_data, 0, show_progress=False), repeats)
        out[f"{arm}_epoch_s"], out[f"{arm}_epoch_all_s"] = round(median, 3), all_s
        log(f"{arm} epoch: {median:.2f} s {all_s}")
    batch = finetune_batch_size(config, len(ctx.train_data))
    finetune_data = train_loader_with_batch_size(config, ctx.train_data, batch)
    if ctx.trimmer.enabled:  # trim_columns: trainings on the kept columns only
        out["trimmed"] = {}
        for width in TRIM_WIDTHS:
            narrow = ctx.trimmer.narrow(width)
            narrow.load({k: v for k, v in narrow.model.state_dict().items()}, None)
            narrow_trainer = FusedAdamTrainer(config, narrow.model)
            epoch_s, _ = timed(lambda: narrow_trainer._train_epoch(ctx.train_data, 0, show_progress=False), repeats)
            eval_s, _ = timed(lambda: ctx.trimmer.evaluate(narrow, ctx.valid_data), repeats)
            narrow_finetuner = Finetuner(config, narrow.model)
            finetune_s, _ = timed(lambda: narrow_finetuner.run(finetune_data, 1), repeats)
            out["trimmed"][width] = {"epoch_s": round(epoch_s, 3), "eval_s": round(eval_s, 3),
                                     "finetune_epoch_s": round(finetune_s, 3)}
            log(f"trimmed to {width} columns: epoch {epoch_s:.2f} s, validation {eval_s:.2f} s, "
                f"finetune epoch {finetune_s:.2f} s")
    finetuner = Finetuner(config, ctx.model)
    ctx.masked.load(ctx.init_state, arms["mr"])
    median, all_s = timed(lambda: finetuner.run(finetune_data, 1), repeats)
    out.update(finetune_batch_size=batch, finetune_steps_per_epoch=len(finetune_data),
               finetune_epoch_s=round(median, 3), finetune_epoch_all_s=all_s)
    log(f"finetune epoch (batch {batch}): {median:.2f} s {all_s}")
    median, all_s = timed(lambda: ctx.evaluate(ctx.valid_data), repeats)
    out["eval_s"], out["eval_all_s"] = round(median, 3), all_s
    log(f"validation: {median:.2f} s {all_s}")
    uid, iid = ds.inter_feat[ds.uid_field].numpy(), ds.inter_feat[ds.iid_field].numpy()
    parts = search_parts(ds.user_num, ds.item_num, np.bincount(uid, minlength=ds.user_num),
                         np.bincount(iid, minlength=ds.item_num), max(2, repeats))
    out["search_overhead_s"] = round(parts["sampler_s"] + parts["encode_s"] + parts["predictor_s"], 3)
    out["bet"] = {k: config[k] for k in ("bet_iterations", "bet_finetune_epochs", "bet_retrain_top_k")}
    return out


def es_width(m: dict, sparsity: float) -> int:
    """Columns ES trains on with trim_columns: its size (the budget's units over the entities, one more for the
    most frequent rows) rounded up to 16."""
    size = int((1 - sparsity) * m["d_max"]) + 1
    return min(m["d_max"], -(-size // 16) * 16)


def cell_minutes(m: dict, epochs_full: int, epochs_budgeted: dict) -> dict:
    """Minutes per cell under the protocol, from measured per-epoch times and the stated epoch counts.
    Budgeted trainings validate every epoch; BET's retrainings have mixed sizes, timed as MR's (at full width:
    with trim_columns an upper bound, since BET's chosen sizes are rarely 128 wide). With trim_columns timings
    (LightGCN), ES's trainings are timed at its trimmed width; MR's sizes reach d_max and are not trimmed."""
    pretrain = epochs_full * (m["full_epoch_s"] + m["eval_s"])
    t, h, k = m["bet"]["bet_iterations"], m["bet"]["bet_finetune_epochs"], m["bet"]["bet_retrain_top_k"]
    search = t * (h * m["finetune_epoch_s"] + m["eval_s"] + m["search_overhead_s"])
    cells = {"pretrain": pretrain / 60, "bet_search": search / 60}
    for s, epochs in sorted(epochs_budgeted.items()):
        es = epochs * (m["es_epoch_s"] + m["eval_s"])
        trimmed = m.get("trimmed")
        if trimmed:  # trim_columns: ES trains on its size rounded up to 16 (the smallest timed width above it)
            width = es_width(m, s)
            fits = [w for w in sorted(trimmed, key=int) if int(w) >= width]
            if fits:
                t = trimmed[fits[0]]
                es = epochs * (t["epoch_s"] + t["eval_s"])
        mixed = epochs * (m["mr_epoch_s"] + m["eval_s"])
        cells[f"es@{s}"] = es / 60
        cells[f"mr@{s}"] = mixed / 60
        cells[f"sseds@{s}"] = (pretrain + es) / 60  # SSEDS: the pretraining, then one retraining
        cells[f"bet@{s}"] = (pretrain + search + k * mixed) / 60
    return {key: round(v, 1) for key, v in cells.items()}


def write_md(path: str, entries: list, commands: list) -> None:
    entries = sorted(entries, key=lambda e: (e["measured"]["device"], e["measured"]["model"], e["measured"]["users"]))
    lines = ["# What a grid cell costs", "", "Produced by", "", "```", *commands, "```", "",
             "Measured: seconds per training epoch at `train_batch_size` (full width = pretraining; ES and MR sizes at "
             "the stated sparsity), per finetuning epoch at BET's finetuning batch, per full-ranking validation, "
             "and BET's sampler + predictor per iteration; medians after one warm-up.", "",
             "| dataset | model | device | users | items | train inter. | prepare s | full epoch s | ES epoch s "
             "| MR epoch s | finetune epoch s (batch) | validation s | search overhead s |",
             "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for e in entries:
        m = e["measured"]
        lines.append(f"| {m['dataset']} | {m['model']} | {m['device']} | {m['users']} | {m['items']} "
                     f"| {m['train_interactions']} | {m['prepare_s']} | {m['full_epoch_s']} | {m['es_epoch_s']} "
                     f"| {m['mr_epoch_s']} | {m['finetune_epoch_s']} ({m['finetune_batch_size']}) | {m['eval_s']} "
                     f"| {m['search_overhead_s']} |")
    lines += ["", "Minutes per cell under the protocol = measured seconds x the epochs each training runs. Those "
              "epoch counts are an assumption stated per row (by default where the window rule stopped the "
              "ml-100k LightGCN calibration curves: larger data converges later, so these are lower bounds). "
              "BET = pretraining + T x (h finetuning epochs + validation + overhead) + top-k retrainings; "
              "SSEDS = pretraining + one training.", ""]
    for e in entries:
        m, c = e["measured"], e["cells_min"]
        lines.append(f"**{m['dataset']}, {m['model']}, {m['device']}** (epochs: full {e['epochs_full']}, "
                     f"budgeted {e['epochs_budgeted']}; T={m['bet']['bet_iterations']}, "
                     f"h={m['bet']['bet_finetune_epochs']}, top-{m['bet']['bet_retrain_top_k']}; "
                     f"{e['machine']}, load average {e.get('load_average_1min', 'not recorded')}, {e['when']})")
        lines.append("")
        sparsities = sorted({k.split("@")[1] for k in c if "@" in k})
        lines.append("| cell | " + " | ".join(sparsities) + " |")
        lines.append("|---|" + "--:|" * len(sparsities))
        for method in ("es", "mr", "sseds", "bet"):
            lines.append(f"| {method} | " + " | ".join(f"{c[f'{method}@{s}']}" for s in sparsities) + " |")
        lines.append(f"\npretraining {c['pretrain']} min, BET search {c['bet_search']} min")
        if m.get("trimmed"):
            timed_widths = ", ".join(f"{w} columns {t['epoch_s']} / {t['eval_s']} / {t.get('finetune_epoch_s', '-')} s"
                                     for w, t in sorted(m["trimmed"].items(), key=lambda kv: int(kv[0])))
            lines.append(f"\n`trim_columns` (training epoch / validation / finetuning epoch): {timed_widths}; ES above "
                         "is timed at its trimmed width, BET's probes and retrainings at full width (upper bounds: "
                         "their widths depend on the actions drawn and chosen)")
        lines.append("")
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", help="a RecBole dataset name (required unless --report_only)")
    p.add_argument("--model", default="LightGCN")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--epochs_full", type=int, default=CALIBRATED_EPOCHS_FULL)
    p.add_argument("--epochs_budgeted", default=",".join(f"{s}:{e}" for s, e in CALIBRATED_EPOCHS_BUDGETED.items()),
                   help="SPARSITY:EPOCHS,... for the budgeted trainings")
    p.add_argument("--out", required=True, help="path without suffix: updates .json, rewrites .md")
    p.add_argument("--report_only", action="store_true", help="rewrite <out>.md from <out>.json, measure nothing")
    args = p.parse_args(argv)
    if args.report_only:
        with open(args.out + ".json") as fh:
            data = json.load(fh)
        write_md(args.out + ".md", data["entries"], data["commands"])
        return 0
    if not args.dataset:
        p.error("--dataset is required")
    command = "python benchmarks/cell_cost.py " + " ".join(argv if argv is not None else sys.argv[1:])
    sys.argv = sys.argv[:1]  # RecBole's Config reads sys.argv for --KEY=VALUE: ours are not its keys
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device=cuda but torch sees no GPU")
    budgeted = {float(s): int(e) for s, e in (pair.split(":") for pair in args.epochs_budgeted.split(","))}
    measured = measure(args.dataset, args.model, args.device, args.sparsity, args.repeats)
    machine = (torch.cuda.get_device_name(0) if args.device == "cuda" else
               f"{platform.processor() or platform.machine()}, {os.environ.get('OMP_NUM_THREADS', 'all')} threads "
               f"of {os.cpu_count()} cores")
    entry = {"measured": measured, "epochs_full": args.epochs_full, "epochs_budgeted": budgeted,
             # how busy the machine was: on shared cores every time above scales with it
             "load_average_1min": round(os.getloadavg()[0], 2),
             "cells_min": cell_minutes(measured, args.epochs_full, budgeted), "machine": machine,
             "torch": torch.__version__, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
             "command": command}
    path = args.out + ".json"
    data = {"entries": [], "commands": []}
    if os.path.exists(path):
        with open(path) as fh:
            data = json.load(fh)
    key = (args.dataset, args.model, args.device)
    data["entries"] = [e for e in data["entries"] if (e["measured"]["dataset"], e["measured"]["model"],
                                                     e["measured"]["device"]) != key] + [entry]
    data["commands"] = [c for c in data["commands"] if c != command] + [command]
    with open(path + ".tmp", "w") as fh:
        json.dump(data, fh, indent=1)
    os.replace(path + ".tmp", path)
    write_md(args.out + ".md", data["entries"], data["commands"])
    print(json.dumps(entry["cells_min"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
