"""Size baselines that look at no data: equal sizes (ES) and mixed random sizes (MR)."""
from __future__ import annotations

import numpy as np

from recbole_bet.budget import allocate_sorted, equal_sizes
from recbole_bet.methods.base import SizeBaseline


class EqualSizes(SizeBaseline):
    """ES: every row the same size, the largest that fits."""

    name = "es"

    def propose(self, ctx):
        return equal_sizes(ctx.budget)


class MixedRandom(SizeBaseline):
    """MR: sizes drawn uniformly from {d_min..d_max}, scaled down to fit, assigned at random."""

    name = "mr"

    def propose(self, ctx):
        b = ctx.budget
        rng = np.random.default_rng(ctx.config["seed"])
        draws = rng.integers(b.d_min, b.d_max + 1, size=b.n_entities)
        if draws.sum() > b.budget_units:
            order = np.argsort(-draws, kind="stable")  # proportional scaling keeps each entity's rank
            scaled = allocate_sorted(draws[order][None, :].astype(np.float64), np.array([b.budget_units]),
                                     b.d_min, b.d_max)[0]
            draws = np.empty_like(draws)
            draws[order] = scaled
        return draws.astype(np.int64)
