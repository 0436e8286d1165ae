"""Masks on a stock RecBole model's user/item ``nn.Embedding`` tables.

Row ``n`` of a table keeps its first ``size_n`` entries (a prefix: BET, ES, MR, ESAPN), or, for pruning
methods (PEP, SSEDS, RULE), any ``size_n`` of its entries given by a boolean keep-mask. Two invariants make every read of
``table.weight`` -- direct (LightGCN, NGCF) or through the module (NeuMF, BPR) -- see the masked table
``W * M`` without touching the model's code and without multiplying the whole table on every read:

1. masked entries of the weight are exactly 0: ``set_sizes`` and every load through
   ``load_plain_state_dict`` zero them;
2. masked entries get exactly 0 gradient, so that with fresh optimiser state Adam, SGD, Adagrad and
   RMSprop never move them (weight decay of 0 is 0).

Invariant 2 is kept in one of two ways per table, chosen by watching the first training steps:

- ``lookup``: the table is only read through its module (``embedding(ids)``, NeuMF, BPR). A forward hook
  puts a gradient hook on each lookup's output that multiplies the gradient of each looked-up row by its
  mask row, so masked entries get no gradient, at a cost proportional to the batch. Multiplying the whole table's gradient instead costs a pass over
  every table per optimiser step, as much as a sixth of Adam's own work: NeuMF epochs on Gowalla were
  1.63x the stock time that way (results/perf.md of that run).
- ``direct``: ``.weight`` is also read directly with gradients on (LightGCN, NGCF propagate the whole
  table). A gradient hook multiplies the table's gradient by ``M``; next to the graph propagation that
  pass is small.

Every table starts ``auto``: forward hook on, and for the first ``VERIFY_STEPS`` backward passes after each
mask change the gradient hook checks that the gradient on masked entries is exactly zero (and masks it
anyway). Any gradient there, or a backward pass with no lookup through the module, means a direct
read, and the table is ``direct`` from then on; ``lookup`` after the checks pass.

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

# Backward passes checked after each mask change before a table read only through its module is trusted
# to need no gradient masking.
VERIFY_STEPS = 3


class TableMask:
    """The 0/1 mask of one table, and the hooks that apply it (see the module docstring)."""

    def __init__(self, weight: nn.Parameter, module: nn.Embedding | None = None):
        self.weight = weight
        self.mask = torch.ones_like(weight, requires_grad=False)
        self.full = True  # every entry kept: the hooks and zeroing can be skipped
        self.mode = "auto" if module is not None else "direct"
        self._to_verify = VERIFY_STEPS
        self._lookups = 0  # module forwards with gradients on since the last backward
        self.version = 0  # bumped on every mask change (seed_masked_moments watches it)
        weight.register_hook(self._mask_grad)
        if module is not None:
            module.register_forward_hook(self._mask_lookup)
        weight._bet_mask = self  # found again by load_plain_state_dict

    def _mask_lookup(self, module, inputs, output):
        # The looked-up values are already masked (invariant 1); only their gradient needs the mask.
        if self.full or self.mode == "direct" or not output.requires_grad:
            return
        self._lookups += 1
        ids, mask = inputs[0], self.mask
        output.register_hook(lambda grad: grad * nn.functional.embedding(ids, mask))  # 7x faster than mask[ids]

    def _mask_grad(self, grad: torch.Tensor) -> torch.Tensor:
        lookups, self._lookups = self._lookups, 0
        if self.full or self.mode == "lookup":
            return grad
        masked = grad * self.mask
        if self.mode == "auto":
            leaked = lookups == 0 or bool(torch.any((grad != 0) & (self.mask == 0)))
            if leaked:
                self.mode = "direct"
            else:
                self._to_verify -= 1
                if self._to_verify <= 0:
                    self.mode = "lookup"
        return masked

    def _changed(self) -> None:
        self.full = False
        self.version += 1
        if self.mode == "lookup":  # new rows are masked: check again that no gradient reaches them
            self.mode = "auto"
        if self.mode == "auto":
            self._to_verify = VERIFY_STEPS
        self.apply()

    def set_sizes(self, sizes: torch.Tensor) -> None:
        cols = torch.arange(self.mask.shape[1], device=self.mask.device)
        self.mask.copy_((cols[None, :] < sizes.to(self.mask.device)[:, None]).to(self.mask.dtype))
        self._changed()

    def set_elements(self, keep: torch.Tensor) -> None:
        """Keep exactly the entries where ``keep`` (rows x width, bool) is true."""
        self.mask.copy_(keep.to(self.mask.device, self.mask.dtype))
        self._changed()

    def set_full(self) -> None:
        self.mask.fill_(1.0)
        self.full = True
        self.version += 1

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
                TableMask(t.module.weight, t.module)
        self.sizes = None
        self.keep = None  # (n_users + n_items, d_max) bool for element masks; None for prefixes
        self.set_full()

    def modes(self) -> dict:
        """How each table's gradient is masked: table name -> "auto", "lookup" or "direct"."""
        return {t.name: t.module.weight._bet_mask.mode for t in self.tables}

    def _masks(self, entity):
        return [t.module.weight._bet_mask for t in self.tables if t.entity == entity]

    def set_full(self) -> None:
        """Every row, padding included, at full width: the stock model. Entries zeroed by an earlier
        action stay 0 until weights are loaded again."""
        for t in self.tables:
            t.module.weight._bet_mask.set_full()
        self.sizes = None
        self.keep = None

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
        self.keep = None
        forget_cached_embeddings(self.model)

    def set_elements(self, keep) -> None:
        """Apply an element mask: ``keep`` is (n_users + n_items, d_max) bool, users then items; every
        table of an entity keeps the same entries; the padding row keeps none. sizes become the row counts."""
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != (self.n_users + self.n_items, self.d_max):
            raise ValueError(f"expected a keep mask of shape {(self.n_users + self.n_items, self.d_max)}, got {keep.shape}")
        pad = np.zeros((1, self.d_max), dtype=bool)
        per_entity = {
            "user": torch.from_numpy(np.concatenate([pad, keep[: self.n_users]])),
            "item": torch.from_numpy(np.concatenate([pad, keep[self.n_users:]])),
        }
        for entity, rows in per_entity.items():
            for mask in self._masks(entity):
                mask.set_elements(rows)
        self.sizes = keep.sum(axis=1).astype(np.int64)
        self.keep = keep.copy()
        forget_cached_embeddings(self.model)

    def load(self, state: dict, sizes=None, keep=None) -> None:
        """Switch to an action and load weights for it: masks first (``keep`` if given, else prefixes of
        ``sizes``, else full width), then the weights, masked. Loading first would mask the new weights
        with the previous action's masks and lose the values between the two."""
        if keep is not None:
            self.set_elements(keep)
        elif sizes is None:
            self.set_full()
        else:
            self.set_sizes(sizes)
        load_plain_state_dict(self.model, state)

    def row_keep(self, entity: str) -> np.ndarray | None:
        """Element mask of one entity's tables, padding row included; None for prefix masks or full width."""
        if self.keep is None:
            return None
        part = self.keep[: self.n_users] if entity == "user" else self.keep[self.n_users:]
        return np.concatenate([np.zeros((1, self.d_max), dtype=bool), part])

    def row_sizes(self, entity: str) -> np.ndarray:
        """Per-row sizes of one entity's tables, padding row (size 0) included."""
        if self.sizes is None:
            n = self.n_users if entity == "user" else self.n_items
            return np.full(n + 1, self.d_max, dtype=np.int64)
        part = self.sizes[: self.n_users] if entity == "user" else self.sizes[self.n_users:]
        return np.concatenate([[0], part]).astype(np.int64)


# Second moment given to masked entries, and the smallest it may decay to before it is set again: well clear
# of float32's subnormals, which are slow too.
MOMENT_SEED, MOMENT_FLOOR = 1.0, 1e-20


def seed_masked_moments(optimizer: torch.optim.Optimizer) -> None:
    """Hold Adam's second moment of masked entries at a positive value instead of exactly 0.

    Why: masked entries get zero gradients, so their second moments stay 0, and torch's CPU ``sqrt`` is
    several times slower on zeros than on other values (docs/performance.md): the unfused Adam's steps on a
    masked table cost more than on the stock one.

    Exact: a masked entry's weight and gradient are 0 (invariants 1 and 2), so while its first moment is 0 its
    update is 0 whatever its second moment. Only entries with both moments 0 are seeded; before the first
    step after any mask change every seeded entry gets back the 0 the stock optimiser holds there, and the
    seed is renewed before ``beta2 ** steps`` takes it to ``MOMENT_FLOOR``. Other optimisers, and Adam groups
    with ``amsgrad``, are left alone.
    """
    if not isinstance(optimizer, torch.optim.Adam):
        return
    watched = [_SeededTable(p, p._bet_mask, group["betas"][1]) for group in optimizer.param_groups
               if not group["amsgrad"] and 0 < group["betas"][1] < 1
               for p in group["params"] if hasattr(p, "_bet_mask")]

    def before_step(opt, args, kwargs):
        for table in watched:
            table.before_step(opt.state)

    if watched:
        optimizer.register_step_pre_hook(before_step)


class _SeededTable:
    def __init__(self, param: nn.Parameter, mask: TableMask, beta2: float):
        self.param, self.mask = param, mask
        self.renew_every = max(1, int(np.log(MOMENT_FLOOR / MOMENT_SEED) / np.log(beta2)))
        self.seeded = None  # bool tensor: entries holding the seed
        self.version = self.steps = 0

    @torch.no_grad()
    def before_step(self, state: dict) -> None:
        moments = state.get(self.param)
        if not moments or "exp_avg_sq" not in moments:  # Adam builds its state on the first step
            return
        second = moments["exp_avg_sq"]
        if self.seeded is not None and self.version != self.mask.version:
            second.masked_fill_(self.seeded, 0.0)
            self.seeded = None
        if self.seeded is None:
            if self.mask.full:
                return
            self.seeded = (self.mask.mask == 0) & (moments["exp_avg"] == 0) & (second == 0)
            self.version, self.steps = self.mask.version, 0
            second.masked_fill_(self.seeded, MOMENT_SEED)
        else:
            self.steps += 1
            if self.steps >= self.renew_every:
                second.masked_fill_(self.seeded, MOMENT_SEED)
                self.steps = 0


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


def per_entity(masked, per_table: dict) -> np.ndarray:
    """(n_entities x d_max) from one (rows x d_max) array per table, padding row dropped; an entity's
    tables (NeuMF has two) share one mask, so their arrays are averaged."""
    parts = []
    for entity in ("user", "item"):
        arrays = [per_table[t.name][1:] for t in masked.tables if t.entity == entity]
        parts.append(np.mean(arrays, axis=0))
    return np.concatenate(parts)


def magnitudes(masked, state: dict) -> np.ndarray:
    """|w| of every entry of the user/item tables in ``state`` (n_entities x d_max; an entity's tables, NeuMF's
    two, averaged as for SSEDS's saliency)."""
    return per_entity(masked, {t.name: np.abs(state[f"{t.name}.weight"].cpu().numpy()) for t in masked.tables})
