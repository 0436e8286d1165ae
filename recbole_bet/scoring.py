"""Block scoring (RULE's Eq. 2) on a stock model, installed on the instance and recorded in the artifact.

Each ``d_max``-wide row is ``n_blocks`` blocks of width w. Eq. 2 scores an item against a user as
``max|B| / |B_j| * sum over the item's kept blocks n of u^T repeat(e_j(n))``: every kept item block meets the
whole user embedding through the user's block-sum. Written as a dot product of two transformed vectors:

- user side: ``repeat(sum of the user's blocks, n_blocks)`` (with ``mask_users``: of its kept blocks only,
  rescaled like an item's);
- item side: the kept blocks (others zero), times ``max|B| / |B_j|``; at full width both factors are 1.

It applies to the first ``d_max`` columns of what the model scores: the final-layer embeddings of a graph model
(``forward()`` returning every user's and item's; for LightGCN all of it, for NGCF the layer-0 part of its
concatenation) and NeuMF's GMF embeddings (its MLP embeddings are scored by the MLP as they are). The masks
are read from the ``MaskedTables`` at call time, so the scoring follows every switch of action.

LightGCN's final-layer embeddings are a fixed linear function of its tables, the same width: ``bake_final_layer``
stores them as the tables of a LightGCN with ``n_layers`` 0 (what the paper keeps on the device), so that block
masks select blocks of the final-layer embeddings, as Eq. 2 means, rather than of the layer-0 tables (a masked
layer-0 block changes every neighbour's final embedding). With ``fold_users`` a user row becomes its block-sum in
its first block: under Eq. 2 that is all of the user that is ever read.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from recbole_bet.errors import BadInput
from recbole_bet.masking import forget_cached_embeddings

SPEC_ATTR = "_bet_scoring"


class BlockScoring:
    def __init__(self, masked, n_blocks: int, mask_users: bool):
        if masked.d_max % n_blocks:
            raise BadInput(f"block scoring needs d_max={masked.d_max} divisible by its {n_blocks} blocks")
        self.masked, self.n_blocks, self.mask_users = masked, n_blocks, mask_users
        self.width = masked.d_max // n_blocks
        self._cache_key, self._cache = None, None

        self.baked, self.stock_layers = False, None

    def spec(self) -> dict:
        spec = {"kind": "rule_eq2", "n_blocks": self.n_blocks, "mask_users": self.mask_users}
        if self.baked:
            spec["n_layers"] = 0
        return spec

    def _factors(self, device) -> dict:
        """Per entity side, (keep mask, scale) with the padding row, or None at full width / unmasked."""
        keep = self.masked.keep
        key = (id(keep), str(device))
        if key != self._cache_key:
            factors = {}
            for entity in ("user", "item"):
                rows = self.masked.row_keep(entity)
                if rows is None or (entity == "user" and not self.mask_users):
                    factors[entity] = None
                    continue
                counts = rows.reshape(len(rows), self.n_blocks, self.width).any(axis=2).sum(axis=1)
                scale = np.where(counts > 0, counts.max() / np.maximum(counts, 1), 0.0)
                factors[entity] = (torch.from_numpy(rows).to(device),
                                   torch.from_numpy(scale.astype(np.float32)).to(device))
            self._cache_key, self._cache = key, factors
        return self._cache

    def _head(self, x, rows, factor):
        head = x[..., : self.masked.d_max]
        if factor is not None:
            keep, scale = factor
            keep, scale = (keep, scale) if rows is None else (keep[rows], scale[rows])
            head = head * keep * scale.unsqueeze(-1)
        return head

    def user(self, u, rows=None):
        head = self._head(u, rows, self._factors(u.device)["user"])
        folded = head.reshape(*head.shape[:-1], self.n_blocks, self.width).sum(dim=-2)
        return torch.cat([folded.tile((self.n_blocks,)), u[..., self.masked.d_max:]], dim=-1)

    def item(self, v, rows=None):
        head = self._head(v, rows, self._factors(v.device)["item"])
        return torch.cat([head, v[..., self.masked.d_max:]], dim=-1)


def install_block_scoring(model: nn.Module, masked, n_blocks: int, mask_users: bool = False) -> BlockScoring:
    """Make ``model`` (this instance only) score with Eq. 2; idempotent per instance."""
    remove_block_scoring(model)
    scoring = BlockScoring(masked, n_blocks, mask_users)
    if hasattr(model, "user_mf_embedding") and hasattr(model, "item_mf_embedding"):  # NeuMF: the GMF part
        handles = [
            model.user_mf_embedding.register_forward_hook(lambda m, args, out: scoring.user(out, args[0])),
            model.item_mf_embedding.register_forward_hook(lambda m, args, out: scoring.item(out, args[0])),
        ]
        setattr(model, SPEC_ATTR, (scoring, handles))
    elif "restore_user_e" in getattr(model, "other_parameter_name", ()):  # graph models: forward() -> (users, items)
        stock_forward = model.forward

        def forward():
            users, items = stock_forward()
            return scoring.user(users), scoring.item(items)

        model.forward = forward  # an instance attribute: the stock class is untouched
        setattr(model, SPEC_ATTR, (scoring, []))
    else:
        raise BadInput(f"block scoring (rule_scoring: eq2) supports graph models with final-layer embeddings "
                       f"(LightGCN, NGCF) and NeuMF, not {type(model).__name__}; use rule_scoring: dot")
    forget_cached_embeddings(model)
    return scoring


def can_bake(model: nn.Module) -> bool:
    from recbole.model.general_recommender import LightGCN

    return isinstance(model, LightGCN)


def bake_final_layer(model: nn.Module, masked, state: dict, fold_users: bool, n_layers: int) -> dict:
    """The state of a LightGCN with ``n_layers`` 0 whose tables are the final-layer embeddings of ``state`` (a
    LightGCN with ``n_layers`` layers) at full width; sets the model's ``n_layers`` to 0 and records it in the
    installed scoring. Lossless under Eq. 2: the same full-width scores (tested)."""
    from recbole_bet.masking import load_plain_state_dict

    installed = getattr(model, SPEC_ATTR, None)
    if installed is None or not can_bake(model):
        raise ValueError("bake_final_layer needs a LightGCN with block scoring installed")
    scoring = installed[0]
    model.n_layers = n_layers
    masked.set_full()
    load_plain_state_dict(model, state)
    with torch.no_grad():
        users, items = type(model).forward(model)  # the stock forward: raw final-layer embeddings
    if fold_users:
        folded = users[:, : masked.d_max].reshape(len(users), scoring.n_blocks, scoring.width).sum(dim=1)
        users = torch.zeros_like(users)
        users[:, : scoring.width] = folded
    baked = dict(state)
    baked[f"{_table_name(masked, 'user')}.weight"] = users.detach().clone()
    baked[f"{_table_name(masked, 'item')}.weight"] = items.detach().clone()
    model.n_layers = 0
    scoring.baked, scoring.stock_layers = True, n_layers
    forget_cached_embeddings(model)
    return baked


def _table_name(masked, entity: str) -> str:
    names = [t.name for t in masked.tables if t.entity == entity]
    if len(names) != 1:
        raise ValueError(f"expected one {entity} table, found {names}")
    return names[0]


def remove_block_scoring(model: nn.Module) -> None:
    installed = getattr(model, SPEC_ATTR, None)
    if installed is None:
        return
    for handle in installed[1]:
        handle.remove()
    if installed[0].baked and installed[0].stock_layers is not None:
        model.n_layers = installed[0].stock_layers
    if "forward" in vars(model):
        del model.forward
    delattr(model, SPEC_ATTR)
    forget_cached_embeddings(model)


def scoring_spec(model: nn.Module) -> dict | None:
    """What the artifact records so that a loaded model scores the same way (None: the stock scoring)."""
    installed = getattr(model, SPEC_ATTR, None)
    return None if installed is None else installed[0].spec()


def apply_scoring_spec(model: nn.Module, masked, spec: dict | None) -> None:
    """Make ``model`` score as the artifact's model did: Eq. 2 as recorded, or the stock scoring (None)."""
    if spec is None:
        remove_block_scoring(model)
        return
    if spec.get("kind") != "rule_eq2":
        raise BadInput(f"unknown scoring {spec.get('kind')!r} in the artifact")
    scoring = install_block_scoring(model, masked, int(spec["n_blocks"]), bool(spec.get("mask_users", False)))
    if "n_layers" in spec:  # a baked LightGCN: its tables are final-layer embeddings
        if not can_bake(model):
            raise BadInput(f"the artifact's tables are LightGCN final-layer embeddings, not {type(model).__name__}'s")
        scoring.baked, scoring.stock_layers = True, model.n_layers
        model.n_layers = int(spec["n_layers"])
        forget_cached_embeddings(model)
