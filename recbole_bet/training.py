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


class Convergence:
    """When a training has converged, from its validation scores (one per evaluation, bigger is better).

    ``convergence_window`` W > 0 (the default protocol, docs/reproduction.md "Training protocol"): stop at the
    first evaluation, at least ``warmup_epochs`` epochs in, at which the best score of the last W epochs is not
    more than ``convergence_tol`` (relative) above the best before them: the last W epochs gained nothing that
    counts. ``epochs`` is only a cap; a training that reaches it without passing the test has not converged.
    ``convergence_window: 0`` is RecBole's rule: stop ``stopping_step`` + 1 evaluations after the best, never
    before ``warmup_epochs``.
    """

    def __init__(self, config, eval_step: int | None = None):
        self.eval_step = max(1, int(eval_step or config["eval_step"] or 1))
        self.window = int(config["convergence_window"] or 0)
        self.tol = float(config["convergence_tol"] or 0.0)
        self.min_epochs = int(config["warmup_epochs"] or 0)
        self.patience = int(config["stopping_step"])
        self.cap = int(config["epochs"])
        self.scores: list[float] = []
        self.converged = False

    @property
    def epochs(self) -> int:
        return len(self.scores) * self.eval_step

    @property
    def best_epoch(self) -> int:
        return (int(np.argmax(self.scores)) + 1) * self.eval_step if self.scores else 0

    def gain(self) -> float:
        """Relative gain of the last window's best over the best before it (inf until a window has passed)."""
        k = -(-self.window // self.eval_step)
        if len(self.scores) <= k:
            return float("inf")
        before, recent = max(self.scores[:-k]), max(self.scores[-k:])
        return (recent - before) / abs(before) if before else float("inf") if recent > before else 0.0

    def update(self, score: float) -> bool:
        """Add an evaluation's score; True when the training should stop here."""
        self.scores.append(float(score))
        if self.epochs < self.min_epochs:
            return False
        if self.window:
            self.converged = self.gain() <= self.tol
        else:  # RecBole's patience, counted from the best or from the end of the minimum, whichever is later
            first_counted = -(-self.min_epochs // self.eval_step) - 1
            since = len(self.scores) - 1 - max(int(np.argmax(self.scores)), first_counted)
            self.converged = since > self.patience
        return self.converged

    def record(self) -> dict:
        """What the report says of this training."""
        rule = (f"window {self.window}, tol {self.tol:g}" if self.window else f"patience {self.patience}")
        # with patience, RecBole's own loop decides: a run that ended before the cap stopped on its patience
        converged = self.converged or (not self.window and self.epochs < self.cap)
        return {"epochs": self.epochs, "best_epoch": self.best_epoch, "converged": bool(converged),
                "cap": self.cap, "rule": rule,
                "best_valid": max(self.scores) if self.scores else None}

    def warning(self) -> str | None:
        """A message when the cap ended a training that was still improving."""
        if self.record()["converged"] or not self.scores:
            return None
        gain = self.gain() if self.window else float("nan")
        shown = f"; validation rose {gain:.1%} over its last {self.window} epochs" if np.isfinite(gain) else ""
        return (f"training stopped at the epoch cap ({self.epochs} epochs) before it converged{shown}; "
                f"raise --epochs (the best epoch was {self.best_epoch})")


class _Converged(Exception):
    """Ends RecBole's epoch loop from its per-evaluation callback once Convergence says so."""


class BestStateTrainer(FusedAdamTrainer):
    """RecBole's Trainer with the best-so-far weights held in memory (stock layout), stopped by
    ``Convergence`` (the window test by default), never before ``warmup_epochs`` epochs.

    Why a minimum: on ml-100k, LightGCN's validation NDCG@20 peaks after 1-2 epochs (a near-popularity
    ranking), dips, and only climbs past that peak after 10-15 epochs; RecBole's patience of
    ``stopping_step`` = 10 then stops inside the dip (6 of 9 equal-size runs stopped at epoch 1-4 with
    test Recall@20 about 0.17, against 0.285 for the same run trained on). See docs/deviations.md.
    Why a window test rather than patience: docs/reproduction.md "Training protocol".
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        self.best_state = None
        self.convergence = Convergence(config)
        self._epochs_seen = 0
        if self.convergence.window:
            self.stopping_step = 10 ** 9  # RecBole's own patience never stops a run: Convergence does

    def _valid_epoch(self, valid_data, show_progress=False):
        result = super()._valid_epoch(valid_data, show_progress=show_progress)
        self._epochs_seen += self.eval_step
        if not self.convergence.window and self._epochs_seen < (self.config["warmup_epochs"] or 0):
            self.cur_step = 0  # patience starts counting only after the warm-up
        return result

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        def check(epoch_idx, valid_score):
            if callback_fn is not None:
                callback_fn(epoch_idx, valid_score)
            if self.convergence.update(valid_score if self.valid_metric_bigger else -valid_score) \
                    and self.convergence.window:
                raise _Converged

        try:
            return super().fit(train_data, valid_data, verbose=verbose, saved=saved, show_progress=show_progress,
                               callback_fn=check)
        except _Converged:
            if verbose:
                self.logger.info(f"converged after {self.convergence.epochs} epochs (no gain over "
                                 f"{self.convergence.tol:.1%} in the last {self.convergence.window}); best epoch "
                                 f"{self.convergence.best_epoch}")
            return self.best_valid_score, self.best_valid_result

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        self.best_state = plain_state_dict(self.model)

    def restore_best(self) -> None:
        if self.best_state is not None:
            load_plain_state_dict(self.model, self.best_state)


def train_to_convergence(config, model, train_data, valid_data, verbose=True, record: list | None = None,
                         label: str = "") -> dict:
    """Train until ``Convergence`` stops it (at most ``epochs``); leaves the best weights in ``model``.

    Returns the validation result of the best epoch (RecBole's dict of metric -> value). With ``record`` (a
    list), appends what the report says of this training: label, epochs run, best epoch, converged, seconds.
    """
    start = perf_counter()
    trainer = BestStateTrainer(config, model)
    _, best_valid = trainer.fit(train_data, valid_data, verbose=verbose, saved=True,
                                show_progress=config["show_progress"])
    trainer.restore_best()
    warning = trainer.convergence.warning()
    if warning:
        logging.getLogger().warning(f"{label or 'training'}: {warning}")
    if record is not None:
        record.append(dict(trainer.convergence.record(), label=label, seconds=perf_counter() - start))
    return dict(best_valid or {})


class ContinuedTraining:
    """One training to convergence that can pause after any epoch and go on later: RecBole's ``fit`` over an
    epoch range, the optimiser, the convergence test and the best weights kept between the parts. Successive
    halving trains several of these in turn on one model, loading each one's weights before its part."""

    def __init__(self, config, model, train_data, valid_data):
        self.trainer = BestStateTrainer(config, model)
        self.train_data, self.valid_data = train_data, valid_data
        self.cap = int(config["epochs"])
        self.seconds = 0.0

    @property
    def epochs(self) -> int:
        return self.trainer.convergence.epochs

    @property
    def finished(self) -> bool:
        return self.trainer.convergence.converged or self.epochs >= self.cap

    def advance(self, until: int) -> None:
        """Train on until ``until`` epochs in all (at most the cap), or until the convergence test stops it."""
        until = min(int(until), self.cap)
        if self.finished or self.epochs >= until:
            return
        start = perf_counter()
        self.trainer.start_epoch, self.trainer.epochs = self.epochs, until
        self.trainer.fit(self.train_data, self.valid_data, verbose=False, saved=True, show_progress=False)
        self.seconds += perf_counter() - start

    @property
    def best_valid(self) -> dict:
        return dict(self.trainer.best_valid_result or {})

    def record(self, label: str) -> dict:
        return dict(self.trainer.convergence.record(), label=label, seconds=self.seconds)


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
