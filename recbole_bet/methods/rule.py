"""RULE (Chen et al., KDD 2021): elastic embeddings, one training for every budget.

Every d_max-wide row is N blocks of width d = d_max / N. Users and items are split into groups (G per
side); a group keeps the same set of blocks for all its members. The model is trained once with all
blocks and a diversity regulariser (cached, shared by every budget), a performance estimator learns
validation Recall@100 from random block selections drawn across budgets (cached too), and an
evolutionary search under each budget picks a selection with the estimator. Nothing is retrained: the
selected blocks of the trained tables are the result. Adaptations: docs/methods.md.
"""
from __future__ import annotations

import copy
import json
import os
from logging import getLogger
from time import perf_counter

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recbole_bet.budget import block_min_count, block_units, check_blocks_feasible, fit_block_counts
from recbole_bet.files import atomic_write
from recbole_bet.methods.base import Method, Selection
from recbole_bet.plots import plot_rule_search
from recbole_bet.pretrain import cache_path, pretrained
from recbole_bet.scoring import bake_final_layer, can_bake, install_block_scoring, remove_block_scoring
from recbole_bet.training import Scorer, validation_subset

ESTIMATOR_METRIC = "recall@100"  # the paper's (Appendix B)


# ------------------------------------------------------------------------------------------ groups

def make_groups(freq: np.ndarray, n_groups: int, mode: str, rng) -> np.ndarray:
    """Group index (0..G'-1) of each entity of one side: G' = min(G, n) near-equal groups, either a random
    partition or by popularity (RULE-P: most frequent first)."""
    n = len(freq)
    order = rng.permutation(n) if mode == "random" else np.argsort(-np.asarray(freq), kind="stable")
    group = np.empty(n, dtype=np.int64)
    for g, members in enumerate(np.array_split(order, min(n_groups, n))):
        group[members] = g
    return group


class BlockSpace:
    """The search space: groups of users and items, N blocks of ``width`` each; a selection is a bool
    (n_groups x N) matrix, user groups first. With ``user_blocks`` (RULE's items-only compression) every user
    group keeps its first ``user_blocks`` blocks in every selection, and only item groups are searched."""

    def __init__(self, n_users: int, n_items: int, d_max: int, n_blocks: int, user_group, item_group,
                 d_min: int = 1, tables_per_entity: int = 1, user_blocks: int | None = None):
        self.n_blocks, self.width, self.d_max = n_blocks, d_max // n_blocks, d_max
        self.n_user_groups = int(user_group.max()) + 1
        self.group_of = np.concatenate([user_group, item_group + self.n_user_groups])
        self.n_groups = int(self.group_of.max()) + 1
        self.group_sizes = np.bincount(self.group_of, minlength=self.n_groups)
        self.is_item = np.arange(self.n_groups) >= self.n_user_groups
        self.min_count = block_min_count(d_min, self.width)
        self.n_users, self.tables_per_entity = n_users, tables_per_entity
        self.user_blocks = user_blocks
        self.free = np.ones(self.n_groups, dtype=bool)  # the groups the search chooses blocks for
        if user_blocks is not None:
            self.free[: self.n_user_groups] = False

    def _fix(self, selection: np.ndarray) -> np.ndarray:
        if self.user_blocks is not None:
            selection[~self.free] = np.arange(self.n_blocks) < self.user_blocks
        return selection

    def everyone(self, k: int) -> np.ndarray:
        """Block counts with ``k`` for every searched group; fixed user groups keep theirs."""
        return np.where(self.free, k, self.user_blocks or 0)

    def _free_budget(self, budget_units: int) -> int:
        """Units left to the searched groups once the fixed user blocks are paid."""
        fixed = np.where(self.free, 0, self.user_blocks or 0)
        return budget_units - block_units(fixed, self.group_sizes, self.width)

    def units(self, selection: np.ndarray) -> int:
        return block_units(selection.sum(axis=1), self.group_sizes, self.width)

    def sizes(self, selection: np.ndarray) -> np.ndarray:
        return (selection.sum(axis=1) * self.width)[self.group_of].astype(np.int64)

    def keep(self, selection: np.ndarray) -> np.ndarray:
        """Element mask (n_entities x d_max): an entity keeps the columns of its group's selected blocks."""
        return np.repeat(selection, self.width, axis=1)[self.group_of]

    def _choose(self, counts, rng) -> np.ndarray:
        """``counts[g]`` distinct blocks for every group, uniformly (Algorithm 1, lines 14-17)."""
        ranks = np.argsort(rng.random((self.n_groups, self.n_blocks)), axis=1)
        return ranks < np.asarray(counts)[:, None]

    def random(self, budget_units: int, rng) -> np.ndarray:
        """Algorithm 1: counts ~ round(N(mu, 1)) within [min_count, N], mu the mean number of blocks per
        entity the budget allows; one block at a time taken from random groups until it fits."""
        free, units = self.free, self._free_budget(budget_units)
        mu = units / (self.width * self.group_sizes[free].sum())
        counts = np.full(self.n_groups, self.user_blocks or 0, dtype=np.int64)
        counts[free] = np.clip(np.rint(rng.normal(mu, 1.0, int(free.sum()))), self.min_count, self.n_blocks)
        counts[free] = fit_block_counts(counts[free], self.group_sizes[free], self.width, units, self.min_count, rng)
        return self._fix(self._choose(counts, rng))

    def _repair(self, selection: np.ndarray, budget_units: int, rng) -> np.ndarray:
        counts = selection.sum(axis=1)
        fitted = counts.copy()
        fitted[self.free] = fit_block_counts(counts[self.free], self.group_sizes[self.free], self.width,
                                             self._free_budget(budget_units), self.min_count, rng)
        for g in np.nonzero(fitted < counts)[0]:  # drop random selected blocks of the groups that shrank
            chosen = np.nonzero(selection[g])[0]
            selection[g, rng.choice(chosen, size=counts[g] - fitted[g], replace=False)] = False
        return selection

    def mutate(self, parent: np.ndarray, budget_units: int, rng) -> np.ndarray:
        """Section 5.3, one of two operations with equal probability: swap the block sets of two random
        groups of the same side (users with users, items with items: a user and an item group differ in
        size by orders of magnitude), then repair to the budget; or reselect as many blocks for one random
        group (same cost)."""
        child = parent.copy()
        searched = np.nonzero(self.free)[0]
        side = self.is_item[searched[rng.integers(searched.size)]]
        same = np.nonzero((self.is_item == side) & self.free)[0]
        if rng.random() < 0.5 and same.size >= 2:
            a, b = rng.choice(same, size=2, replace=False)
            child[[a, b]] = child[[b, a]]
            return self._repair(child, budget_units, rng)
        g = searched[rng.integers(searched.size)]
        child[g] = np.argsort(rng.random(self.n_blocks)) < parent[g].sum()
        return child


def build_space(ctx) -> BlockSpace:
    config, b = ctx.config, ctx.budget
    rng = np.random.default_rng([config["seed"], 7])  # the same groups whatever the budget
    users = make_groups(ctx.user_freq, config["rule_groups"], config["rule_grouping"], rng)
    items = make_groups(ctx.item_freq, config["rule_groups"], config["rule_grouping"], rng)
    return BlockSpace(b.n_users, b.n_items, b.d_max, config["rule_blocks"], users, items, b.d_min,
                      b.tables_per_entity, user_blocks=fixed_user_blocks(config))


def fixed_user_blocks(config) -> int | None:
    """Blocks every user keeps when only items are searched (``rule_compress: items``); None: users searched too."""
    if config["rule_compress"] == "items":
        return int(config["rule_user_blocks"])
    return None


# ------------------------------------------------------------------------------ training (Eq. 3)

def block_diversity(weight: torch.Tensor, n_blocks: int) -> torch.Tensor:
    """Mean pairwise cosine similarity between a row's blocks, averaged over rows: in [-1/(N-1), 1].

    Eq. 3 rewards the squared distance between blocks, which grows without bound with the scale of the
    embeddings (minimising the loss would inflate them); the cosine keeps what it rewards, blocks that
    point in different directions, and is bounded and scale-free."""
    if n_blocks < 2 or weight.shape[0] == 0:
        return weight.new_zeros(())
    blocks = F.normalize(weight.reshape(weight.shape[0], n_blocks, -1), dim=-1)
    gram = blocks @ blocks.transpose(1, 2)
    iu = torch.triu_indices(n_blocks, n_blocks, offset=1, device=weight.device)
    return gram[:, iu[0], iu[1]].mean()


def _batch_rows(model, interaction, entity: str) -> torch.Tensor:
    fields = [model.USER_ID] if entity == "user" else [model.ITEM_ID, getattr(model, "NEG_ITEM_ID", None)]
    ids = [interaction[f] for f in fields if f is not None and f in interaction]
    return torch.unique(torch.cat(ids))


def train_with_diversity(ctx) -> dict:
    """Train with all blocks to convergence (RecBole's trainer, early stopping as everywhere here) on the
    model's own loss plus ``rule_lambda`` times the block diversity of the batch's user and item rows.
    The batch's rows only: over the whole table, Adam would move rows that the batch never touched by a
    full step along a 1e-4-weighted gradient."""
    model, config = ctx.model, ctx.config
    lam, n_blocks = float(config["rule_lambda"]), config["rule_blocks"]
    stock_loss = model.calculate_loss
    tables = ctx.masked.tables

    def loss_with_diversity(interaction):
        loss = stock_loss(interaction)
        if lam == 0:
            return loss
        rows = {e: _batch_rows(model, interaction, e) for e in ("user", "item")}
        reg = torch.stack([block_diversity(t.module.weight[rows[t.entity]], n_blocks) for t in tables]).mean()
        return (*loss, lam * reg) if isinstance(loss, tuple) else loss + lam * reg

    model.calculate_loss = loss_with_diversity  # an instance attribute: the stock class is untouched
    try:
        return ctx.train_to_convergence("rule training")
    finally:
        del model.calculate_loss


# ------------------------------------------------------------------------------- estimator (Eq. 4-6)

class PerformanceEstimator(nn.Module):
    """Eq. 4-5: x_g = W [one-hot(g), multi-hot(B_g)]; y = w^T FFN(sum_{g<g'} x_g * x_g') + b.

    The pairwise sum is computed as ((sum x)^2 - sum x^2) / 2 and divided by the number of pairs, a
    constant that keeps its scale independent of the number of groups."""

    def __init__(self, n_groups: int, n_blocks: int, dim: int = 64):
        super().__init__()
        self.register_buffer("onehot", torch.eye(n_groups))
        self.project = nn.Linear(n_groups + n_blocks, dim, bias=False)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.ReLU())
        self.out = nn.Linear(dim, 1)
        self.pairs = max(1, n_groups * (n_groups - 1) // 2)

    def forward(self, selections: torch.Tensor) -> torch.Tensor:
        onehot = self.onehot.expand(selections.shape[0], -1, -1)
        x = self.project(torch.cat([onehot, selections.float()], dim=-1))
        s = x.sum(dim=1)
        pairwise = 0.5 * (s * s - (x * x).sum(dim=1)) / self.pairs
        return self.out(self.ffn(pairwise)).squeeze(-1)


def fit_estimator(selections: np.ndarray, targets: np.ndarray, dim: int, steps: int, lr: float,
                  seed: int) -> tuple[PerformanceEstimator, callable]:
    """Train on (selection, target) pairs with the squared error of Eq. 6 (full batch, Adam); targets are
    standardised for training. Returns the estimator and ``predict(selections) -> np.ndarray``."""
    torch.manual_seed(seed)
    x = torch.from_numpy(np.asarray(selections, dtype=np.float32))
    y = torch.from_numpy(np.asarray(targets, dtype=np.float64))
    mean, std = float(y.mean()), float(y.std()) if len(y) > 1 and float(y.std()) > 0 else 1.0
    z = ((y - mean) / std).float()
    model = PerformanceEstimator(x.shape[1], x.shape[2], dim)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = ((model(x) - z) ** 2).mean()
        loss.backward()
        opt.step()
    model.eval()

    def predict(sel) -> np.ndarray:
        with torch.no_grad():
            out = model(torch.from_numpy(np.asarray(sel, dtype=np.float32)))
        return out.double().numpy() * std + mean

    return model, predict


def subset_scorer(ctx):
    """(scorer, loader): Recall@100 on a fixed random set of ``rule_estimator_users`` validation users."""
    config = ctx.config
    local = copy.copy(config)
    local.final_config_dict = dict(config.final_config_dict, topk=[100], metrics=["Recall"],
                                   valid_metric="Recall@100")
    dataset = ctx.valid_data._dataset
    n_valid = len(np.unique(dataset.inter_feat[dataset.uid_field].numpy()))
    fraction = min(1.0, config["rule_estimator_users"] / n_valid)
    loader = validation_subset(local, ctx.valid_data, fraction, config["seed"])
    return Scorer(local, ctx.model), loader


def _load_pairs(path: str):
    try:
        with np.load(path, allow_pickle=False) as data:
            return data["selections"], data["targets"]
    except Exception as exc:  # a damaged cache is a miss, never a crash
        getLogger().warning(f"ignoring unreadable RULE pairs cache {path}: {exc}")
        return None


def _save_pairs(path: str, selections, targets) -> None:
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with atomic_write(path) as fh:
            np.savez(fh, selections=selections, targets=targets)
    except OSError as exc:
        getLogger().warning(f"could not cache RULE's estimator pairs at {path}: {exc}")


def estimator_pairs(ctx, space: BlockSpace, state: dict, variant: str):
    """Algorithm 3: ``rule_estimator_pairs`` random selections, each under a budget drawn uniformly between
    the smallest selection and the full table, scored by validation Recall@100 on the fixed user set.
    Cached next to the training: (selections, targets, reused)."""
    config = ctx.config
    key = json.dumps({k: config[k] for k in ("rule_groups", "rule_grouping", "rule_estimator_pairs",
                                             "rule_estimator_users", "d_min", "rule_compress", "rule_user_blocks")},
                     sort_keys=True)
    path = cache_path(config, f"rule-pairs:{variant}:{key}", suffix=".npz")
    cached = _load_pairs(path) if os.path.isfile(path) else None
    if cached is not None:
        getLogger().info(f"RULE: estimator pairs loaded from cache {path}")
        return cached[0], cached[1], True
    rng = np.random.default_rng([config["seed"], 11])
    scorer, loader = subset_scorer(ctx)
    lowest = space.units(first_blocks(space.everyone(space.min_count), space.n_blocks))
    highest = space.units(first_blocks(space.everyone(space.n_blocks), space.n_blocks))
    selections = np.zeros((config["rule_estimator_pairs"], space.n_groups, space.n_blocks), dtype=bool)
    targets = np.zeros(config["rule_estimator_pairs"])
    for i in range(len(targets)):
        selections[i] = space.random(int(rng.integers(lowest, highest + 1)), rng)
        ctx.masked.load(state, keep=space.keep(selections[i]))
        targets[i] = scorer.evaluate(loader)[ESTIMATOR_METRIC]
    _save_pairs(path, selections, targets)
    return selections, targets, False


# ----------------------------------------------------------------------------- search (Algorithm 2)

def evolve(space: BlockSpace, estimate, budget_units: int, population: int, sample: int, cycles: int, rng):
    """Algorithm 2: a seed population from the randomizer, then ``cycles`` rounds of tournament (``sample``
    drawn with replacement), mutation of the winner and removal of the worst. Returns (best selection, its
    estimate, every evaluated selection's units, best estimate after each round)."""
    seed = [space.random(budget_units, rng) for _ in range(population)]
    scores = list(estimate(np.stack(seed)))
    cache = list(zip(seed, scores))
    history = []
    for _ in range(cycles):
        drawn = rng.integers(len(seed), size=sample)
        parent = seed[max(drawn, key=lambda i: scores[i])]
        child = space.mutate(parent, budget_units, rng)
        score = float(estimate(child[None])[0])
        seed.append(child)
        scores.append(score)
        cache.append((child, score))
        worst = int(np.argmin(scores))
        del seed[worst], scores[worst]
        history.append(max(s for _, s in cache))
    best, best_score = max(cache, key=lambda item: item[1])
    return best, float(best_score), [space.units(s) for s, _ in cache], history


def _holdout(selections, targets, config) -> dict:
    """Held-out check of the estimator: fit on 80% of the pairs, score the other 20%."""
    n = len(targets)
    if n < 10:
        return {}
    order = np.random.default_rng([config["seed"], 13]).permutation(n)
    test, train = order[: n // 5], order[n // 5:]
    _, predict = fit_estimator(selections[train], targets[train], config["rule_estimator_dim"],
                               config["rule_estimator_steps"], config["rule_estimator_lr"], config["seed"])
    pred = predict(selections[test])
    corr = float(np.corrcoef(pred, targets[test])[0, 1]) if np.std(pred) > 0 and np.std(targets[test]) > 0 else 0.0
    return {"holdout_pairs": int(len(test)), "holdout_rmse": float(np.sqrt(np.mean((pred - targets[test]) ** 2))),
            "holdout_corr": corr}


def first_blocks(counts, n_blocks: int) -> np.ndarray:
    """The selection in which group g keeps its first ``counts[g]`` blocks (users and items aligned)."""
    return np.arange(n_blocks)[None, :] < np.asarray(counts)[:, None]


def aligned_diagnostic(ctx, space: BlockSpace, state: dict, chosen: np.ndarray) -> dict:
    """Validation of the trained model with aligned blocks, no search: every group's first blocks, with the
    chosen selection's counts (the same budget) and with the most blocks everyone can have. When these beat the
    searched selection, its misaligned user and item blocks (a user and an item meet only where both kept the
    same block) cost more than the search gains."""
    out = {}
    everyone = space.everyone
    uniform = max(k for k in range(space.min_count, space.n_blocks + 1)
                  if space.units(first_blocks(everyone(k), space.n_blocks)) <= ctx.budget.budget_units)
    for name, counts in (("chosen_counts", chosen.sum(axis=1)), ("uniform", everyone(uniform))):
        ctx.masked.load(state, keep=space.keep(first_blocks(counts, space.n_blocks)))
        out[name] = {"blocks": int(uniform) if name == "uniform" else None,
                     "valid_ndcg@20": float(ctx.evaluate(ctx.valid_data)["ndcg@20"])}
    ctx.masked.load(state, keep=space.keep(chosen))
    out["chosen"] = {"valid_ndcg@20": float(ctx.evaluate(ctx.valid_data)["ndcg@20"])}
    return out


def near_budget_check(ctx, space: BlockSpace, state: dict, estimate, count: int) -> dict:
    """The estimator where it is used: ``count`` random selections at the run's own budget, each scored for real
    (subset Recall@100) and by the estimator. The held-out check spans all budgets, where the number of blocks
    alone explains most of the target; this one asks whether the estimator ranks selections of one budget."""
    if count < 3:
        return {}
    from scipy.stats import spearmanr

    rng = np.random.default_rng([ctx.config["seed"], 19])
    scorer, loader = subset_scorer(ctx)
    selections = np.stack([space.random(ctx.budget.budget_units, rng) for _ in range(count)])
    real = np.zeros(count)
    for i, selection in enumerate(selections):
        ctx.masked.load(state, keep=space.keep(selection))
        real[i] = scorer.evaluate(loader)[ESTIMATOR_METRIC]
    est = estimate(selections)
    varied = np.std(real) > 0 and np.std(est) > 0
    return {"selections": count, "target_min": float(real.min()), "target_max": float(real.max()),
            "corr": float(np.corrcoef(est, real)[0, 1]) if varied else 0.0,
            "spearman": float(spearmanr(est, real)[0]) if varied else 0.0}


def block_cosine(ctx, state: dict, n_blocks: int) -> float:
    """The diversity term over whole trained tables (mean pairwise cosine of a row's blocks; lower is more
    diverse): what ``rule_lambda`` changed, compared across runs."""
    values = [block_diversity(state[f"{t.name}.weight"][1:].float(), n_blocks) for t in ctx.masked.tables]
    return float(torch.stack(values).mean())


class RULE(Method):
    name = "rule"
    element_masks = True  # selected blocks are any columns of a row, not a prefix

    def plot_search(self, path, search, title, budget) -> bool:
        return bool(search) and plot_rule_search(path, search, title)

    def check_budgets(self, ctx, budgets) -> None:
        space = build_space(ctx)
        for b in budgets:
            check_blocks_feasible(b, space.n_blocks, space.min_count, space.user_blocks)

    def select(self, ctx) -> Selection:
        config, b, logger = ctx.config, ctx.budget, getLogger()
        space = build_space(ctx)
        check_blocks_feasible(b, space.n_blocks, space.min_count, space.user_blocks)  # before any training
        variant = f"rule-train:blocks={config['rule_blocks']}:lambda={float(config['rule_lambda'])!r}"
        eq2 = config["rule_scoring"] == "eq2"
        remove_block_scoring(ctx.model)  # a list's previous budget may have baked the model: back to the stock one
        if eq2:  # trained, searched, evaluated and exported with Eq. 2
            install_block_scoring(ctx.model, ctx.masked, space.n_blocks, mask_users=space.user_blocks is None)
            variant += ":scoring=eq2"
        training_reused = os.path.isfile(cache_path(config, variant))
        state, train_valid, train_s = pretrained(ctx, variant, train_with_diversity)
        trained, baked = state, eq2 and can_bake(ctx.model)
        if baked:  # blocks of LightGCN's final-layer embeddings, as the paper selects them
            state = bake_final_layer(ctx.model, ctx.masked, state, fold_users=space.user_blocks is not None,
                                     n_layers=config["n_layers"])

        start = perf_counter()
        pairs_variant = variant + (":final-layer" if baked else "")  # baked tables score differently
        selections, targets, pairs_reused = estimator_pairs(ctx, space, state, pairs_variant)
        pairs_s = perf_counter() - start
        t0 = perf_counter()
        check = _holdout(selections, targets, config)
        _, estimate = fit_estimator(selections, targets, config["rule_estimator_dim"],
                                    config["rule_estimator_steps"], config["rule_estimator_lr"], config["seed"])
        train_rmse = float(np.sqrt(np.mean((estimate(selections) - targets) ** 2)))
        estimator_s = perf_counter() - t0
        t0 = perf_counter()
        rng = np.random.default_rng([config["seed"], 17])  # depends on the seed only: a budget's search is
        best, best_estimate, units, history = evolve(  # the same alone or as part of a sparsity list
            space, estimate, b.budget_units, config["rule_population"], config["rule_sample"],
            config["rule_cycles"], rng)
        evolution_s = perf_counter() - t0
        t0 = perf_counter()
        near = near_budget_check(ctx, space, state, estimate, config["rule_near_budget"])
        near_s = perf_counter() - t0

        aligned = aligned_diagnostic(ctx, space, state, best)
        keep = space.keep(best)
        sizes = space.sizes(best)
        scorer, loader = subset_scorer(ctx)
        ctx.masked.load(state, keep=keep)
        actual = scorer.evaluate(loader)[ESTIMATOR_METRIC]
        valid = ctx.evaluate(ctx.valid_data)
        n_users = b.n_users
        search = {
            "blocks": space.n_blocks, "block_width": space.width, "min_blocks": space.min_count,
            "groups": {"users": space.n_user_groups, "items": space.n_groups - space.n_user_groups,
                       "grouping": config["rule_grouping"]},
            "lambda": float(config["rule_lambda"]), "scoring": config["rule_scoring"], "final_layer": baked,
            "compress": config["rule_compress"], "user_blocks": space.user_blocks,
            "block_cosine": block_cosine(ctx, trained, space.n_blocks),
            "training_reused": training_reused, "training_valid_ndcg@20": float(train_valid.get("ndcg@20", np.nan)),
            "estimator": {"pairs": int(len(targets)), "users": config["rule_estimator_users"],
                          "pairs_reused": bool(pairs_reused), "metric": ESTIMATOR_METRIC,
                          "target_min": float(targets.min()), "target_max": float(targets.max()),
                          "train_rmse": train_rmse, **check, "near_budget": near},
            "evolution": {"population": config["rule_population"], "sample": config["rule_sample"],
                          "cycles": config["rule_cycles"], "evaluated": len(units),
                          "best_estimate_per_cycle": history},
            "max_candidate_kept_params": int(max(units)) * b.tables_per_entity,
            "chosen": {"estimated_" + ESTIMATOR_METRIC: best_estimate, "subset_" + ESTIMATOR_METRIC: float(actual),
                       "blocks_per_group": [np.nonzero(row)[0].tolist() for row in best]},
            "kept_units_users": int(sizes[:n_users].sum()), "kept_units_items": int(sizes[n_users:].sum()),
            "aligned": aligned,
            "seconds": {"pairs": pairs_s, "estimator": estimator_s, "evolution": evolution_s, "near_budget": near_s},
        }
        logger.info(f"RULE: {len(units)} selections estimated; chosen estimate {best_estimate:.4f}, subset "
                    f"{ESTIMATOR_METRIC} {actual:.4f}; training {'reused' if training_reused else 'trained'}, "
                    f"pairs {'reused' if pairs_reused else 'evaluated'}")
        return Selection(sizes, state, valid, search,
                         {"pretrain": train_s, "search": pairs_s + estimator_s + evolution_s + near_s, "retrain": 0.0},
                         keep=keep)
