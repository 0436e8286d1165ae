"""Row-prefix masks on a stock RecBole model's user/item ``nn.Embedding`` tables.

Row ``n`` of a table keeps its first ``size_n`` entries. Two invariants make every read of
``table.weight`` -- direct (LightGCN, NGCF) or through the module (NeuMF, BPR) -- see the masked table
``W * M`` without touching the model's code and without multiplying the whole table on every read:

1. masked entries of the weight are exactly 0: ``set_sizes`` and every load through
   ``load_plain_state_dict`` zero them;
2. masked entries get exactly 0 gradient: a hook on the parameter multiplies its gradient by ``M``.
   With zero gradient and fresh optimiser state, Adam, SGD, Adagrad and RMSprop never move them
   (weight decay of 0 is 0).

(A ``torch.nn.utils.parametrize`` mask computes ``W * M`` for the whole table on every read and its
gradient on every backward: 9% slower NeuMF epochs on ml-100k, benchmarks/perf.py. ``torch.nn.utils.prune``
would not work at all: it refreshes ``.weight`` in a forward pre-hook, and LightGCN/NGCF never call
the module.)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from recbole_bet.errors import BadInput

class RowPrefixMask:
    """The 0/1 mask of one table, and the gradient hook that applies it."""

    def __init__(self, weight: nn.Parameter):
        self.weight = weight
        self.mask = torch.ones_like(weight, requires_grad=False)
        self.full = True  # every entry kept: the hook and zeroing can be skipped
        weight.register_hook(self._mask_grad)
        weight._bet_mask = self  # found again by load_plain_state_dict

    def _mask_grad(self, grad: torch.Tensor) -> torch.Tensor:
        return grad if self.full else grad * self.mask

    def set_sizes(self, sizes: torch.Tensor) -> None:
        cols = torch.arange(self.mask.shape[1], device=self.mask.device)
        self.mask.copy_((cols[None, :] < sizes.to(self.mask.device)[:, None]).to(self.mask.dtype))
        self.full = False
        self.apply()

    def set_full(self) -> None:
        self.mask.fill_(1.0)
        self.full = True

    @torch.no_grad()
    def apply(self) -> None:
        """Zero the masked entries of the weight (after sizes change or weights are loaded)."""
        if not self.full:
            self.weight.mul_(self.mask)


@dataclass
class Table:
    name: str  # module path inside the model, e.g. "user_mf_embedding"
    entity: str  # "user" or "item"
    module: nn.Embedding


def find_tables(model: nn.Module, n_users: int, n_items: int) -> list[Table]:
    """The model's user and item embedding tables (RecBole counts, padding row included).

    A table belongs to users if it has ``n_users`` rows (to items if ``n_items``); when both counts are
    equal, the module name decides ("user"/"item" in it).
    """
    tables = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Embedding):
            continue
        rows, lname = module.num_embeddings, name.lower()
        is_user, is_item = rows == n_users, rows == n_items
        if is_user and is_item:
            is_user, is_item = "user" in lname, "item" in lname
        if is_user and not is_item:
            tables.append(Table(name, "user", module))
        elif is_item and not is_user:
            tables.append(Table(name, "item", module))
    n_user_tables = sum(t.entity == "user" for t in tables)
    n_item_tables = sum(t.entity == "item" for t in tables)
    model_name = type(model).__name__
    if not tables:
        raise BadInput(
            f"model {model_name} has no user or item embedding tables to compress; "
            "choose a general recommender with nn.Embedding tables (e.g. LightGCN, NGCF, NeuMF, BPR)"
        )
    if n_user_tables != n_item_tables:
        raise BadInput(
            f"model {model_name} has {n_user_tables} user and {n_item_tables} item embedding tables; "
            "recbole-bet needs the same number of tables per user and per item"
        )
    return tables


def tables_per_entity(tables: list[Table]) -> int:
    return sum(t.entity == "user" for t in tables)


class MaskedTables:
    """Masks on all user/item tables of one model; ``set_sizes`` swaps the action in place."""

    def __init__(self, model: nn.Module, tables: list[Table], d_max: int):
        self.model, self.tables, self.d_max = model, tables, d_max
        self.n_users = next(t.module.num_embeddings for t in tables if t.entity == "user") - 1
        self.n_items = next(t.module.num_embeddings for t in tables if t.entity == "item") - 1
        for t in tables:
            if t.module.embedding_dim != d_max:
                raise BadInput(
                    f"table {t.name} of {type(model).__name__} is {t.module.embedding_dim} wide, not d_max={d_max}; "
                    "set the model's embedding width key (e.g. embedding_size) to d_max"
                )
            if not hasattr(t.module.weight, "_bet_mask"):
                RowPrefixMask(t.module.weight)
        self.sizes = None
        self.set_full()

    def _masks(self, entity):
        return [t.module.weight._bet_mask for t in self.tables if t.entity == entity]

    def set_full(self) -> None:
        """Every row, padding included, at full width: the stock model. Entries zeroed by an earlier
        action stay 0 until weights are loaded again."""
        for t in self.tables:
            t.module.weight._bet_mask.set_full()
        self.sizes = None

    def set_sizes(self, sizes) -> None:
        """Apply one action: ``sizes`` lists users then items (no padding row); padding gets size 0.
        Entries beyond each row's size are zeroed in place."""
        sizes = np.asarray(sizes, dtype=np.int64)
        if sizes.shape != (self.n_users + self.n_items,):
            raise ValueError(f"expected {self.n_users + self.n_items} sizes, got shape {sizes.shape}")
        zero = np.zeros(1, dtype=np.int64)
        per_entity = {
            "user": torch.from_numpy(np.concatenate([zero, sizes[: self.n_users]])),
            "item": torch.from_numpy(np.concatenate([zero, sizes[self.n_users:]])),
        }
        for entity, rows in per_entity.items():
            for mask in self._masks(entity):
                mask.set_sizes(rows)
        self.sizes = sizes.copy()
        forget_cached_embeddings(self.model)

    def load(self, state: dict, sizes=None) -> None:
        """Switch to an action and load weights for it: sizes first (None: full width), then the weights,
        masked to those sizes. Loading first would mask the new weights with the previous action's sizes
        and lose the values between the two."""
        if sizes is None:
            self.set_full()
        else:
            self.set_sizes(sizes)
        load_plain_state_dict(self.model, state)

    def row_sizes(self, entity: str) -> np.ndarray:
        """Per-row sizes of one entity's tables, padding row (size 0) included."""
        if self.sizes is None:
            n = self.n_users if entity == "user" else self.n_items
            return np.full(n + 1, self.d_max, dtype=np.int64)
        part = self.sizes[: self.n_users] if entity == "user" else self.sizes[self.n_users:]
        return np.concatenate([[0], part]).astype(np.int64)


def plain_state_dict(model: nn.Module) -> dict:
    """A cloned copy of the model's state dict (stock layout: masks add no keys)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def load_plain_state_dict(model: nn.Module, state: dict) -> None:
    """Load weights, then re-zero the masked entries of every masked table (invariant 1)."""
    model.load_state_dict(state)
    for param in model.parameters():
        mask = getattr(param, "_bet_mask", None)
        if mask is not None:
            mask.apply()
    forget_cached_embeddings(model)


# RecBole's graph models (LightGCN, NGCF, ...) and DMF cache the embeddings they rank with on the first
# full_sort_predict and drop the cache only in calculate_loss: after new weights or sizes, it is stale.
CACHED_EMBEDDINGS = ("restore_user_e", "restore_item_e", "restore_entity_e", "i_embedding")


def forget_cached_embeddings(model: nn.Module) -> None:
    """Drop cached full-ranking embeddings so that the next ranking uses the current weights and sizes."""
    for name in getattr(model, "other_parameter_name", ()):
        if name in CACHED_EMBEDDINGS:
            setattr(model, name, None)
