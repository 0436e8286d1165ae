"""PEP (Liu et al., ICLR 2021) under the shared budget: learnable soft thresholds, the budget cut, retraining.

It chooses individual entries of the user/item tables (an element mask, ``Selection.keep``), not prefixes;
the artifact stores each kept value's column. Every user and item keeps at least ``d_min`` entries, as with
every other method. The adaptations are in docs/methods.md.
"""
from __future__ import annotations

from logging import getLogger
from time import perf_counter

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from recbole_bet.budget import keep_top_entries
from recbole_bet.masking import per_entity
from recbole_bet.methods.base import Method, Selection, kept_summary


class SoftThreshold(nn.Module):
    """PEP's reparameterisation of a table: V -> sign(V) * relu(|V| - sigmoid(s)), s learnable."""

    def __init__(self, shape: tuple, init: float):
        super().__init__()
        self.s = nn.Parameter(torch.full(shape, float(init)))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return torch.sign(weight) * torch.relu(weight.abs() - torch.sigmoid(self.s))


def threshold_shape(granularity: str, rows: int, width: int) -> tuple:
    return {"global": (1, 1), "dimension": (1, width), "row": (rows, 1)}[granularity]


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
            threshold_valid = ctx.train_to_convergence("pep thresholds")
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
        score = per_entity(masked, scores)
        keep = keep_top_entries(score, ctx.budget)
        gates = np.concatenate(gates)
        search = {
            "threshold_granularity": config["pep_threshold_granularity"],
            "threshold_mean": float(gates.mean()), "threshold_max": float(gates.max()),
            "entries_below_threshold": float((score <= 0).mean()),  # pruned by PEP itself, before the cut
            "threshold_valid_ndcg@20": float(threshold_valid.get("ndcg@20", float("nan"))),
            **kept_summary(ctx.budget, keep),
        }
        search_s = perf_counter() - start
        logger.info(f"PEP: {search['entries_below_threshold']:.1%} of entries below their threshold; "
                    "retraining the pruned tables from the initial weights")
        state, valid, retrain_s = ctx.train_from(ctx.init_state, keep=keep, label="pep retrain")
        return Selection(keep.sum(axis=1), state, valid, search,
                         {"pretrain": 0.0, "search": search_s, "retrain": retrain_s}, keep=keep)
