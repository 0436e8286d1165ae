"""OptEmbed (Lyu et al., CIKM 2022) under the shared budget: a supernet, an evolutionary search, retraining.

1. Supernet: the model trains at d_max; on every batch each group of users and each group of items (groups by
   training frequency) uses a random prefix width, so that every width is trained, and (``optembed_thresholds``)
   each side has a learnable threshold on the mean absolute value of its rows: a row below it is pruned.
2. Search: genes are one width per group; a candidate's fitness is the supernet's validation quality with
   those widths (pruned rows at ``d_min``), no training; mutation and crossover, every candidate repaired into
   the budget.
3. The best candidate found is retrained from scratch to convergence.

Sizes are prefixes, so the artifact stores no column index. The adaptations are in docs/methods.md.
"""
from __future__ import annotations

from logging import getLogger
from time import perf_counter

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from recbole_bet.budget import fill_by_frequency
from recbole_bet.masking import plain_state_dict
from recbole_bet.methods.base import Method, Selection
from recbole_bet.training import quality


# ------------------------------------------------------------------------------------------- groups

def frequency_groups(freq: np.ndarray, n_groups: int) -> np.ndarray:
    """Group index of each entity of one side: min(G, n) near-equal groups of consecutive training-frequency
    rank, group 0 the most frequent (ties: lower id first)."""
    order = np.argsort(-np.asarray(freq), kind="stable")
    group = np.empty(len(order), dtype=np.int64)
    for g, members in enumerate(np.array_split(order, min(n_groups, len(order)))):
        group[members] = g
    return group


class WidthSpace:
    """The search space: one prefix width per group (user groups first). Pruned rows (below their side's
    learned threshold) keep ``d_min`` whatever their group's width."""

    def __init__(self, budget, user_group: np.ndarray, item_group: np.ndarray, pruned: np.ndarray):
        self.budget = budget
        self.n_user_groups = int(user_group.max()) + 1
        self.group_of = np.concatenate([user_group, item_group + self.n_user_groups])
        self.n_groups = int(self.group_of.max()) + 1
        self.pruned = np.asarray(pruned, dtype=bool)
        # members whose size follows the group's width; pruned members cost d_min whatever the width
        self.active = np.bincount(self.group_of[~self.pruned], minlength=self.n_groups)
        self.fixed_units = int(self.pruned.sum()) * budget.d_min

    def units(self, widths: np.ndarray) -> int:
        return int(self.active @ np.asarray(widths, dtype=np.int64)) + self.fixed_units

    def sizes(self, widths: np.ndarray) -> np.ndarray:
        sizes = np.asarray(widths, dtype=np.int64)[self.group_of]
        sizes[self.pruned] = self.budget.d_min
        return sizes

    def random(self, rng) -> np.ndarray:
        """Widths uniform in [d_min, d_max] per group (the paper's random candidates), repaired."""
        return self.repair(rng.integers(self.budget.d_min, self.budget.d_max + 1, size=self.n_groups))

    def repair(self, widths: np.ndarray) -> np.ndarray:
        """The candidate itself if it fits the budget; otherwise every width's excess over d_min shrunk by one
        common factor (the largest that fits: the candidate's shape is kept), then the units left handed back,
        one per member of a group at a time, largest lost fraction first, while they fit: no group that was cut
        could take one more unit."""
        b = self.budget
        widths = np.clip(np.asarray(widths, dtype=np.int64), b.d_min, b.d_max)
        if self.units(widths) <= b.budget_units:
            return widths
        excess = (widths - b.d_min).astype(np.float64)
        low, high = 0.0, 1.0  # units(d_min + floor(f * excess)) grows with f; f = 0 fits (budget feasible)
        for _ in range(60):
            mid = 0.5 * (low + high)
            if self.units(b.d_min + np.floor(mid * excess).astype(np.int64)) <= b.budget_units:
                low = mid
            else:
                high = mid
        repaired = b.d_min + np.floor(low * excess).astype(np.int64)
        lost = low * excess - np.floor(low * excess)
        room = b.budget_units - self.units(repaired)
        order, grew = np.argsort(-lost, kind="stable"), True
        while grew:  # until no group that was cut can take one more unit per member
            grew = False
            for g in order:
                if repaired[g] < widths[g] and self.active[g] <= room:
                    repaired[g] += 1
                    room -= self.active[g]
                    grew = True
        return repaired

    def mutate(self, parent: np.ndarray, prob: float, rng) -> np.ndarray:
        """Each gene redrawn uniformly in [d_min, d_max] with probability ``prob``; at least one gene changes
        (a copy of the parent would only be evaluated again)."""
        child = parent.copy()
        redraw = rng.random(self.n_groups) < prob
        redraw[rng.integers(self.n_groups)] = True
        child[redraw] = rng.integers(self.budget.d_min, self.budget.d_max + 1, size=int(redraw.sum()))
        return self.repair(child)

    def crossover(self, a: np.ndarray, b: np.ndarray, rng) -> np.ndarray:
        """Single-point crossover: the first genes of ``a``, the rest of ``b``."""
        point = int(rng.integers(1, self.n_groups)) if self.n_groups > 1 else 1
        return self.repair(np.concatenate([a[:point], b[point:]]))


# ------------------------------------------------------------------------------------------ supernet

class LongTailStep(torch.autograd.Function):
    """Unit step forward; backward, the long-tailed estimate of its derivative that OptEmbed takes from
    dynamic sparse training: 2 - 4|x| within 0.4 of the step, 0.4 up to 1, 0 beyond."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        a = x.abs()
        slope = torch.where(a <= 0.4, 2 - 4 * a, torch.where(a <= 1, torch.full_like(a, 0.4), torch.zeros_like(a)))
        return grad * slope


def row_scores(weight: torch.Tensor) -> torch.Tensor:
    """Mean |v| of each row, relative to the table's mean (held constant for the gradient): a threshold of 1
    is the average row, whatever the scale of the embeddings."""
    magnitude = weight.abs().mean(dim=1)
    return magnitude / magnitude[1:].mean().detach().clamp_min(1e-12)


class SupernetMask(nn.Module):
    """Reparameterisation of one table for the supernet: W -> W * prefix(width of the row's group) * row gate.

    In training mode, each row keeps the prefix of its group's current width (redrawn per batch by
    ``draw``); in evaluation mode the full width (the paper evaluates its supernet at full width). The row
    gate is step(score - threshold) with ``threshold`` this side's learnable scalar, or 1 without thresholds.
    Row 0 (padding) is never masked."""

    def __init__(self, group_of_row: torch.Tensor, n_groups: int, d_max: int, threshold: nn.Parameter | None):
        super().__init__()
        self.register_buffer("group_of_row", group_of_row)
        self.register_buffer("widths", torch.full((n_groups,), d_max, dtype=torch.long))
        self.register_buffer("cols", torch.arange(d_max))
        self.threshold = threshold

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        out = weight
        if self.training:
            width = self.widths[self.group_of_row]
            width[0] = weight.shape[1]
            out = out * (self.cols[None, :] < width[:, None]).to(weight.dtype)
        if self.threshold is not None:
            gate = LongTailStep.apply(row_scores(weight) - self.threshold)
            gate = torch.cat([gate.new_ones(1), gate[1:]])
            out = out * gate[:, None]
        return out


class Supernet:
    """The supernet parametrisations on every user/item table, one threshold per side, and the per-batch
    width draw and threshold regulariser hooked into the model's loss."""

    def __init__(self, ctx, space_groups: tuple, thresholds: bool):
        self.ctx, self.masked = ctx, ctx.masked
        user_group, item_group = space_groups
        self.n_user_groups = int(user_group.max()) + 1
        self.n_item_groups = int(item_group.max()) + 1
        device = self.masked.tables[0].module.weight.device
        self.thresholds = {e: nn.Parameter(torch.full((), float(ctx.config["optembed_threshold_init"]),
                                                      device=device)) if thresholds else None
                           for e in ("user", "item")}
        pad = np.zeros(1, dtype=np.int64)  # the padding row's group: any, it is never masked
        rows = {"user": torch.from_numpy(np.concatenate([pad, user_group])).to(device),
                "item": torch.from_numpy(np.concatenate([pad, item_group])).to(device)}
        counts = {"user": self.n_user_groups, "item": self.n_item_groups}
        self.masks = {}
        for t in self.masked.tables:
            mask = SupernetMask(rows[t.entity], counts[t.entity], ctx.budget.d_max, self.thresholds[t.entity])
            self.masks[t.name] = mask.to(device)
        self.generator = torch.Generator().manual_seed(int(ctx.config["seed"]) + 29)
        self.alpha = float(ctx.config["optembed_threshold_alpha"])
        self.draws = 0

    def draw(self) -> None:
        """A random prefix width per group, uniform in [d_min, d_max], the same for every table of a side."""
        b = self.ctx.budget
        widths = {e: torch.randint(b.d_min, b.d_max + 1, (n,), generator=self.generator)
                  for e, n in (("user", self.n_user_groups), ("item", self.n_item_groups))}
        for t in self.masked.tables:
            self.masks[t.name].widths.copy_(widths[t.entity])
        self.draws += 1

    def train(self) -> dict:
        """Train to convergence with the masks in place (RecBole's trainer, early stopping on full-width
        validation); returns that validation. The stock tables come back, unparametrised, whatever happens."""
        model, masked = self.ctx.model, self.masked
        masked.set_full()
        for t in masked.tables:
            parametrize.register_parametrization(t.module, "weight", self.masks[t.name])
        stock_loss = model.calculate_loss
        thresholds = [t for t in self.thresholds.values() if t is not None]

        def loss_with_supernet(interaction):
            self.draw()
            loss = stock_loss(interaction)
            if not thresholds or self.alpha == 0:
                return loss
            reg = self.alpha * torch.stack([torch.exp(-t) for t in thresholds]).sum()  # pushes thresholds up
            return (*loss, reg) if isinstance(loss, tuple) else loss + reg

        model.calculate_loss = loss_with_supernet  # an instance attribute: the stock class is untouched
        try:
            return self.ctx.train_to_convergence("optembed supernet")
        finally:
            del model.calculate_loss
            for t in masked.tables:
                if parametrize.is_parametrized(t.module, "weight"):
                    parametrize.remove_parametrizations(t.module, "weight", leave_parametrized=False)

    @torch.no_grad()
    def pruned_rows(self, state: dict) -> np.ndarray:
        """Users then items whose row score, averaged over the entity's tables, is below its side's threshold
        (none without thresholds)."""
        parts = []
        for entity, n in (("user", self.masked.n_users), ("item", self.masked.n_items)):
            threshold = self.thresholds[entity]
            if threshold is None:
                parts.append(np.zeros(n, dtype=bool))
                continue
            scores = [row_scores(state[f"{t.name}.weight"]) for t in self.masked.tables if t.entity == entity]
            parts.append((torch.stack(scores).mean(dim=0)[1:] <= threshold).cpu().numpy())
        return np.concatenate(parts)

    def threshold_values(self) -> dict:
        return {e: (None if t is None else float(t.detach())) for e, t in self.thresholds.items()}


# -------------------------------------------------------------------------------------------- search

def evolve(space: WidthSpace, fitness, population: int, generations: int, mutation_prob: float, rng):
    """The paper's search: a random population, then per generation every member evaluated, the better half
    the parents of the next population (half mutations, half single-point crossovers). Every candidate is
    repaired into the budget. Returns (best widths, its fitness, every evaluated candidate with its fitness in
    order, best fitness after each generation)."""
    seen = {}  # widths -> fitness: a candidate met again is not evaluated again
    evaluated, history = [], []
    members = [space.random(rng) for _ in range(population)]
    for generation in range(generations):
        scores = []
        for widths in members:
            key = tuple(int(w) for w in widths)
            if key not in seen:
                seen[key] = fitness(widths)
                evaluated.append((widths, seen[key]))
            scores.append(seen[key])
        history.append(max(score for _, score in evaluated))
        if generation == generations - 1:
            break
        order = np.argsort(-np.asarray(scores), kind="stable")
        parents = [members[i] for i in order[: max(1, population // 2)]]
        n_mutations = population // 2
        children = [space.mutate(parents[i % len(parents)], mutation_prob, rng) for i in range(n_mutations)]
        for _ in range(population - n_mutations):
            a, b = rng.integers(len(parents), size=2)
            children.append(space.crossover(parents[a], parents[b], rng))
        members = children
    best, best_score = max(evaluated, key=lambda item: item[1])  # ties: the first evaluated
    return best, float(best_score), evaluated, history


class OptEmbed(Method):
    """OptEmbed: supernet with random group widths and learnable row thresholds, evolutionary search over the
    group widths on validation, retraining from scratch."""

    name = "optembed"

    def select(self, ctx) -> Selection:
        config, b, masked, logger = ctx.config, ctx.budget, ctx.masked, getLogger()
        groups = config["optembed_groups"]
        user_group, item_group = frequency_groups(ctx.user_freq, groups), frequency_groups(ctx.item_freq, groups)
        start = perf_counter()
        ctx.reseed()
        masked.load(ctx.init_state)
        supernet = Supernet(ctx, (user_group, item_group), bool(config["optembed_thresholds"]))
        logger.info(f"OptEmbed: training the supernet ({supernet.n_user_groups} user and {supernet.n_item_groups} "
                    f"item groups, thresholds {'on' if config['optembed_thresholds'] else 'off'}) to convergence")
        supernet_valid = supernet.train()
        state = plain_state_dict(ctx.model)
        pruned = supernet.pruned_rows(state)
        supernet_s = perf_counter() - start

        start = perf_counter()
        space = WidthSpace(b, user_group, item_group, pruned)  # all at d_min fits: the budget was checked

        def fitness(widths) -> float:
            sizes = space.sizes(widths)
            if not b.fits(sizes):
                raise RuntimeError(f"OptEmbed: a repaired candidate keeps {b.kept_params(sizes)} parameters, "
                                   f"over the budget of {b.budget_params}")
            masked.load(state, sizes)
            return quality(ctx.evaluate(ctx.valid_data))

        rng = np.random.default_rng([config["seed"], 31])
        best, best_fitness, evaluated, history = evolve(
            space, fitness, config["optembed_population"], config["optembed_generations"],
            float(config["optembed_mutation_prob"]), rng)
        # the chosen widths may leave part of the budget unused (a candidate under budget is kept as drawn, and a
        # repaired one can only move whole groups): the rest goes to the most frequent rows
        unfilled = space.sizes(best)
        sizes = fill_by_frequency(unfilled, b, np.concatenate([ctx.user_freq, ctx.item_freq]))
        search_s = perf_counter() - start
        logger.info(f"OptEmbed: {len(evaluated)} candidates evaluated on the supernet, best quality "
                    f"{best_fitness:.4f}; {int(pruned.sum())} rows pruned to d_min; retraining from scratch")
        state, valid, retrain_s = ctx.train_from_scratch(sizes, label="optembed retrain")
        n_users = b.n_users
        search = {
            "groups": {"users": space.n_user_groups, "items": space.n_groups - space.n_user_groups,
                       "grouping": "frequency"},
            "thresholds": supernet.threshold_values(),
            "threshold_alpha": float(config["optembed_threshold_alpha"]),
            "pruned_users": int(pruned[:n_users].sum()), "pruned_items": int(pruned[n_users:].sum()),
            "supernet_valid_ndcg@20": float(supernet_valid.get("ndcg@20", float("nan"))),
            "supernet_width_draws": supernet.draws,
            "evolution": {"population": config["optembed_population"],
                          "generations": config["optembed_generations"],
                          "mutation_prob": float(config["optembed_mutation_prob"]),
                          "evaluated": len(evaluated), "best_fitness_per_generation": history},
            "max_candidate_kept_params": max(space.units(w) for w, _ in evaluated) * b.tables_per_entity,
            "chosen": {"widths_users": [int(w) for w in best[:space.n_user_groups]],
                       "widths_items": [int(w) for w in best[space.n_user_groups:]],
                       "supernet_fitness": best_fitness},
            "kept_units_users": int(sizes[:n_users].sum()), "kept_units_items": int(sizes[n_users:].sum()),
            "filled_units": int(sizes.sum() - unfilled.sum()),
            "seconds": {"supernet": supernet_s, "evolution": search_s},
        }
        return Selection(sizes, state, valid, search,
                         {"pretrain": supernet_s, "search": search_s, "retrain": retrain_s})
