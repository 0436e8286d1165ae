"""Size-search methods behind one interface: ``select(ctx) -> Selection`` under ``ctx.budget``.

Every method returns the sizes it chose (within the budget, unless the selection says the budget was not
applied) and the weights trained with them; the pipeline tests, exports and reports all methods the same way.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from time import perf_counter

import numpy as np

from recbole_bet.budget import allocate_sorted, equal_sizes


@dataclass
class Selection:
    sizes: np.ndarray  # users then items, no padding row
    state: dict  # trained weights in the stock layout
    valid: dict  # validation metrics of those weights
    search: dict | None = None  # method-specific summary for the report (SPEC "search")
    timings: dict = field(default_factory=dict)  # seconds: pretrain, search, retrain
    keep: np.ndarray | None = None  # element mask (n_entities x d_max) of pruning methods; None: prefixes
    # False only for a method run that by design ignores the budget (esapn_budget=none): its sizes may exceed
    # budget_params, and the report says so instead of the run failing
    budget_applied: bool = True


class Method(ABC):
    name = ""
    element_masks = False  # True: rows keep any entries (Selection.keep), exported with a column index

    @abstractmethod
    def select(self, ctx) -> Selection:
        """Choose sizes within ctx.budget and train the model with them."""


class SizeBaseline(Method):
    """A baseline that proposes sizes without looking at the data, then trains from scratch."""

    @abstractmethod
    def propose(self, ctx) -> np.ndarray:
        """Sizes for every user and item (users then items) within ctx.budget."""

    def select(self, ctx) -> Selection:
        start = perf_counter()
        sizes = self.propose(ctx)
        search_s = perf_counter() - start
        state, valid, retrain_s = ctx.train_from_scratch(sizes)
        return Selection(sizes, state, valid, None, {"pretrain": 0.0, "search": search_s, "retrain": retrain_s})


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


def get_method(name: str) -> Method:
    if name == "bet":
        from recbole_bet.search.bet import BET

        return BET()
    if name in ("pep", "sseds"):
        from recbole_bet.pruning import PEP, SSEDS

        return {"pep": PEP, "sseds": SSEDS}[name]()
    if name == "esapn":
        from recbole_bet.esapn import ESAPN

        return ESAPN()
    if name == "rule":
        from recbole_bet.rule import RULE

        return RULE()
    return {"es": EqualSizes, "mr": MixedRandom}[name]()
