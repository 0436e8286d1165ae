"""The interface of every size-search method: ``select(ctx) -> Selection`` under ``ctx.budget``.

Every method returns the sizes it chose (within the budget, unless the selection says the budget was not
applied) and the weights trained with them; the pipeline tests, exports and reports all methods the same way.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from time import perf_counter

import numpy as np

# where a resumable method checkpoints its progress inside the run's output_dir
CHECKPOINT_FILENAME = "checkpoint.pt"


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
    resumable = False  # True: checkpoints its progress at ctx.checkpoint_path and can continue from it

    @classmethod
    def uses_element_masks(cls, config) -> bool:
        """Whether this run's rows keep any entries (its artifact stores their columns), not a prefix."""
        return cls.element_masks

    def plot_search(self, path: str, search: dict | None, title: str, budget) -> bool:
        """Write a picture of this method's trajectory (``search.png``) from its report's ``search``; False if
        it has none worth a picture (the default)."""
        return False

    def check_budgets(self, ctx, budgets) -> None:
        """Raise BadInput for any budget this method cannot meet, before anything is trained (a sparsity
        list checks all of its budgets first). Most methods meet any budget the sizes can."""

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


def kept_summary(budget, keep: np.ndarray) -> dict:
    """What an element mask kept, for the report's "search" of the pruning methods."""
    n_users = budget.n_users
    return {"kept_units_users": int(keep[:n_users].sum()), "kept_units_items": int(keep[n_users:].sum()),
            "rows_at_d_max": int((keep.sum(axis=1) == budget.d_max).sum())}
