"""Does fitness on a fixed random subset of validation users rank actions like full validation?

    python benchmarks/fitness_subset.py [--model=LightGCN] [--dataset=ml-100k] [--actions=12]

Pretrains (or loads the cached pretrained model), samples ``--actions`` BET actions, finetunes each with
BET's defaults, scores it on all validation users and on 25% and 50% subsets (bet_fitness_users), and
prints the Spearman correlation of subset vs full fitness as one JSON line (also results/fitness_subset.json).
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="LightGCN")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--actions", type=int, default=12)
    parser.add_argument("--sparsity", type=float, default=0.9)
    args = parser.parse_args()
    sys.argv = sys.argv[:1]
    from recbole_bet.config import make_config
    from recbole_bet.pipeline import prepare
    from recbole_bet.training import quality
    from recbole_bet.methods.bet.loop import iteration_seed
    from recbole_bet.methods.bet.method import finetune_batch_size
    from recbole_bet.pretrain import pretrained
    from recbole_bet.methods.bet.sampler import ActionSampler
    from recbole_bet.training import Finetuner, train_loader_with_batch_size, validation_subset

    start = time.perf_counter()
    config = make_config(args.model, args.dataset, config_dict={"sparsity": args.sparsity, "state": "WARNING"})
    ctx = prepare(config)
    pre_state, _, _ = pretrained(ctx)
    loaders = {1.0: ctx.valid_data}
    for fraction in (0.25, 0.5):
        loaders[fraction] = validation_subset(config, ctx.valid_data, fraction, config["seed"])
    ctx.masked.load(pre_state)
    full = {f: quality(ctx.evaluate(loader)) for f, loader in loaders.items()}
    sampler = ActionSampler(ctx.budget, ctx.user_freq, ctx.item_freq, beta_max=config["bet_beta_max"])
    actions = sampler.sample(args.actions, np.random.default_rng(config["seed"]))
    finetuner = Finetuner(config, ctx.model)
    data = train_loader_with_batch_size(config, ctx.train_data, finetune_batch_size(config, len(ctx.train_data)))
    fitness = {f: [] for f in loaders}
    for t, sizes in enumerate(actions):
        ctx.reseed(iteration_seed(config["seed"], t))
        data.generator.manual_seed(iteration_seed(config["seed"], t))
        ctx.masked.load(pre_state, sizes)
        finetuner.run(data, config["bet_finetune_epochs"])
        for f, loader in loaders.items():
            fitness[f].append(quality(ctx.evaluate(loader)) / full[f])
        print(f"action {t + 1}/{len(actions)}: " + ", ".join(f"{f:.2f}: {v[-1]:.4f}" for f, v in fitness.items()),
              file=sys.stderr)
    result = {
        "model": args.model, "dataset": args.dataset, "sparsity": args.sparsity, "actions": len(actions),
        "finetune_epochs": config["bet_finetune_epochs"],
        "spearman_25": round(float(spearmanr(fitness[1.0], fitness[0.25]).statistic), 4),
        "spearman_50": round(float(spearmanr(fitness[1.0], fitness[0.5]).statistic), 4),
        "fitness": {str(f): [round(x, 5) for x in v] for f, v in fitness.items()},
        "seconds": round(time.perf_counter() - start, 1),
    }
    (REPO / "results").mkdir(exist_ok=True)
    (REPO / "results" / "fitness_subset.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
