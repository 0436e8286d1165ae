"""Row-prefix masks on a stock RecBole model's user/item ``nn.Embedding`` tables.

Every read of ``table.weight`` goes through ``torch.nn.utils.parametrize``, so models that read
``.weight`` directly (LightGCN, NGCF) and models that call the module (NeuMF, BPR) both see
``W * M``, where row ``n`` of ``M`` has ones in its first ``size_n`` entries. Masked entries read as
exactly 0 and get exactly 0 gradient. The model's code is not touched.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from recbole_bet.errors import BadInput

_ORIGINAL = ".parametrizations.weight.original"


class RowPrefixMask(nn.Module):
    """Parametrization W -> W * mask, with mask[n, :size_n] = 1 and 0 elsewhere."""

    def __init__(self, num_rows: int, width: int, device=None):
        super().__init__()
        # not persistent: sizes travel in reports/artifacts, state dicts stay in the stock layout
        self.register_buffer("mask", torch.ones(num_rows, width, device=device), persistent=False)

    def set_sizes(self, sizes: torch.Tensor) -> None:
        cols = torch.arange(self.mask.shape[1], device=self.mask.device)
        self.mask.copy_((cols[None, :] < sizes.to(self.mask.device)[:, None]).to(self.mask.dtype))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


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
            if not parametrize.is_parametrized(t.module, "weight"):
                mask = RowPrefixMask(t.module.num_embeddings, d_max, device=t.module.weight.device)
                parametrize.register_parametrization(t.module, "weight", mask, unsafe=True)
        self.sizes = None
        self.set_full()

    def _masks(self, entity):
        return [t.module.parametrizations.weight[0] for t in self.tables if t.entity == entity]

    def set_full(self) -> None:
        """Every row, padding included, at full width: the stock model."""
        for t in self.tables:
            t.module.parametrizations.weight[0].mask.fill_(1.0)
        self.sizes = None

    def set_sizes(self, sizes) -> None:
        """Apply one action: ``sizes`` lists users then items (no padding row); padding gets size 0."""
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

    def row_sizes(self, entity: str) -> np.ndarray:
        """Per-row sizes of one entity's tables, padding row (size 0) included."""
        if self.sizes is None:
            n = self.n_users if entity == "user" else self.n_items
            return np.full(n + 1, self.d_max, dtype=np.int64)
        part = self.sizes[: self.n_users] if entity == "user" else self.sizes[self.n_users:]
        return np.concatenate([[0], part]).astype(np.int64)


def plain_state_dict(model: nn.Module) -> dict:
    """The model's state dict in the stock layout (``x.weight`` rather than the parametrized key), cloned."""
    return {k.replace(_ORIGINAL, ".weight"): v.detach().clone() for k, v in model.state_dict().items()}


def load_plain_state_dict(model: nn.Module, state: dict) -> None:
    """Load a stock-layout state dict into a model whose tables may be parametrized."""
    own = model.state_dict()
    mapped = {}
    for key, value in state.items():
        alt = key[: -len(".weight")] + _ORIGINAL if key.endswith(".weight") else None
        mapped[alt if alt in own else key] = value
    model.load_state_dict(mapped)
