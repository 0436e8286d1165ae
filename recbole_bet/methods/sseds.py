"""SSEDS (Qu et al., SIGIR 2022) under the shared budget: one-shot saliency after pretraining, retraining.

It chooses individual entries of the user/item tables (an element mask, ``Selection.keep``), not prefixes;
the artifact stores each kept value's column. Every user and item keeps at least ``d_min`` entries, as with
every other method. The adaptations are in docs/methods.md.
"""
from __future__ import annotations

from logging import getLogger
from time import perf_counter

import numpy as np

from recbole_bet.budget import keep_top_columns, keep_top_entries
from recbole_bet.masking import per_entity
from recbole_bet.methods.base import Method, Selection, kept_summary
from recbole_bet.pretrain import pretrained


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
            keep = keep_top_entries(per_entity(masked, {n: np.abs(g) for n, g in grads.items()}), ctx.budget)
            extra = {}
        search = {"granularity": granularity, "saliency_batches": batches,
                  "pretrain_valid_ndcg@20": float(pretrain_valid.get("ndcg@20", float("nan"))),
                  **extra, **kept_summary(ctx.budget, keep)}
        search_s = perf_counter() - start
        cold = config["sseds_init"] == "scratch"  # "sseds-cold": the control for the warm start
        search["init"] = config["sseds_init"]
        logger.info(f"SSEDS: {granularity}-level saliency on {batches or 'all'} batch(es); retraining from "
                    + ("a fresh initialisation" if cold else "the pruned pretrained weights"))
        state, valid, retrain_s = ctx.train_from(ctx.init_state if cold else state, keep=keep,
                                                 label="sseds retrain" + (" from scratch" if cold else ""))
        return Selection(keep.sum(axis=1), state, valid, search,
                         {"pretrain": pretrain_s, "search": search_s, "retrain": retrain_s}, keep=keep)
