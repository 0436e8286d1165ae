"""Pruning baselines under the shared budget: PEP and SSEDS.

Both choose individual entries of the user/item tables (element masks, ``Selection.keep``), not
prefixes; the artifact stores each kept value's column. Every user and item keeps at least ``d_min``
entries, as with every other method. The adaptations are in docs/methods.md.
"""
from __future__ import annotations

from logging import getLogger
from time import perf_counter

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from recbole_bet.budget import keep_top_columns, keep_top_entries
from recbole_bet.masking import plain_state_dict
from recbole_bet.methods import Method, Selection
from recbole_bet.search.pretrain import pretrained
from recbole_bet.training import train_to_convergence


class SoftThreshold(nn.Module):
    """PEP's reparameterisation of a table: V -> sign(V) * relu(|V| - sigmoid(s)), s learnable."""

    def __init__(self, shape: tuple, init: float):
        super().__init__()
        self.s = nn.Parameter(torch.full(shape, float(init)))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return torch.sign(weight) * torch.relu(weight.abs() - torch.sigmoid(self.s))


def threshold_shape(granularity: str, rows: int, width: int) -> tuple:
    return {"global": (1, 1), "dimension": (1, width), "row": (rows, 1)}[granularity]


def _per_entity(masked, per_table: dict) -> np.ndarray:
    """(n_entities x d_max) from one (rows x d_max) array per table, padding row dropped; an entity's
    tables (NeuMF has two) share one mask, so their arrays are averaged."""
    parts = []
    for entity in ("user", "item"):
        arrays = [per_table[t.name][1:] for t in masked.tables if t.entity == entity]
        parts.append(np.mean(arrays, axis=0))
    return np.concatenate(parts)


def _retrain(ctx, state: dict, keep: np.ndarray) -> tuple[dict, dict, float]:
    """Train to convergence from ``state`` with the element mask fixed: (weights, valid, seconds)."""
    start = perf_counter()
    ctx.reseed()
    ctx.masked.load(state, keep=keep)
    valid = train_to_convergence(ctx.config, ctx.model, ctx.train_data, ctx.valid_data)
    return plain_state_dict(ctx.model), valid, perf_counter() - start


def _kept_summary(ctx, keep: np.ndarray) -> dict:
    n_users = ctx.budget.n_users
    return {"kept_units_users": int(keep[:n_users].sum()), "kept_units_items": int(keep[n_users:].sum()),
            "rows_at_d_max": int((keep.sum(axis=1) == ctx.budget.d_max).sum())}


class PEP(Method):
    """PEP: train with learnable soft thresholds, keep the entries that survive best, retrain.

    Training to convergence from the initial weights with the thresholds in place is PEP's search. The
    budget cut (our addition) keeps the ``budget_units`` entries with the largest ``|V| - g(s)``, at
    least ``d_min`` per row. Retraining starts again from the initial weights with that mask fixed
    (the lottery-ticket retraining of the PEP paper).
    """

    name = "pep"
    element_masks = True

    def select(self, ctx) -> Selection:
        config, masked, logger = ctx.config, ctx.masked, getLogger()
        start = perf_counter()
        ctx.reseed()
        masked.load(ctx.init_state)
        thresholds = {}
        for t in masked.tables:
            weight = t.module.weight
            shape = threshold_shape(config["pep_threshold_granularity"], weight.shape[0], weight.shape[1])
            thresholds[t.name] = SoftThreshold(shape, config["pep_threshold_init"]).to(weight.device)
            parametrize.register_parametrization(t.module, "weight", thresholds[t.name])
        logger.info(f"PEP: training with {config['pep_threshold_granularity']} soft thresholds to convergence")
        try:
            threshold_valid = train_to_convergence(config, ctx.model, ctx.train_data, ctx.valid_data)
            with torch.no_grad():
                scores, gates = {}, []
                for t in masked.tables:
                    raw = t.module.parametrizations.weight.original
                    gate = torch.sigmoid(thresholds[t.name].s)
                    scores[t.name] = (raw.abs() - gate).cpu().numpy()
                    gates.append(gate.flatten().cpu().numpy())
        finally:  # the stock parameter (with its mask hook) comes back whatever happened
            for t in masked.tables:
                if parametrize.is_parametrized(t.module, "weight"):
                    parametrize.remove_parametrizations(t.module, "weight", leave_parametrized=False)
        score = _per_entity(masked, scores)
        keep = keep_top_entries(score, ctx.budget)
        gates = np.concatenate(gates)
        search = {
            "threshold_granularity": config["pep_threshold_granularity"],
            "threshold_mean": float(gates.mean()), "threshold_max": float(gates.max()),
            "entries_below_threshold": float((score <= 0).mean()),  # pruned by PEP itself, before the cut
            "threshold_valid_ndcg@20": float(threshold_valid.get("ndcg@20", float("nan"))),
            **_kept_summary(ctx, keep),
        }
        search_s = perf_counter() - start
        logger.info(f"PEP: {search['entries_below_threshold']:.1%} of entries below their threshold; "
                    "retraining the pruned tables from the initial weights")
        state, valid, retrain_s = _retrain(ctx, ctx.init_state, keep)
        return Selection(keep.sum(axis=1), state, valid, search,
                         {"pretrain": 0.0, "search": search_s, "retrain": retrain_s}, keep=keep)


def saliency_gradients(ctx, batches: int | None) -> dict:
    """dL/d(alpha) at alpha = 1 for a mask alpha on every table entry (SSEDS Eq. 10), summed over the
    first ``batches`` training batches (None: one epoch). For V' = V * alpha it is grad(V) * V."""
    model, device = ctx.model, ctx.config["device"]
    model.train()
    weights = {t.name: t.module.weight for t in ctx.masked.tables}
    for w in weights.values():
        w.grad = None
    for done, interaction in enumerate(ctx.train_data):
        if batches is not None and done >= batches:
            break
        loss = model.calculate_loss(interaction.to(device))
        if isinstance(loss, tuple):  # RecBole models may return loss parts
            loss = sum(loss)
        loss.backward()
    grads = {name: (w.grad * w).detach().cpu().numpy() for name, w in weights.items()}
    model.zero_grad(set_to_none=True)
    return grads


class SSEDS(Method):
    """SSEDS: pretrain at full width, one-shot saliency, keep the most salient entries, retrain.

    ``sseds_granularity: field`` is the paper's: the saliency of dimension j of a field (users, items)
    is |sum over the field's rows of dL/d alpha_j| on one batch (Eq. 10-11), and whole dimensions are
    kept per field (Eq. 12). ``row`` scores every entry |dL/d alpha_nj| over one epoch and keeps the best
    entries. Retraining starts from the pruned pretrained values (the "winning ticket").
    """

    name = "sseds"
    element_masks = True

    def select(self, ctx) -> Selection:
        config, masked, logger = ctx.config, ctx.masked, getLogger()
        state, pretrain_valid, pretrain_s = pretrained(ctx)
        start = perf_counter()
        granularity = config["sseds_granularity"]
        batches = config["sseds_saliency_batches"]
        if batches is None:
            batches = 1 if granularity == "field" else None
        ctx.reseed()
        masked.load(state)
        grads = saliency_gradients(ctx, batches)
        if granularity == "field":
            # per table: |column sums| (Eq. 10 with one alpha per field and dimension); an entity's tables add
            parts = {}
            for entity in ("user", "item"):
                names = [t.name for t in masked.tables if t.entity == entity]
                parts[entity] = sum(np.abs(grads[n][1:].sum(axis=0)) for n in names)
            keep = keep_top_columns(parts["user"], parts["item"], ctx.budget)
            extra = {"user_dims": int(keep[0].sum()), "item_dims": int(keep[-1].sum())}
        else:
            keep = keep_top_entries(_per_entity(masked, {n: np.abs(g) for n, g in grads.items()}), ctx.budget)
            extra = {}
        search = {"granularity": granularity, "saliency_batches": batches,
                  "pretrain_valid_ndcg@20": float(pretrain_valid.get("ndcg@20", float("nan"))),
                  **extra, **_kept_summary(ctx, keep)}
        search_s = perf_counter() - start
        logger.info(f"SSEDS: {granularity}-level saliency on {batches or 'all'} batch(es); "
                    "retraining from the pruned pretrained weights")
        state, valid, retrain_s = _retrain(ctx, state, keep)
        return Selection(keep.sum(axis=1), state, valid, search,
                         {"pretrain": pretrain_s, "search": search_s, "retrain": retrain_s}, keep=keep)
