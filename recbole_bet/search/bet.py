"""BET as a method: pretrain (cached), search (Algorithm 1), selective retraining (section 3.5.2)."""
from __future__ import annotations

from logging import getLogger
from time import perf_counter

import numpy as np
import torch

from recbole_bet.masking import load_plain_state_dict
from recbole_bet.methods import Method, Selection
from recbole_bet.search.loop import SearchLoop
from recbole_bet.search.predictor import PredictorTrainer, build_predictor
from recbole_bet.search.pretrain import pretrained
from recbole_bet.search.sampler import ActionSampler
from recbole_bet.training import FITNESS_METRICS, REPORT_METRICS, Finetuner, pick, train_loader_with_batch_size


def quality(result: dict) -> float:
    """Paper Eq. 13: the mean of Recall@k and NDCG@k over k in {5, 10, 20}."""
    return float(np.mean([result[k] for k in FITNESS_METRICS]))


class BET(Method):
    name = "bet"

    def select(self, ctx) -> Selection:
        config = ctx.config
        pre_state, _, pretrain_s = pretrained(ctx)
        load_plain_state_dict(ctx.model, pre_state)
        ctx.masked.set_full()
        full_valid = ctx.evaluate(ctx.valid_data)
        full_quality = quality(full_valid)
        if full_quality <= 0:
            raise RuntimeError("the pretrained model scores 0 on validation; fitness ratios are undefined")

        search_start = perf_counter()
        ctx.reseed()
        finetuner = Finetuner(config, ctx.model)
        finetune_data = train_loader_with_batch_size(config, ctx.train_data, config["bet_finetune_batch_size"])
        epochs = config["bet_finetune_epochs"]

        def probe(sizes: np.ndarray) -> float:
            """Finetune from the pretrained weights with this action masked in; Eq. 12 fitness."""
            load_plain_state_dict(ctx.model, pre_state)
            ctx.masked.set_sizes(sizes)
            finetuner.run(finetune_data, epochs)
            return quality(ctx.evaluate(ctx.valid_data)) / full_quality

        loop = build_search(ctx, probe)
        state = loop.run(config["bet_iterations"])
        search_s = perf_counter() - search_start

        retrain_start = perf_counter()
        retrained, chosen, (sizes, weights, valid) = retrain_and_choose(
            state.top(config["bet_retrain_top_k"]), ctx.train_from_scratch)
        retrain_s = perf_counter() - retrain_start
        search = {
            "iterations": [
                {"t": m.t, "strategy": m.strategy, "kept_params": m.kept_params, "fitness": m.fitness,
                 "predicted_fitness": m.predicted_fitness, "seconds": m.seconds}
                for m in state.population
            ],
            "max_candidate_kept_params": state.max_candidate_kept_params,
            "retrained": retrained,
            "chosen": chosen,
            "pretrained_valid": pick(full_valid, REPORT_METRICS),
        }
        return Selection(sizes, weights, valid, search,
                         {"pretrain": pretrain_s, "search": search_s, "retrain": retrain_s})


def retrain_and_choose(top: list, train_from_scratch):
    """Paper 3.5.2: train each top action from scratch; choose by validation quality (Eq. 13-14).

    ``train_from_scratch(sizes) -> (weights, valid metrics, seconds)``. Returns the report entries,
    the chosen index and (sizes, weights, valid) of the chosen action.
    """
    logger = getLogger()
    entries, best = [], None
    for rank, member in enumerate(top):
        logger.info(f"retraining action {rank + 1}/{len(top)} (search fitness {member.fitness:.4f}) from scratch")
        weights, valid, _ = train_from_scratch(member.sizes)
        entries.append({"fitness": member.fitness, "t": member.t, "valid": pick(valid),
                        "valid_quality": quality(valid), "kept_params": member.kept_params})
        if best is None or entries[-1]["valid_quality"] > entries[best[0]]["valid_quality"]:
            best = (rank, (member.sizes, weights, valid))
    return entries, best[0], best[1]


def build_search(ctx, probe) -> SearchLoop:
    """Sampler, predictor and its trainer wired into a search loop, seeded from the config."""
    config = ctx.config
    seed = config["seed"]
    torch.manual_seed(seed)
    sampler = ActionSampler(ctx.budget, ctx.user_freq, ctx.item_freq, beta_max=config["bet_beta_max"])
    predictor = build_predictor(config["bet_predictor"], ctx.user_freq, ctx.item_freq, ctx.budget.d_max)
    generator = torch.Generator().manual_seed(seed)
    trainer = PredictorTrainer(predictor, lr=config["bet_predictor_lr"],
                               batch_size=config["bet_predictor_batch_size"],
                               updates_per_iteration=config["bet_predictor_updates"], generator=generator)
    return SearchLoop(sampler, predictor, trainer, probe, config["bet_candidates"], np.random.default_rng(seed),
                      selection=config["bet_selection"])
