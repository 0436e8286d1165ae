"""Magnitude pruning under the shared budget (the simple baseline of Tran et al., 2024).

Prune the pretrained full-width user/item tables to the budget by the magnitude of each entry, every row
keeping at least ``magprune_min_per_row`` entries; with several candidate minimums, the one whose pruned model
scores best on validation is kept. Then, with ``magprune_retrain``, one training to convergence from the kept
weights. Cost: the pretraining (cached and shared with bet/pep/sseds/rule), one validation per candidate, at
most one training. The adaptations are in docs/methods.md.
"""
from __future__ import annotations

from logging import getLogger
from time import perf_counter

from recbole_bet.budget import feasible_row_minimums, keep_top_entries
from recbole_bet.errors import BadInput
from recbole_bet.masking import magnitudes, plain_state_dict
from recbole_bet.methods.base import Method, Selection, kept_summary
from recbole_bet.pretrain import pretrained


def candidate_minimums(config) -> list:
    value = config["magprune_min_per_row"]
    return list(value) if isinstance(value, (list, tuple)) else [value]


class MagnitudePruning(Method):
    """magprune: keep the largest-magnitude entries of the pretrained tables, then (optionally) retrain."""

    name = "magprune"
    element_masks = True

    def check_budgets(self, ctx, budgets) -> None:
        for budget in budgets:
            if not feasible_row_minimums(candidate_minimums(ctx.config), budget):
                smallest = max(budget.d_min, min(candidate_minimums(ctx.config)))
                raise BadInput(
                    f"magprune_min_per_row={ctx.config['magprune_min_per_row']} does not fit the budget: "
                    f"{smallest} entries for each of {budget.n_entities} users and items need "
                    f"{smallest * budget.n_entities} parameters per table, the budget allows "
                    f"{budget.budget_units}; give a smaller minimum or a larger budget")

    def select(self, ctx) -> Selection:
        config, masked, logger = ctx.config, ctx.masked, getLogger()
        self.check_budgets(ctx, [ctx.budget])
        state, pretrain_valid, pretrain_s = pretrained(ctx)
        start = perf_counter()
        scores = magnitudes(masked, state)
        tried = []
        best = None
        for floor in feasible_row_minimums(candidate_minimums(config), ctx.budget):
            keep = keep_top_entries(scores, ctx.budget, min_per_row=floor)
            masked.load(state, keep=keep)
            valid = ctx.evaluate(ctx.valid_data)
            score = float(valid[config["valid_metric"].lower()])
            tried.append({"min_per_row": floor, f"valid_{config['valid_metric'].lower()}": score})
            logger.info(f"magprune: at least {floor} entries per row -> validation "
                        f"{config['valid_metric']} {score:.4f} before any retraining")
            if best is None or score > best[0]:  # ties keep the smaller minimum (tried first)
                best = (score, floor, keep, valid)
        _, floor, keep, valid = best
        search = {"candidates": tried, "min_per_row": floor, "retrain": bool(config["magprune_retrain"]),
                  "pretrain_valid_ndcg@20": float(pretrain_valid.get("ndcg@20", float("nan"))),
                  "pruned_valid_ndcg@20": float(valid.get("ndcg@20", float("nan"))),
                  **kept_summary(ctx.budget, keep)}
        search_s = perf_counter() - start
        if config["magprune_retrain"]:
            state, valid, retrain_s = ctx.train_from(state, keep=keep, label="magprune retrain")
        else:
            masked.load(state, keep=keep)
            state, retrain_s = plain_state_dict(ctx.model), 0.0
        return Selection(keep.sum(axis=1), state, valid, search,
                         {"pretrain": pretrain_s, "search": search_s, "retrain": retrain_s}, keep=keep)
