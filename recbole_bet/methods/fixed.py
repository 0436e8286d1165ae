"""Size baselines that look at no data: equal sizes (ES) and mixed random sizes (MR)."""
from __future__ import annotations

import numpy as np

from time import perf_counter

from recbole_bet.budget import allocate_sorted, equal_sizes, split_equal_sizes
from recbole_bet.methods.base import Selection, SizeBaseline
from recbole_bet.pretrain import pretrained


class EqualSizes(SizeBaseline):
    """ES: every row the same size, the largest that fits; with ``es_user_share``, one size for the users and
    one for the items, the users holding that share of the budget."""

    name = "es"

    def propose(self, ctx):
        if ctx.config["es_user_share"] is not None:
            return split_equal_sizes(ctx.budget, ctx.config["es_user_share"], ctx.user_freq, ctx.item_freq)
        if ctx.config["es_fill"] == "frequency":
            return equal_sizes(ctx.budget, ctx.user_freq, ctx.item_freq)
        return equal_sizes(ctx.budget)

    def select(self, ctx) -> Selection:
        """``es_init: scratch`` trains from a fresh initialisation (ES as published); ``pretrained`` ("es-warm",
        the control for SSEDS's warm start) starts from the cached full-width model's first columns and
        trains them like SSEDS's retraining."""
        if ctx.config["es_init"] != "pretrained":
            return super().select(ctx)
        pre_state, _, pretrain_s = pretrained(ctx)
        start = perf_counter()
        sizes = self.propose(ctx)
        search_s = perf_counter() - start
        state, valid, retrain_s = ctx.train_from(pre_state, sizes, label="es retrain from pretrained")
        return Selection(sizes, state, valid, {"init": "pretrained"},
                         {"pretrain": pretrain_s, "search": search_s, "retrain": retrain_s})


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
