"""Time BET's per-iteration bookkeeping at Gowalla size: sampling m candidates, predicting, 2 updates.

    python benchmarks/search_parts.py [--users=29858] [--items=40981] [--candidates=100] [--repeats=5]

Uses the real Gowalla training frequencies when dataset/gowalla/gowalla.inter exists (the 50% split is
approximated by counting all interactions), otherwise Zipf-distributed frequencies. Prints one JSON line
with median seconds over the repeats.
"""
import argparse
import json
import os
import statistics
import time

import numpy as np
import torch

from recbole_bet.budget import make_budget
from recbole_bet.search.predictor import PredictorTrainer, build_predictor
from recbole_bet.search.sampler import ActionSampler


def frequencies(n_users, n_items, rng):
    path = os.path.join("dataset", "gowalla", "gowalla.inter")
    if os.path.isfile(path) and (n_users, n_items) == (29858, 40981):
        pairs = np.loadtxt(path, skiprows=1, dtype=np.int64)
        return np.bincount(pairs[:, 0], minlength=n_users), np.bincount(pairs[:, 1], minlength=n_items), "gowalla"
    return rng.zipf(1.7, n_users).clip(max=5000), rng.zipf(1.7, n_items).clip(max=5000), "zipf"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--users", type=int, default=29858)
    p.add_argument("--items", type=int, default=40981)
    p.add_argument("--candidates", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sparsity", type=float, default=0.9)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    user_freq, item_freq, source = frequencies(args.users, args.items, rng)
    budget = make_budget(args.sparsity, 128, 1, args.users, args.items, 1)
    sampler = ActionSampler(budget, user_freq, item_freq)
    torch.manual_seed(0)
    predictor = build_predictor("deepsets", user_freq, item_freq, 128)
    trainer = PredictorTrainer(predictor, generator=torch.Generator().manual_seed(0))
    population = predictor.encode(sampler.sample(50, rng))
    fitness = torch.rand(50)
    timings = {"sample_s": [], "encode_s": [], "predict_s": [], "update_s": []}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        sizes = sampler.sample(args.candidates, rng)
        t1 = time.perf_counter()
        encoded = predictor.encode(sizes)
        t2 = time.perf_counter()
        with torch.no_grad():
            predictor(encoded)
        t3 = time.perf_counter()
        trainer.update(population, fitness)
        t4 = time.perf_counter()
        for key, value in zip(timings, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            timings[key].append(value)
    result = {k: round(statistics.median(v), 4) for k, v in timings.items()}
    result.update(users=args.users, items=args.items, candidates=args.candidates, frequencies=source,
                  groups=predictor.n_groups, torch_threads=torch.get_num_threads(), repeats=args.repeats,
                  all_within_budget=bool((budget.kept_params_many(sizes) <= budget.budget_params).all()))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
