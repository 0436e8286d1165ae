"""Performance benchmark: what BET costs beyond its unavoidable training and evaluation.

    python benchmarks/perf.py            # ml-100k and Gowalla (needs dataset/gowalla, see README); about 25 minutes on 2 cores
    python benchmarks/perf.py --skip-end-to-end   # the same without the end-to-end BET run (8-10 minutes less)
    python benchmarks/perf.py --quick    # ml-100k, plus the Gowalla-size sampler/predictor parts; a few minutes
    python benchmarks/perf.py --device=cuda   # on a GPU (RecBole's device keys are set from it)

Prints progress to stderr and ONE JSON object as the last line of stdout; writes results/perf.json and
results/perf.md (with the machine and the command). Keys (targets for the 2-core CPU machine):
mask_overhead_ratio (<= 1.05), sampler_s (<= 0.5), predictor_s (<= 0.2), eval_ratio (<= 1.0),
iteration_overhead_s (<= 2), peak_rss_gb (<= 3), bet_ml100k_s (<= 600). Keys a mode could not measure are
null and named in "skipped".
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGETS = {"mask_overhead_ratio": 1.05, "sampler_s": 0.5, "predictor_s": 0.2, "eval_ratio": 1.0,
           "iteration_overhead_s": 2.0, "peak_rss_gb": 3.0, "bet_ml100k_s": 600.0}


def log(msg):
    print(f"[perf {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def make_ctx(model: str, dataset: str, device: str, config_files=None, **extra):
    from recbole_bet.config import make_config
    from recbole_bet.pipeline import prepare

    saved, sys.argv = sys.argv, sys.argv[:1]
    try:
        cfg = {"method": "es", "show_progress": False, "use_gpu": device != "cpu", "state": "WARNING", **extra}
        config = make_config(model, dataset, config_file_list=config_files, config_dict=cfg)
    finally:
        sys.argv = saved
    return prepare(config)


def stock_copy(ctx, same_build: bool = False):
    """An unmasked model with the same initial weights as the context's masked one: RecBole's stock model as
    RecBole builds it, or with ``same_build`` as recbole-bet builds it (its graph as CSR on CPU,
    models.use_csr_adjacency), which isolates the cost of the masks alone."""
    from recbole.utils import get_model

    from recbole_bet.masking import load_plain_state_dict
    from recbole_bet.models import attach_full_sort, build_model

    if same_build:
        model = build_model(ctx.config, ctx.train_data.dataset)
    else:  # the full-ranking scorer only adds NeuMF a full_sort_predict, which stock RecBole lacks
        model = attach_full_sort(get_model(ctx.config["model"])(ctx.config, ctx.train_data.dataset)
                                 .to(ctx.config["device"]))
    load_plain_state_dict(model, ctx.init_state)
    return model


def epoch_seconds(ctx, model, train_data) -> float:
    from recbole_bet.masking import load_plain_state_dict
    from recbole_bet.training import FusedAdamTrainer

    load_plain_state_dict(model, ctx.init_state)
    ctx.reseed()
    train_data.generator.manual_seed(ctx.config["seed"])
    trainer = FusedAdamTrainer(ctx.config, model)  # RecBole's Trainer; its Adam is fused only with fused_adam
    start = time.perf_counter()
    trainer._train_epoch(train_data, 0, show_progress=False)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def mask_overhead(ctx, train_data, repeats: int, sizes=None, stock=None) -> dict:
    """Masked / stock train-epoch time, interleaved so drift hits both alike; median of repeats. The masked
    model has ``sizes``, by default MR's mixed sizes: varied sizes, as a search probes, which the masking
    handles at its dearest (equal sizes let LightGCN/NGCF skip the gradient pass, masking.py)."""
    from recbole_bet.methods.fixed import MixedRandom

    ctx.masked.set_sizes(MixedRandom().propose(ctx) if sizes is None else sizes)
    stock = stock_copy(ctx) if stock is None else stock
    times = {"stock": [], "masked": []}
    for _ in range(repeats):
        times["stock"].append(epoch_seconds(ctx, stock, train_data))
        times["masked"].append(epoch_seconds(ctx, ctx.model, train_data))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"stock_epoch_s": round(med["stock"], 3), "masked_epoch_s": round(med["masked"], 3),
            "ratio": round(med["masked"] / med["stock"], 3), "repeats": repeats,
            "all_s": {k: [round(x, 2) for x in v] for k, v in times.items()}}


def eval_comparison(ctx, repeats: int) -> dict:
    """Our validation (masked model, Scorer) vs stock RecBole Trainer.evaluate on a stock model."""
    from recbole.trainer import Trainer

    from recbole_bet.budget import equal_sizes

    ctx.masked.set_sizes(equal_sizes(ctx.budget))
    stock_trainer = Trainer(ctx.config, stock_copy(ctx))
    ours, stock = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        stock_trainer.evaluate(ctx.valid_data, load_best_model=False)
        stock.append(time.perf_counter() - t)
        t = time.perf_counter()
        ctx.evaluate(ctx.valid_data)
        ours.append(time.perf_counter() - t)
    return {"ours_s": round(statistics.median(ours), 3), "stock_s": round(statistics.median(stock), 3),
            "ratio": round(statistics.median(ours) / statistics.median(stock), 3),
            "eval_batch_size": ctx.config["eval_batch_size"]}


def search_iteration(ctx, finetune_epochs: int, tmp: Path) -> dict:
    """Real BET iterations (m=100), their parts timed; overhead = total - finetuning - evaluation.

    The process's first iteration pays one-off costs (first touches of the sampler's large arrays, lazy
    set-up), so the second is the one a search repeats T-1 times: its overhead is the figure; the first is
    kept beside it. A third iteration runs under cProfile, so the profiler inflates neither.
    """
    from recbole_bet.methods.bet import method as bet_module
    from recbole_bet.methods.bet.loop import iteration_seed
    from recbole_bet.methods.bet.method import finetune_batch_size
    from recbole_bet.training import Finetuner, train_loader_with_batch_size

    config = ctx.config
    pre_state = ctx.init_state  # timing does not depend on the weights being pretrained
    finetuner = Finetuner(config, ctx.model)
    data = train_loader_with_batch_size(config, ctx.train_data, finetune_batch_size(config, len(ctx.train_data)))
    parts = {}

    def add(key, seconds):
        parts[key] = parts.get(key, 0.0) + seconds

    def probe(sizes, t):
        start = time.perf_counter()
        ctx.reseed(iteration_seed(config["seed"], t))
        data.generator.manual_seed(iteration_seed(config["seed"], t))
        ctx.masked.load(pre_state, sizes)
        add("reset_s", time.perf_counter() - start)
        add("finetune_s", finetuner.run(data, finetune_epochs))
        start = time.perf_counter()
        result = ctx.evaluate(ctx.valid_data)
        add("eval_s", time.perf_counter() - start)
        return bet_module.quality(result)

    loop = bet_module.build_search(ctx, probe)
    sample = loop.sampler.sample

    def timed_sample(*args, **kwargs):
        start = time.perf_counter()
        out = sample(*args, **kwargs)
        add("sample_s", time.perf_counter() - start)
        return out

    loop.sampler.sample = timed_sample
    iterations = []
    for t in range(2):
        parts.clear()
        member = loop.step(t)
        start = time.perf_counter()
        bet_module._save(str(tmp / "checkpoint.pt"), {}, loop, {}, {})
        parts["checkpoint_s"] = time.perf_counter() - start
        total = member.seconds + parts["checkpoint_s"]
        iterations.append({"total_s": round(total, 3), **{k: round(v, 3) for k, v in parts.items()},
                           "overhead_s": round(total - parts["finetune_s"] - parts["eval_s"], 3)})
    timed = dict(iterations[1], first_iteration=iterations[0], finetune_epochs=finetune_epochs,
                 candidates=config["bet_candidates"])
    profiler = cProfile.Profile()
    profiler.enable()
    loop.step(2)
    profiler.disable()
    timed["profile_top"] = profile_summary(profiler, 8)
    return timed


def profile_summary(profiler: cProfile.Profile, top: int) -> list:
    """The functions with the most own time (tottime), as "file:line(function)" with own and cumulative seconds."""
    stats = pstats.Stats(profiler, stream=io.StringIO())
    rows = []
    for (path, line, name), (_, calls, tottime, cumtime, _) in stats.stats.items():
        where = f"{Path(path).name}:{line}({name})" if line else name
        rows.append({"function": where, "calls": calls, "own_s": round(tottime, 3), "cum_s": round(cumtime, 3)})
    return sorted(rows, key=lambda r: -r["own_s"])[:top]


def search_parts(n_users: int, n_items: int, user_freq, item_freq, repeats: int) -> dict:
    """Sampler (m=100) and predictor (predict 100 + 2 updates on a population of 50) at table size."""
    from recbole_bet.budget import make_budget
    from recbole_bet.methods.bet.predictor import PredictorTrainer, build_predictor
    from recbole_bet.methods.bet.sampler import ActionSampler

    rng = np.random.default_rng(0)
    budget = make_budget(0.9, 128, 1, n_users, n_items, 1)
    sampler = ActionSampler(budget, user_freq, item_freq)
    torch.manual_seed(0)
    predictor = build_predictor("deepsets", user_freq, item_freq, 128)
    trainer = PredictorTrainer(predictor, lr=0.01, generator=torch.Generator().manual_seed(0))
    population = predictor.encode(sampler.sample(50, rng))
    fitness = torch.rand(50)
    sample_s, encode_s, predict_s = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sizes = sampler.sample(100, rng)
        t1 = time.perf_counter()
        encoded = predictor.encode(sizes)
        t2 = time.perf_counter()
        with torch.no_grad():
            predictor(encoded)
        trainer.update(population, fitness)
        t3 = time.perf_counter()
        sample_s.append(t1 - t0)
        encode_s.append(t2 - t1)
        predict_s.append(t3 - t2)
    return {"sampler_s": round(statistics.median(sample_s), 4), "encode_s": round(statistics.median(encode_s), 4),
            "predictor_s": round(statistics.median(predict_s), 4), "groups": predictor.n_groups,
            "all_within_budget": bool((budget.kept_params_many(sizes) <= budget.budget_params).all())}


def gowalla_frequencies():
    path = REPO / "dataset" / "gowalla" / "gowalla.inter"
    if not path.is_file():
        rng = np.random.default_rng(0)
        return rng.zipf(1.7, 29858).clip(max=5000), rng.zipf(1.7, 40981).clip(max=5000), "zipf (no dataset/gowalla)"
    pairs = np.loadtxt(path, skiprows=1, dtype=np.int64)
    # a 50% per-user split halves counts on average: the shape of the distribution is what matters here
    return (np.bincount(pairs[:, 0], minlength=29858) + 1) // 2, (np.bincount(pairs[:, 1], minlength=40981) + 1) // 2, \
        "gowalla interactions / 2"


def bet_end_to_end(device: str, tmp: Path) -> dict:
    """run_bet.py with defaults (LightGCN, ml-100k, empty pretraining cache): wall seconds and the run's own
    phase timings from its report."""
    cmd = [sys.executable, "run_bet.py", "--model=LightGCN", "--dataset=ml-100k", "--method=bet",
           f"--output_dir={tmp / 'bet'}", f"--pretrain_cache_dir={tmp / 'cache'}", f"--use_gpu={device != 'cpu'}"]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    wall = time.perf_counter() - start
    report = json.loads((tmp / "bet" / "report.json").read_text())
    return {"wall_s": round(wall, 1), "timings_s": {k: round(v, 1) for k, v in report["timings_s"].items()}}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-end-to-end", action="store_true",
                        help="full mode without the end-to-end BET run (bet_ml100k_s, 8-10 minutes on 2 cores)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--out", default=str(REPO / "results"))
    args = parser.parse_args()
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"recbole-bet-perf-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    os.chdir(REPO)
    have_gowalla = (REPO / "dataset" / "gowalla" / "gowalla.inter").is_file()
    gowalla_train = not args.quick and have_gowalla
    details, skipped = {}, []

    from recbole_bet.training import train_loader_with_batch_size

    # 1. Gowalla LightGCN search iteration first, so peak RSS is that of a Gowalla search process
    if gowalla_train:
        log("Gowalla LightGCN: one search iteration (m=100, h=1)")
        ctx = make_ctx("LightGCN", "gowalla", args.device, bet_finetune_epochs=1)
        details["gowalla_lightgcn_iteration"] = search_iteration(ctx, 1, tmp)
        details["gowalla_lightgcn_iteration"]["peak_rss_gb"] = round(peak_rss_gb(), 2)
        log("Gowalla LightGCN: evaluation, ours vs stock")
        details["gowalla_lightgcn_eval"] = eval_comparison(ctx, 2)
        log("Gowalla LightGCN: train epochs, masked vs stock, batch 10000 and 2048")
        # the loaders are built at an explicit batch size: the default train_batch_size is 2048
        details["gowalla_lightgcn_epoch_b10000"] = mask_overhead(ctx, train_loader_with_batch_size(
            ctx.config, ctx.train_data, 10000), 2)
        details["gowalla_lightgcn_epoch_b2048"] = mask_overhead(ctx, train_loader_with_batch_size(
            ctx.config, ctx.train_data, 2048), 1)
        del ctx
        for model in ("NGCF", "NeuMF"):
            log(f"Gowalla {model}: train epochs, masked vs stock, batch 10000")
            ctx = make_ctx(model, "gowalla", args.device)
            # NeuMF epochs are short and vary by 10-20% between repeats: more repeats for a stable median
            details[f"gowalla_{model.lower()}_epoch_b10000"] = mask_overhead(ctx, train_loader_with_batch_size(
                ctx.config, ctx.train_data, 10000), 5 if model == "NeuMF" else 2)
            del ctx
    else:
        skipped += ["gowalla training rows (iteration_overhead_s, peak_rss_gb and eval_ratio are from ml-100k)"]

    # 2. ml-100k: mask overhead for the three models, evaluation, one iteration
    for model in ("LightGCN", "NGCF", "NeuMF"):
        log(f"ml-100k {model}: train epochs, masked vs stock")
        ctx = make_ctx(model, "ml-100k", args.device)
        details[f"ml100k_{model.lower()}_epoch"] = mask_overhead(ctx, ctx.train_data, 3 if args.quick else 5)
        if model == "LightGCN":
            details["ml100k_lightgcn_eval"] = eval_comparison(ctx, 5)
            details["ml100k_lightgcn_iteration"] = search_iteration(ctx, 1, tmp)
        del ctx

    # 3. Gowalla-size search bookkeeping
    log("Gowalla-size sampler and predictor")
    user_freq, item_freq, source = gowalla_frequencies()
    details["gowalla_search_parts"] = dict(search_parts(29858, 40981, user_freq, item_freq, 5), frequencies=source)

    # 4. end to end
    if args.quick or args.skip_end_to_end:
        skipped.append("bet_ml100k_s (end-to-end BET run, 8-10 minutes, docs/performance.md)")
        bet_s = None
    else:
        log("BET end to end with defaults, LightGCN on ml-100k")
        details["bet_ml100k"] = bet_end_to_end(args.device, tmp)
        bet_s = details["bet_ml100k"]["wall_s"]

    # at Gowalla scale where measured (the scale), else ml-100k; the ml-100k worst is kept beside it
    where = "gowalla" if gowalla_train else "ml100k"
    ml100k_worst = max(v["ratio"] for k, v in details.items() if k.startswith("ml100k_") and k.endswith("_epoch"))
    ratios = [v["ratio"] for k, v in details.items() if k.startswith("gowalla_") and "_epoch_" in k] or [ml100k_worst]
    result = {
        "mask_overhead_ratio": max(ratios),
        "mask_overhead_ratio_ml100k": ml100k_worst,
        "sampler_s": details["gowalla_search_parts"]["sampler_s"],
        "predictor_s": details["gowalla_search_parts"]["predictor_s"],
        "eval_ratio": details[f"{where}_lightgcn_eval"]["ratio"],
        "iteration_overhead_s": details[f"{where}_lightgcn_iteration"]["overhead_s"],
        "peak_rss_gb": details["gowalla_lightgcn_iteration"]["peak_rss_gb"] if gowalla_train else None,
        "bet_ml100k_s": bet_s,
        "mode": "quick" if args.quick else "full", "device": args.device, "skipped": skipped,
    }
    if not gowalla_train:
        skipped.append("peak_rss_gb (needs the Gowalla search iteration)")
    write_outputs(Path(args.out), result, details, " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]))
    shutil.rmtree(tmp, ignore_errors=True)  # checkpoints and the end-to-end run's output
    print(json.dumps(result))


def profile_lines(details: dict) -> list:
    """perf.md's profile section: each search iteration's parts, then its profiled functions by own time."""
    lines = []
    for key, it in details.items():
        if not key.endswith("_iteration"):
            continue
        first = it["first_iteration"]
        lines += ["", f"## Profile: one search iteration, {key.rsplit('_', 1)[0].replace('_', ' ')}", "",
                  f"m={it['candidates']} candidates, {it['finetune_epochs']} finetuning epoch(s). Parts of the "
                  f"process's second iteration (the timed one): total {it['total_s']} s = finetuning "
                  f"{it['finetune_s']} s + evaluation {it['eval_s']} s + sampling {it['sample_s']} s + reset "
                  f"{it['reset_s']} s + checkpoint {it['checkpoint_s']} s + the rest (encoding, predicting, predictor "
                  f"updates); overhead (total - finetuning - evaluation) {it['overhead_s']} s. The first iteration: "
                  f"total {first['total_s']} s, sampling {first['sample_s']} s, overhead {first['overhead_s']} s.",
                  "", "A third iteration under cProfile, functions by own time:", "",
                  "| function | calls | own s | cumulative s |", "|---|---|---|---|"]
        lines += [f"| `{r['function']}` | {r['calls']} | {r['own_s']} | {r['cum_s']} |" for r in it.get("profile_top", [])]
    return lines


def write_outputs(out: Path, result: dict, details: dict, command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    name = "perf" if result["device"] == "cpu" else f"perf-{result['device']}"
    (out / f"{name}.json").write_text(json.dumps({"result": result, "details": details}, indent=1) + "\n")
    lines = [f"# Performance ({result['mode']} mode, {result['device']})", "",
             f"Command: `python benchmarks/{command}` on {time.strftime('%Y-%m-%d')}; machine: {platform.machine()}, "
             f"{os.cpu_count()} CPU cores, torch {torch.__version__} with {torch.get_num_threads()} threads"
             + (f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "") + ".", "",
             "| key | measured | target (2-core CPU) | met |", "|---|---|---|---|"]
    for key, target in TARGETS.items():
        value = result[key]
        met = "n/a" if value is None else ("yes" if value <= target else "**no**")
        lines.append(f"| `{key}` | {'skipped' if value is None else value} | <= {target} | {met} |")
    if result["skipped"]:
        lines += ["", "Skipped in this mode: " + "; ".join(result["skipped"]) + "."]
    lines += ["", "## Train epochs: stock RecBole model / recbole-bet's masked model", "",
              f"Median of interleaved repeats; masked side with MR's mixed sizes. `mask_overhead_ratio` is the worst "
              f"{'Gowalla' if any(k.startswith('gowalla_') and '_epoch_' in k for k in details) else 'ml-100k'} row; "
              f"the worst ml-100k row is {result['mask_overhead_ratio_ml100k']}.", "",
              "| rows | stock s | masked s | ratio | repeats |", "|---|--:|--:|--:|--:|"]
    lines += [f"| {k} | {v['stock_epoch_s']} | {v['masked_epoch_s']} | {v['ratio']} | {v['repeats']} |"
              for k, v in details.items() if "_epoch" in k]
    if "bet_ml100k" in details:
        e2e = details["bet_ml100k"]
        lines += ["", f"End to end (`bet_ml100k_s`): {e2e['wall_s']} s wall; the run's own phases (report.json "
                  f"`timings_s`): " + ", ".join(f"{k} {v} s" for k, v in e2e["timings_s"].items()) + "."]
    lines += profile_lines(details)
    shown = {k: {kk: vv for kk, vv in v.items() if kk != "profile_top"} for k, v in details.items()}
    lines += ["", "## Details", "", "```json", json.dumps(shown, indent=1), "```", ""]
    (out / f"{name}.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
