"""Training and evaluation through RecBole's own Trainer.

``BestStateTrainer`` keeps the best validation weights in memory instead of RecBole's pickled
checkpoint file (which torch >= 2.6 will not reload, and which we would have to unpickle).
``Finetuner`` is BET's per-action finetuning: a fresh Adam with a step-decayed learning rate.
"""
from __future__ import annotations

import copy
import logging
from time import perf_counter

import numpy as np
import torch
from recbole.evaluator import Collector
from recbole.trainer import Trainer

from recbole_bet.errors import BadInput
from recbole_bet.masking import load_plain_state_dict, plain_state_dict, seed_masked_moments
from recbole_bet.models import symmetric_backward

REPORT_METRICS = ("recall@5", "ndcg@5", "recall@20", "ndcg@20")
FITNESS_METRICS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10", "recall@20", "ndcg@20")


def adam(params, lr: float, weight_decay: float, config) -> torch.optim.Adam:
    """torch's Adam; with ``fused_adam`` its fused kernel: the same update in one pass per tensor.

    Why offer it: the fused kernel makes one pass per tensor and is faster for masked and stock models alike.
    Off by default: the stock optimiser reproduces RecBole's (and our published) numbers exactly. Either way
    masked entries' second moments are seeded (``seed_masked_moments``), which changes no result.
    """
    if not config["fused_adam"]:
        optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    else:
        try:
            optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
        except (RuntimeError, ValueError) as err:
            raise BadInput(f"fused_adam=True needs a torch with a fused Adam for device {config['device']} "
                           f"(on CPU torch >= 2.4; this is {torch.__version__}): {err}") from err
    seed_masked_moments(optimizer)
    return optimizer


class TopkCollector(Collector):
    """RecBole's Collector with the ``rec.topk`` resource (what Recall, NDCG, Hit, Precision, MRR and MAP read)
    built from the top k alone: the same tensor, bit for bit.

    Why: for every batch of a full ranking RecBole fills a dense users x items int matrix with the positives,
    sums its rows for each user's positive count and gathers the top k from it; on Gowalla that matrix work
    (zeros_like, scatter, row sums, gather over 244 x 40,982 entries per batch) was a large share of a
    validation (docs/performance.md). Here: the distinct (user, item) keys of the positives, counted per user,
    and membership of the top-k keys among them. Other resources are left to RecBole.
    """

    def eval_batch_collect(self, scores_tensor, interaction, positive_u, positive_i):
        if not self.register.need("rec.topk"):
            return super().eval_batch_collect(scores_tensor, interaction, positive_u, positive_i)
        users, items = scores_tensor.shape
        device = scores_tensor.device
        _, topk_idx = torch.topk(scores_tensor, max(self.topk), dim=-1)
        # distinct keys: the 0/1 matrix counts a repeated (user, item) pair once
        keys = torch.unique(positive_u.to(device, torch.int64) * items + positive_i.to(device, torch.int64))
        pos_len = torch.bincount(keys // items, minlength=users).to(torch.int)[:, None]
        top_keys = torch.arange(users, device=device)[:, None] * items + topk_idx
        pos_idx = torch.isin(top_keys, keys).to(torch.int)
        self.data_struct.update_tensor("rec.topk", torch.cat((pos_idx, pos_len), dim=1))
        setattr(self.register, "rec.topk", False)  # RecBole collects whatever else the metrics need
        try:
            super().eval_batch_collect(scores_tensor, interaction, positive_u, positive_i)
        finally:
            setattr(self.register, "rec.topk", True)


class FusedAdamTrainer(Trainer):
    """RecBole's Trainer whose ``learner: adam`` optimiser honours ``fused_adam`` (other learners unchanged),
    with masked entries' Adam second moments seeded (``seed_masked_moments``: same result, faster steps) and
    validation collected by ``TopkCollector`` (same metrics, faster)."""

    def __init__(self, config, model):
        super().__init__(config, model)
        self.eval_collector = TopkCollector(config)

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        with symmetric_backward(self.model):  # graph models: the adjacency's gradient without its transpose
            return super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)

    def _build_optimizer(self, **kwargs):
        if self.config["fused_adam"] and kwargs.get("learner", self.learner).lower() == "adam":
            return adam(kwargs.get("params", self.model.parameters()), kwargs.get("learning_rate", self.learning_rate),
                        kwargs.get("weight_decay", self.weight_decay) or 0.0, self.config)
        optimizer = super()._build_optimizer(**kwargs)
        seed_masked_moments(optimizer)
        return optimizer


class BestStateTrainer(FusedAdamTrainer):
    """RecBole's Trainer with the best-so-far weights held in memory (stock layout), and early stopping
    that cannot trigger during the first ``warmup_epochs`` epochs.

    Why the warm-up: on ml-100k, LightGCN's validation NDCG@20 peaks after 1-2 epochs (a near-popularity
    ranking), dips, and only climbs past that peak after 10-15 epochs; RecBole's patience of
    ``stopping_step`` = 10 then stops inside the dip (6 of 9 equal-size runs stopped at epoch 1-4 with
    test Recall@20 about 0.17, against 0.285 for the same run trained on). See docs/deviations.md.
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        self.best_state = None
        self._epochs_seen = 0

    def _valid_epoch(self, valid_data, show_progress=False):
        result = super()._valid_epoch(valid_data, show_progress=show_progress)
        self._epochs_seen += self.eval_step
        if self._epochs_seen < (self.config["warmup_epochs"] or 0):
            self.cur_step = 0  # patience starts counting only after the warm-up
        return result

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        self.best_state = plain_state_dict(self.model)

    def restore_best(self) -> None:
        if self.best_state is not None:
            load_plain_state_dict(self.model, self.best_state)


def train_to_convergence(config, model, train_data, valid_data, verbose=True) -> dict:
    """Train with early stopping on ``valid_metric``; leaves the best weights in ``model``.

    Returns the validation result of the best epoch (RecBole's dict of metric -> value).
    """
    trainer = BestStateTrainer(config, model)
    _, best_valid = trainer.fit(train_data, valid_data, verbose=verbose, saved=True,
                                show_progress=config["show_progress"])
    trainer.restore_best()
    return dict(best_valid or {})


def _init_eval_only(trainer, config, model) -> None:
    from recbole.evaluator import Evaluator
    from recbole.utils import WandbLogger

    trainer.config, trainer.model = config, model
    trainer.logger = logging.getLogger()
    trainer.device = config["device"]
    trainer.gpu_available = torch.cuda.is_available() and config["use_gpu"]
    trainer.eval_collector = TopkCollector(config)
    trainer.evaluator = Evaluator(config)
    trainer.item_tensor = None
    trainer.tot_item_num = None
    trainer.test_batch_size = config["eval_batch_size"]
    trainer.wandblogger = WandbLogger(config)


class Finetuner(FusedAdamTrainer):
    """BET's finetuning: per action a fresh Adam at ``bet_finetune_lr``, multiplied by
    ``bet_finetune_lr_decay`` every ``bet_finetune_lr_decay_steps`` optimiser steps.

    Built once per run (RecBole's Trainer opens a TensorBoard writer per instance); ``run`` resets the
    optimiser and schedule for each probed action.
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        self.reset_optimizer()

    def _build_optimizer(self, **kwargs):
        params = [p for p in self.model.parameters() if p.requires_grad]
        return adam(params, self.config["bet_finetune_lr"], self.weight_decay or 0.0, self.config)

    def reset_optimizer(self) -> None:
        self.optimizer = self._build_optimizer()
        self.scheduler = torch.optim.lr_scheduler.StepLR(
            self.optimizer, step_size=self.config["bet_finetune_lr_decay_steps"],
            gamma=self.config["bet_finetune_lr_decay"],
        )
        self.optimizer.register_step_post_hook(lambda *_: self.scheduler.step())

    def run(self, train_data, epochs: int) -> float:
        """Finetune the (masked) model for ``epochs`` epochs; returns the seconds it took."""
        start = perf_counter()
        self.reset_optimizer()
        for epoch in range(epochs):
            self._train_epoch(train_data, epoch, show_progress=False)
        return perf_counter() - start


class Scorer:
    """RecBole's full-ranking evaluation of one model, set up once and reused."""

    def __init__(self, config, model):
        self.trainer = Trainer.__new__(Trainer)  # evaluation needs none of Trainer's optimiser set-up
        _init_eval_only(self.trainer, config, model)

    def evaluate(self, eval_data) -> dict:
        return dict(self.trainer.evaluate(eval_data, load_best_model=False, show_progress=False))


def quality(result: dict) -> float:
    """BET's Eq. 13: the mean of Recall@k and NDCG@k over k in {5, 10, 20} (fitness, and BETTrainer's score)."""
    return float(np.mean([result[k] for k in FITNESS_METRICS]))


def pick(result: dict, keys=REPORT_METRICS) -> dict:
    return {k: float(result[k]) for k in keys}


def train_loader_with_batch_size(config, train_data, batch_size: int):
    """A second training loader over the same split and negative sampler, with another batch size."""
    from recbole.data.dataloader import TrainDataLoader

    local = copy.copy(config)
    local.final_config_dict = dict(config.final_config_dict, train_batch_size=batch_size)
    return TrainDataLoader(local, train_data._dataset, train_data._sampler, shuffle=True)


def validation_pairs_loader(config, train_data, valid_data, batch_size: int):
    """Training-format batches over the validation split's interactions, so that the model's own loss can be
    computed on held-out pairs: BPR models get a sampled negative per pair, point-wise models (NeuMF) a
    labelled negative row. Negatives are drawn among the items the user has in neither training nor validation
    (RecBole's sampler in its "valid" phase)."""
    from recbole.data.dataloader import TrainDataLoader
    from recbole.sampler import Sampler

    args = config["train_neg_sample_args"]
    sampler = None
    if args is not None and args["distribution"] != "none":
        sampler = Sampler(["train", "valid"], [train_data._dataset, valid_data._dataset], args["distribution"],
                          args.get("alpha", 1.0)).set_phase("valid")
    local = copy.copy(config)
    local.final_config_dict = dict(config.final_config_dict, train_batch_size=batch_size)
    return TrainDataLoader(local, valid_data._dataset, sampler, shuffle=True)


def validation_subset(config, valid_data, fraction: float, seed: int):
    """A full-ranking loader over a fixed random ``fraction`` of the validation users (same ranking and
    training-item exclusion as ``valid_data``; the users are drawn once, from ``seed``)."""
    from recbole.data.dataloader import FullSortEvalDataLoader

    dataset = valid_data._dataset
    uids = dataset.inter_feat[dataset.uid_field].numpy()
    users = np.unique(uids)
    keep = np.random.default_rng(seed).choice(users, size=max(1, int(round(fraction * len(users)))), replace=False)
    subset = dataset.copy(dataset.inter_feat[torch.from_numpy(np.isin(uids, keep))])
    return FullSortEvalDataLoader(config, subset, valid_data._sampler, shuffle=False)
