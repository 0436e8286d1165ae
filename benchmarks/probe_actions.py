"""Score actions the search never drew with BET's own probe: is a loss the search's (it never reached a better
action) or the probe's (it ranked a better action lower)?

    OMP_NUM_THREADS=1 python benchmarks/probe_actions.py --model=NeuMF --sparsity=0.9 --seed=2020 \
        --actions=es,RUN_DIR[,RUN_DIR...] --probe-seeds=0,1,2 --out=results/probe-actions-ml-100k

Each action is probed exactly as a BET run probes its candidates (``methods.bet.method.Probe``: finetuning from
the seed's cached pretrained weights with the action's sizes, fitness = validation quality relative to the
pretrained model's) once per probe seed ``t`` (the search's iteration seed), so every action meets the same
finetuning draws. Actions: ``es`` (equal sizes), ``es-users`` / ``es-items`` (one size per side, the whole budget
to users / items) and any run folder holding a ``table.npz`` (its chosen sizes; a BET run's report adds the best
fitness its search found).
Validation data only. Appends to ``<out>.json`` (replacing an entry of the same model, dataset, sparsity, seed
and action) and rewrites ``<out>.md``. Progress goes to stderr.

``--retrain`` then trains each action once the way BET retrains its top actions (``bet_retrain_init`` of the
backbone's defaults, the seed's draws, the training protocol) and records its validation and test metrics: with a
baseline's run folder this separates its sizes from the rest of the method (which columns it keeps, how it
trains). ``--columns=magnitude`` retrains each row's ``size`` largest-magnitude pretrained entries instead of its
first ``size`` columns (an element mask, as magprune keeps; only with a warm retraining, where the columns carry
pretrained weights); the entry's action is then suffixed ``+magnitude``. ``--probe-seeds=`` (empty) skips the
probe.
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


METRICS = ("recall@20", "ndcg@20")


def entry_key(e: dict) -> str:
    return f"{e['model']}/{e['dataset']}/{e['sparsity']:g}/seed{e['seed']}/{e['action']}"


def action_sizes(ctx, action: str) -> tuple[np.ndarray, dict]:
    """(sizes, facts) of a named action or of a run folder's chosen action."""
    from recbole_bet.budget import ONE_SIZE_PER_SIDE, one_size_per_side

    if action in ONE_SIZE_PER_SIDE:  # the sizings BET's anchors probe
        return one_size_per_side(action, ctx.budget, ctx.user_freq, ctx.item_freq), {}
    folder = Path(action)
    if not (folder / "table.npz").is_file():
        raise SystemExit(f"error: {action} is neither {', '.join(ONE_SIZE_PER_SIDE)} nor a run folder with a table.npz")
    from recbole_bet.export import load_artifact

    config = ctx.config
    load_artifact(str(folder / "table.npz"), ctx.model, ctx.masked, config["model"], config["dataset"].split("/")[-1])
    facts = {}
    report = folder / "report.json"
    if report.is_file():
        r = json.loads(report.read_text())
        if r["sparsity"] != config["sparsity"] or r["seed"] != config["seed"] or r["model"] != config["model"]:
            raise SystemExit(f"error: {action} is a {r['model']} run at {r['sparsity']} seed {r['seed']}")
        search = r.get("search") or {}
        if search.get("iterations"):
            facts["search_best_fitness"] = max(i["fitness"] for i in search["iterations"])
            chosen = search["retrained"][search["chosen"]]
            facts["search_fitness"] = chosen["fitness"]
        facts["valid_ndcg@20"] = r["valid"]["ndcg@20"]
    return np.asarray(ctx.masked.sizes, dtype=np.int64).copy(), facts


def write_md(path: Path, entries: list) -> None:
    commands = list(dict.fromkeys(c for e in entries for c in e.get("commands", [e["command"]])))
    lines = ["# BET's probe and retraining on chosen and baseline actions", "",
             "Produced by (benchmarks/probe_actions.py; its docstring says what is measured):", "",
             *[f"    {c}" for c in commands], "",
             "*fitness* is the mean probe fitness over the probe seeds (each seed one finetuning from the pretrained "
             "weights); *in search* is what the run's own search gave that action and the best fitness of its whole "
             "search; *valid N@20* is the run's final model (after retraining) where the action comes from a run; "
             "*BET's retraining* is the action trained once as BET retrains (`--retrain`): validation NDCG@20, "
             "test Recall@20 (reported, never used to choose), epochs; *pair-shared width* is the mean over training "
             "pairs of the columns both rows keep (for a `+magnitude` action, in its element mask).",
             "", "| model | dataset | sparsity | seed | action | user share | pair-shared width | fitness (mean ± std) | "
             "probe seeds | in search (chosen / best) | valid N@20 | BET's retraining: valid N@20 / test R@20 / epochs |",
             "|---|---|--:|--:|---|--:|--:|--:|---|---|--:|---|"]
    def pair_shared(e):  # entries written before the mask was described have the prefix's value: not shown
        magnitude = e["action"].endswith("+magnitude")
        return "–" if magnitude and e.get("columns") != "magnitude" else f"{e['pair_shared_mean']:.1f}"

    def fitness_key(e):
        return -e["fitness_mean"] if e.get("fitness_mean") is not None else 0.0

    for e in sorted(entries, key=lambda e: (e["model"], e["dataset"], e["sparsity"], e["seed"], fitness_key(e))):
        chosen, best = e.get("search_fitness"), e.get("search_best_fitness")
        in_search = "–" if chosen is None else f"{chosen:.4f} / {best:.4f}"
        valid = "–" if e.get("valid_ndcg@20") is None else f"{e['valid_ndcg@20']:.4f}"
        fitness = "–" if e.get("fitness_mean") is None else f"{e['fitness_mean']:.4f} ± {e['fitness_std']:.4f}"
        share = "–" if e.get("user_share") is None else f"{e['user_share']:.3f}"
        r = e.get("retrained")
        retrained = "–" if r is None else (f"{r['valid']['ndcg@20']:.4f} / {r['test']['recall@20']:.4f} / "
                                           f"{r['epochs']}{'' if r['converged'] else ' (cap)'}")
        lines.append(f"| {e['model']} | {e['dataset']} | {e['sparsity']:g} | {e['seed']} | {e['action']} | "
                     f"{share} | {pair_shared(e)} | {fitness} | "
                     f"{','.join(str(t) for t in e['probe_seeds']) or '–'} | {in_search} | {valid} | {retrained} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="NeuMF")
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=2020)
    p.add_argument("--actions", default="es", help="comma-separated: es, es-users, es-items, run folders with a table.npz")
    p.add_argument("--probe-seeds", default="0,1,2",
                   help="the search iterations t whose finetuning draws are used (empty: no probe)")
    p.add_argument("--config_files", default=None, help="extra YAML files, as run_bet.py takes them (e.g. quick)")
    p.add_argument("--retrain", action="store_true", help="also train each action once as BET retrains it")
    p.add_argument("--columns", choices=("prefix", "magnitude"), default="prefix",
                   help="which entries of a row the retraining keeps: its first `size` or its largest pretrained")
    p.add_argument("--out", default="results/probe-actions-ml-100k", help="writes OUT.json and OUT.md")
    args = p.parse_args(argv)
    command = "OMP_NUM_THREADS=1 python benchmarks/probe_actions.py " + " ".join(
        argv if argv is not None else sys.argv[1:])

    from perf import make_ctx
    from recbole_bet.methods.bet.method import Probe, retrain_keep, retrainer
    from recbole_bet.pretrain import pretrained
    from recbole_bet.budget import size_summary
    from recbole_bet.training import pick

    probe_seeds = [int(t) for t in args.probe_seeds.split(",") if t.strip()]
    out_json, out_md = Path(args.out + ".json"), Path(args.out + ".md")
    entries = {entry_key(e): e for e in (json.loads(out_json.read_text()) if out_json.exists() else [])}
    ctx = make_ctx(args.model, args.dataset, "cpu", config_files=args.config_files.split() if args.config_files else None,
                   method="bet", sparsity=args.sparsity, seed=args.seed)
    pre_state, _, _ = pretrained(ctx)
    actions = [(a, *action_sizes(ctx, a)) for a in args.actions.split(",")]  # read every action before probing
    probe = Probe(ctx, pre_state)
    train = ctx.train_data.dataset
    pair_users = train.inter_feat[train.uid_field].numpy() - 1
    pair_items = train.inter_feat[train.iid_field].numpy() - 1
    if args.columns == "magnitude":
        if ctx.config["bet_retrain_init"] != "pretrained" or not args.retrain or probe_seeds:
            raise SystemExit("error: --columns=magnitude retrains warm only (bet_retrain_init: pretrained, "
                             "--retrain, --probe-seeds= empty)")
        ctx.config["bet_retrain_columns"] = "magnitude"  # what BET's retraining then keeps (method.retrain_keep)
        actions = [(f"{a}+magnitude", sizes, facts) for a, sizes, facts in actions]
    keep_of = retrain_keep(ctx, pre_state)  # the pretrained magnitudes, scored once for every action
    retrain = retrainer(ctx, pre_state) if args.retrain else None
    for action, sizes, facts in actions:
        if not ctx.budget.fits(sizes):
            raise SystemExit(f"error: {action}'s sizes do not fit the budget at {args.sparsity}")
        fitness = []
        for t in probe_seeds:
            start = time.perf_counter()
            fitness.append(probe(sizes, t))
            print(f"[probe_actions {time.strftime('%H:%M:%S')}] {action} t={t}: fitness {fitness[-1]:.4f} "
                  f"({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
        retrained = None
        if args.retrain:
            n_trainings = len(ctx.trainings)
            _, valid, seconds = retrain(sizes)
            training = ctx.trainings[n_trainings] if len(ctx.trainings) > n_trainings else {}
            retrained = {"init": ctx.config["bet_retrain_init"], "columns": args.columns, "valid": pick(valid, METRICS),
                         "test": pick(ctx.evaluate(ctx.test_data), METRICS), "seconds": seconds,
                         "epochs": training.get("epochs"), "converged": training.get("converged")}
            print(f"[probe_actions {time.strftime('%H:%M:%S')}] {action} retrained ({retrained['init']}): valid "
                  f"N@20 {retrained['valid']['ndcg@20']:.4f}, {seconds / 60:.1f} min", file=sys.stderr, flush=True)
        described = size_summary(ctx.budget, sizes, pair_users, pair_items,
                                 keep=None if keep_of is None else keep_of(sizes))
        old = entries.get(entry_key({"model": args.model, "dataset": args.dataset, "sparsity": args.sparsity,
                                     "seed": args.seed, "action": action}), {})
        seeds_used = probe_seeds
        if not fitness and old.get("fitness"):  # a retraining alone keeps the action's earlier probe
            seeds_used, fitness = old["probe_seeds"], old["fitness"]
        if retrained is None:
            retrained = old.get("retrained")
        entry = {"model": args.model, "dataset": args.dataset, "sparsity": args.sparsity, "seed": args.seed,
                 "action": action, "probe_seeds": seeds_used, "fitness": fitness,
                 "fitness_mean": float(np.mean(fitness)) if fitness else None,
                 "fitness_std": float(np.std(fitness, ddof=1)) if len(fitness) > 1 else 0.0,
                 "retrained": retrained, "pair_shared_mean": described["pair_shared_mean"], "columns": args.columns,
                 "user_share": described["user_share"],
                 "kept_units": int(sizes.sum()), "command": command,
                 "commands": list(dict.fromkeys([*old.get("commands", [old["command"]] if old else []), command])),
                 **facts}
        entries[entry_key(entry)] = entry
        out_json.write_text(json.dumps(list(entries.values()), indent=1) + "\n")
        write_md(out_md, list(entries.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
