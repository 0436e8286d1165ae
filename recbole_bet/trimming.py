"""Fixed-mask trainings of LightGCN on only the columns some row keeps (``trim_columns``).

Why: under a budget most of the d_max columns are masked in every row (equal sizes at sparsity 0.9 keep 12 or 13
of ml-100k's 128), yet a LightGCN epoch costs in proportion to the width. LightGCN treats each column on its
own: propagation is a sparse product applied column by column, layers are averaged, a score sums the columns'
products, and Adam updates each entry by its own gradient. A column no row keeps is zero in every embedding and
gets a zero gradient, so leaving it out changes no kept weight's arithmetic, only the order in which the score's
sums round (as thread counts do). NGCF mixes columns through its weight matrices and NeuMF through its MLP and
predict layer: for them every column counts, and they train at full width.

The narrow model is RecBole's own LightGCN built at the width of the kept columns (``models.build_model``),
with its own masks; it trains, then its weights go back into the full model's kept columns.
"""
from __future__ import annotations

import numpy as np
import torch

from recbole_bet.masking import MaskedTables, find_tables, plain_state_dict
from recbole_bet.models import build_model, configure_width
from recbole_bet.scoring import scoring_spec
from recbole_bet.training import Scorer

TRIMMABLE_MODELS = frozenset({"LightGCN"})  # each column independent of the others (module docstring)


WIDTH_STEP = 16  # prefix widths round up to a multiple of this, so that BET's probes reuse a few narrow models


def kept_columns(d_max: int, sizes=None, keep=None) -> np.ndarray | None:
    """The columns to train on: those some row of an element mask ``keep`` keeps, or for prefix ``sizes`` the
    first max(sizes) rounded up to a multiple of ``WIDTH_STEP`` (columns every row masks cost a little and
    change nothing); None where that is every column, or nothing is fixed (full width)."""
    if keep is not None:
        columns = np.flatnonzero(np.asarray(keep, dtype=bool).any(axis=0))
    elif sizes is not None:
        columns = np.arange(min(d_max, -(-int(np.max(sizes)) // WIDTH_STEP) * WIDTH_STEP))
    else:
        return None
    return columns if 0 < len(columns) < d_max else None


class Trimmer:
    """Trains fixed-mask actions of one run's model on their kept columns, on narrow models built once per
    width (sharing the full model's graph)."""

    def __init__(self, config, train_dataset, masked: MaskedTables):
        self.config, self.dataset, self.masked = config, train_dataset, masked
        setting = config["trim_columns"]  # None where the config lacks the key (a model built by a RecBole script)
        self.enabled = (setting is None or bool(setting)) and type(masked.model).__name__ in TRIMMABLE_MODELS
        self._narrow: dict[int, MaskedTables] = {}
        self._scorers: dict[int, Scorer] = {}

    def columns(self, sizes=None, keep=None) -> np.ndarray | None:
        """The kept columns to train on, or None: train the full model as it is."""
        if not self.enabled or scoring_spec(self.masked.model) is not None:
            return None  # a model scored another way (RULE's block scoring) trains as it is
        return kept_columns(self.masked.d_max, sizes, keep)

    def narrow(self, width: int) -> MaskedTables:
        """A masked model ``width`` columns wide (built on first use: that draws initial weights, so call it
        before reseeding for the training)."""
        if width not in self._narrow:
            d_max = self.masked.d_max
            configure_width(self.config, width)
            try:
                model = build_model(self.config, self.dataset)
            finally:
                configure_width(self.config, d_max)
            full = self.masked.model
            for attr in ("norm_adj_matrix", "_bet_symmetric_adjacency"):  # one graph in memory, not one per width
                if hasattr(full, attr) and hasattr(model, attr):
                    setattr(model, attr, getattr(full, attr))
            self._narrow[width] = MaskedTables(model, find_tables(model, self.dataset.user_num,
                                                                  self.dataset.item_num), width)
        return self._narrow[width]

    def evaluate(self, narrow: MaskedTables, data) -> dict:
        """RecBole's full-ranking evaluation of a narrow model (a scorer per width, set up once)."""
        width = narrow.d_max
        if width not in self._scorers:
            self._scorers[width] = Scorer(self.config, narrow.model)
        return self._scorers[width].evaluate(data)

    def place(self, state: dict, sizes=None, keep=None, reseed=None) -> tuple[MaskedTables, np.ndarray | None]:
        """Load an action (prefix ``sizes`` or element mask ``keep``) and the weights ``state`` (full width, stock
        layout) where it trains: a narrow model as wide as its kept columns, or the full model where nothing can
        be trimmed. ``reseed`` is called in between, after any narrow model is built (building draws initial
        weights). Returns the masked tables that hold the action and its kept columns (None: the full model)."""
        columns = self.columns(sizes, keep)
        target = self.masked if columns is None else self.narrow(len(columns))
        if reseed is not None:
            reseed()
        if columns is None:
            target.load(state, sizes, keep)
            return target, None
        tables = {f"{t.name}.weight" for t in self.masked.tables}
        narrow_state = {k: v[:, torch.as_tensor(columns)] if k in tables else v for k, v in state.items()}
        target.load(narrow_state, None if keep is not None else sizes,
                    None if keep is None else np.asarray(keep, dtype=bool)[:, columns])
        return target, columns

    def widen(self, narrow_state: dict, columns: np.ndarray) -> dict:
        """A narrow model's state in the full model's layout: its tables in the kept columns, 0 elsewhere."""
        full = dict(narrow_state)
        index = torch.as_tensor(columns)
        for t in self.masked.tables:
            key = f"{t.name}.weight"
            table = torch.zeros(narrow_state[key].shape[0], self.masked.d_max, dtype=narrow_state[key].dtype,
                                device=narrow_state[key].device)
            table[:, index] = narrow_state[key]
            full[key] = table
        return full

    def write_back(self, narrow: MaskedTables, columns: np.ndarray, sizes=None, keep=None) -> None:
        """The narrow model's weights into the full model's kept columns (the others 0), under the action's
        masks: the full model then holds what the training reached."""
        self.masked.load(self.widen(plain_state_dict(narrow.model), columns), sizes, keep)
