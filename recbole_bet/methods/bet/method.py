"""BET as a method: pretrain (cached), search (Algorithm 1), selective retraining (section 3.5.2)."""
from __future__ import annotations

import json
from logging import getLogger
from time import perf_counter

import numpy as np
import torch

from recbole_bet.budget import keep_top_entries_per_row, one_size_per_side
from recbole_bet.config import anchor_names, pretrain_key_items
from recbole_bet.methods.base import Method, Selection
from recbole_bet.methods.bet import checkpoint, reuse
from recbole_bet.methods.bet.loop import Member, SearchLoop, iteration_seed
from recbole_bet.methods.bet.predictor import PredictorTrainer, build_predictor
from recbole_bet.methods.bet.sampler import ActionSampler
from recbole_bet.plots import plot_bet_search
from recbole_bet.pretrain import pretrained
from recbole_bet.masking import magnitudes, plain_state_dict
from recbole_bet.training import (FITNESS_METRICS, REPORT_METRICS, ContinuedTraining, Finetuner, pick, quality,
                                  train_loader_with_batch_size, validation_subset)


def run_identity(config) -> dict:
    """What must match for a checkpoint to be resumed: everything that shapes the result."""
    items = dict(pretrain_key_items(config))
    items.update({k: config[k] for k in ("method", "sparsity", "memory_budget", "d_min")
                  if k in config.final_config_dict})
    items.update({k: v for k, v in config.final_config_dict.items() if k.startswith("bet_")})
    if "bet_anchors" in items:
        items["bet_anchors"] = anchor_names(config)
    if items.get("bet_retrain_columns") == "choose":
        # what a checkpoint holds (the search, the top-k retrainings) is prefix's; choose only adds a training after
        items["bet_retrain_columns"] = "prefix"
    items.pop("bet_reuse_run", None)  # a reusing run reads a finished run and writes no checkpoint
    for key, default in checkpoint.LATER_KEYS_DEFAULTS.items():
        if items.get(key) == default:
            del items[key]
    return json.loads(json.dumps(items, sort_keys=True, default=str))


class BET(Method):
    name = "bet"
    resumable = True

    @classmethod
    def uses_element_masks(cls, config) -> bool:
        # a memory budget counts the column index of magnitude's entries (choose makes no choice under one)
        return config["bet_retrain_columns"] == "magnitude"

    def plot_search(self, path, search, title, budget) -> bool:
        return bool(search) and plot_bet_search(path, search, title)

    def select(self, ctx) -> Selection:
        config = ctx.config
        if config["bet_reuse_run"]:
            return select_reusing(ctx, config["bet_reuse_run"])
        path = ctx.checkpoint_path
        meta, saved = {}, {}
        if ctx.resume:
            meta, saved = checkpoint.load(path)
            checkpoint.check_same_run(meta, run_identity(config), path)
        timings = dict(meta.get("timings", {}))
        if "pretrained" in saved:
            # the weights the search probed with: pretraining again on another CPU can differ in the last digits
            # (measured: a pretrained NGCF's validation NDCG@20 0.3245 on one machine, 0.3235 on another)
            pre_state, pretrain_s = saved["pretrained"], 0.0
            getLogger().info(f"pretrained model restored from the checkpoint {path}")
        else:
            if meta:
                getLogger().warning(
                    f"checkpoint {path} holds no pretrained weights (written before they were kept): pretraining "
                    "again; on another machine the weights can differ slightly from those the search probed with")
            pre_state, _, pretrain_s = pretrained(ctx)
        if meta.get("trainings"):  # the trainings before the interruption, as they ran (not "cached")
            ctx.trainings[:] = meta["trainings"]
        timings["pretrain"] = timings.get("pretrain", 0.0) + pretrain_s
        search_start = perf_counter()
        probe = Probe(ctx, pre_state)
        finetuner = probe.finetuner

        loop = build_search(ctx, probe)
        if meta:
            loop.trainer.load_state_dict(saved["predictor"])
            loop.restore(_members_from(meta, saved), meta["max_candidate_kept_params"])
        identity = run_identity(config)

        def save_search(t, loop):
            log_iteration(finetuner.tensorboard, loop.state.population)
            timings["search"] = timings.get("search", 0.0) + perf_counter() - save_search.since
            save_search.since = perf_counter()
            _save(path, identity, loop, timings, saved_retrain={}, trainings=ctx.trainings, pretrained=pre_state)

        save_search.since = search_start
        if len(loop.state.population) < config["bet_iterations"]:
            loop.run(config["bet_iterations"], on_iteration=save_search)
        state = loop.state

        retrain_began = perf_counter()
        done = {"entries": meta.get("retrained", []), "best": meta.get("best_rank"),
                "weights": saved.get("best_weights")}

        def save_retrain(entries, best_rank, best_weights):
            timings["retrain"] = timings.get("retrain", 0.0) + perf_counter() - save_retrain.since
            save_retrain.since = perf_counter()
            _save(path, identity, loop, timings,
                  saved_retrain={"retrained": entries, "best_rank": best_rank, "best_weights": best_weights},
                  trainings=ctx.trainings, pretrained=pre_state)

        save_retrain.since = retrain_began
        evaluate_test = None if ctx.test_data is None else (lambda: ctx.evaluate(ctx.test_data))
        k = config["bet_retrain_top_k"]
        if config["bet_retrain_pick"] == "both_sides":
            top = state.top_both_sides(k, ctx.budget.n_users)
        elif config["bet_retrain_pick"] == "fittest_and_anchors":
            top = state.top_and_anchors(k)
        else:
            top = state.top(k)
        keep_of = retrain_keep(ctx, pre_state)
        if config["bet_retrain_schedule"] == "halving":  # restarts from its first round after an interruption
            retrained, chosen, (sizes, weights, valid) = retrain_halving(
                top, ctx, retrain_start(ctx, pre_state), config["bet_halving_epochs"], evaluate_test, keep_of)
        else:
            retrained, chosen, (sizes, weights, valid) = retrain_and_choose(
                top, retrainer(ctx, pre_state), done, save_retrain, evaluate_test)
        keep = None if keep_of is None else keep_of(sizes)
        columns_choice = None
        if chooses_columns(config):
            weights, valid, keep, columns_choice = choose_columns(ctx, pre_state, sizes, weights, valid, evaluate_test)
        timings["retrain"] = timings.get("retrain", 0.0) + perf_counter() - save_retrain.since
        # where each action put its budget: on LightGCN the fittest actions give one side nearly everything
        n_users = ctx.budget.n_users
        user_share = {m.t: float(np.sum(m.sizes[:n_users]) / max(1, np.sum(m.sizes))) for m in state.population}
        for entry in retrained:
            entry["user_share"] = user_share.get(entry["t"])
        search = {
            "iterations": [
                {"t": m.t, "strategy": m.strategy, "kept_params": m.kept_params, "fitness": m.fitness,
                 "predicted_fitness": m.predicted_fitness, "seconds": m.seconds, "user_share": user_share[m.t],
                 **({} if m.anchor is None else {"anchor": m.anchor})}
                for m in state.population
            ],
            "max_candidate_kept_params": state.max_candidate_kept_params,
            "retrained": retrained,
            "chosen": chosen,
            "pretrained_valid": pick(probe.full_valid, REPORT_METRICS),
            "finetune_batch_size": probe.finetune_batch,
            "finetune_steps_per_probe": len(probe.finetune_data) * probe.epochs,
            "sampler": config["bet_sampler"], "distribution_draw": config["bet_distribution_draw"],
            "sides": config["bet_sides"], "probe_seed": config["bet_probe_seed"],
            "retrain_init": config["bet_retrain_init"], "retrain_schedule": config["bet_retrain_schedule"],
            "retrain_pick": config["bet_retrain_pick"], "retrain_columns": config["bet_retrain_columns"],
            "anchors": anchor_names(config),
        }
        if columns_choice is not None:
            search["columns_choice"] = columns_choice
        return Selection(sizes, weights, valid, search,
                         {k: timings.get(k, 0.0) for k in ("pretrain", "search", "retrain")}, keep=keep)


def select_reusing(ctx, folder: str) -> Selection:
    """``bet_reuse_run``: the finished run's search and top-k retrainings as they were, then what this configuration
    adds (``reuse.additions``): the anchors the finished run did not retrain, each retrained as its top actions were
    and the choice made again over all of them, and ``choose``'s one training on the action chosen. The report is
    the one a fresh run of this configuration writes (its trainings and timings add the finished run's to this
    one's), with ``reused_from`` naming the folder."""
    config = ctx.config
    run = reuse.finished_run(ctx, folder)
    old = run["report"]
    old_search = old["search"]
    pre_state, _, pretrain_s = pretrained(ctx)
    ctx.trainings[:] = list(old.get("trainings") or [])
    start = perf_counter()
    evaluate_test = None if ctx.test_data is None else (lambda: ctx.evaluate(ctx.test_data))
    entries = [dict(e) for e in old_search["retrained"]]
    chosen = old_search["chosen"]
    sizes, weights, valid, keep = run["sizes"], run["weights"], old["valid"], run["keep"]
    columns_choice = old_search.get("columns_choice")
    if "anchors" in run["adds"]:
        retrained_t = {e["t"] for e in entries}
        anchor_sizes = dict(anchor_actions(ctx))
        train, keep_of = retrainer(ctx, pre_state), retrain_keep(ctx, pre_state)
        user_share = {it["t"]: it.get("user_share") for it in old_search["iterations"]}
        for it in old_search["iterations"]:
            # retrained already under its own t; a sampled action equal to an anchor in every entry would be one
            # action a fresh run retrains once, but the report keeps no sampled sizes to compare
            if it.get("anchor") is None or it["t"] in retrained_t:
                continue
            getLogger().info(f"retraining anchor {it['anchor']} (search fitness {it['fitness']:.4f}), which the "
                             f"finished run {folder} did not retrain")
            member = Member(it["t"], it["strategy"], anchor_sizes[it["anchor"]], None, it["fitness"],
                            it.get("predicted_fitness"), it["kept_params"], it.get("seconds", 0.0), it["anchor"])
            a_weights, a_valid, _ = train(member.sizes)
            entry = retrained_entry(member, a_valid)
            if evaluate_test is not None:  # reported only; the choice is on validation
                entry["test"] = pick(evaluate_test())
            if entry["valid_quality"] > entries[chosen]["valid_quality"]:  # ties keep the earlier, as a fresh run
                chosen, sizes, weights, valid = len(entries), member.sizes, a_weights, entry["valid"]
                keep, columns_choice = (None if keep_of is None else keep_of(sizes)), None
            entries.append(dict(entry, valid=pick(entry["valid"]), user_share=user_share.get(it["t"])))
    if chooses_columns(config) and columns_choice is None:
        weights, valid, keep, columns_choice = choose_columns(ctx, pre_state, sizes, weights, valid, evaluate_test,
                                                              valid_quality=entries[chosen]["valid_quality"])
    timings = dict(old.get("timings_s") or {})
    timings["pretrain"] = timings.get("pretrain", 0.0) + pretrain_s
    timings["retrain"] = timings.get("retrain", 0.0) + perf_counter() - start
    search = dict(old_search, retrained=entries, chosen=chosen, retrain_columns=config["bet_retrain_columns"],
                  retrain_pick=config["bet_retrain_pick"], reused_from=folder)
    if columns_choice is not None:
        search["columns_choice"] = columns_choice
    return Selection(sizes, weights, valid, search,
                     {k: timings.get(k, 0.0) for k in ("pretrain", "search", "retrain")}, keep=keep)


class Probe:
    """The search's probe (section 3.4, Eq. 12): finetune from the pretrained weights with an action's sizes masked
    in, then fitness = validation quality / the pretrained model's. ``probe(sizes, t)`` with iteration ``t``, whose
    seed (``seed_of``) drives the finetuning's initial columns and batch order. Built once per search;
    benchmarks/probe_actions.py scores actions the search never drew (ES's sizes, a chosen action of another run)
    with the same probe."""

    def __init__(self, ctx, pre_state: dict):
        config = ctx.config
        self.ctx, self.pre_state = ctx, pre_state
        ctx.masked.load(pre_state)
        self.full_valid = ctx.evaluate(ctx.valid_data)
        self.fitness_data = fitness_loader(ctx)
        self.full_quality = quality(self.full_valid if self.fitness_data is ctx.valid_data
                                    else ctx.evaluate(self.fitness_data))
        if self.full_quality <= 0:
            raise RuntimeError("the pretrained model scores 0 on validation; fitness ratios are undefined")
        self.finetuner = Finetuner(config, ctx.model)
        self.epochs = config["bet_finetune_epochs"]
        self.finetune_batch = finetune_batch_size(config, len(ctx.train_data))
        self.finetune_data = train_loader_with_batch_size(config, ctx.train_data, self.finetune_batch)
        getLogger().info(f"BET probes: {self.epochs} epochs at batch {self.finetune_batch}, "
                         f"{len(self.finetune_data) * self.epochs} optimiser steps each")

    def seed_of(self, t: int) -> int:
        """``bet_probe_seed: per_iteration``: every iteration its own finetuning draw (the paper's code), so fitness
        mixes the action with the draw's luck; ``shared``: every probe with iteration 0's draw (common random
        numbers), so two actions' fitnesses differ by the actions alone (docs/deviations.md)."""
        shared = self.ctx.config["bet_probe_seed"] == "shared"
        return iteration_seed(self.ctx.config["seed"], 0 if shared else t)

    def __call__(self, sizes: np.ndarray, t: int) -> float:
        """With ``trim_columns`` (LightGCN) the finetuning runs on the action's kept columns only (trimming.py)."""
        ctx, seed = self.ctx, self.seed_of(t)

        def reseed():
            ctx.reseed(seed)
            self.finetune_data.generator.manual_seed(seed)

        target, columns = ctx.trimmer.place(self.pre_state, sizes, reseed=reseed)
        self.finetuner.model = target.model  # one finetuner (one TensorBoard writer); run() rebuilds its optimiser
        try:
            self.finetuner.run(self.finetune_data, self.epochs)
        finally:
            self.finetuner.model = ctx.model
        scores = ctx.evaluate(self.fitness_data) if columns is None else ctx.trimmer.evaluate(target, self.fitness_data)
        return quality(scores) / self.full_quality


def log_iteration(writer, population) -> None:
    """The search's scalars for the iteration just probed, to RecBole's TensorBoard writer (log_tensorboard/)."""
    member = population[-1]
    writer.add_scalar("BET/fitness", member.fitness, member.t)
    writer.add_scalar("BET/best_fitness", max(m.fitness for m in population), member.t)
    writer.add_scalar("BET/kept_params", member.kept_params, member.t)
    if member.predicted_fitness is not None:
        writer.add_scalar("BET/predicted_fitness", member.predicted_fitness, member.t)
    writer.flush()


def _save(path, identity, loop, timings, saved_retrain, trainings=(), pretrained=None):
    if not path:  # BETTrainer in a user's script: no output directory, no checkpoints
        return
    population = loop.state.population
    meta = {
        "identity": identity, "timings": timings,
        "members": [{"t": m.t, "strategy": m.strategy, "fitness": m.fitness, "predicted_fitness": m.predicted_fitness,
                     "kept_params": m.kept_params, "seconds": m.seconds, "anchor": m.anchor} for m in population],
        "max_candidate_kept_params": loop.state.max_candidate_kept_params,
        "retrained": saved_retrain.get("retrained", []), "best_rank": saved_retrain.get("best_rank"),
        "trainings": list(trainings),
    }
    tensors = {"sizes": torch.from_numpy(np.stack([m.sizes for m in population]).astype(np.int16)),
               "predictor": loop.trainer.state_dict()}
    if saved_retrain.get("best_weights") is not None:
        tensors["best_weights"] = saved_retrain["best_weights"]
    if pretrained is not None:  # a resume, on any machine, probes and retrains from exactly these weights
        tensors["pretrained"] = pretrained
    checkpoint.save(path, meta, tensors)


def _members_from(meta, saved) -> list:
    sizes = saved["sizes"].numpy().astype(np.int64)
    return [Member(m["t"], m["strategy"], sizes[i], None, m["fitness"], m["predicted_fitness"], m["kept_params"],
                   m["seconds"], m.get("anchor")) for i, m in enumerate(meta["members"])]


def retrain_start(ctx, pre_state) -> dict:
    """Where the top actions' retraining starts (``bet_retrain_init``): the fresh initial weights, as the paper
    (``scratch``), or the pretrained weights with the action's sizes applied (``pretrained``, SSEDS's start)."""
    return pre_state if ctx.config["bet_retrain_init"] == "pretrained" else ctx.init_state


def largest_entries(ctx, pre_state):
    """(sizes) -> the element mask of each row's ``size`` largest-magnitude pretrained entries (what magprune
    keeps: a warm start keeps what the pretraining made large)."""
    scores = magnitudes(ctx.masked, pre_state)
    return lambda sizes: keep_top_entries_per_row(scores, sizes)


def retrain_keep(ctx, pre_state):
    """Which entries of a row a retraining keeps (``bet_retrain_columns``): None for its first ``size`` columns
    (``prefix``, the paper's layout; ``choose`` retrains its top actions so too, then ``choose_columns``), else
    ``largest_entries`` (``magnitude``)."""
    return largest_entries(ctx, pre_state) if ctx.config["bet_retrain_columns"] == "magnitude" else None


def chooses_columns(config) -> bool:
    """``bet_retrain_columns: choose`` with a warm retraining (from scratch the columns are all alike: nothing to
    choose) and no ``memory_budget`` (the largest entries need a column index, a fifth more bytes a parameter, which
    a budget sized for first columns has no room for: ``magnitude`` pays for it)."""
    return (config["bet_retrain_columns"] == "choose" and config["bet_retrain_init"] == "pretrained"
            and config["memory_budget"] is None)


def choose_columns(ctx, pre_state, sizes, weights, valid, evaluate_test=None, valid_quality=None):
    """``bet_retrain_columns: choose``: the chosen action (trained with its first columns) once more with each
    row's largest pretrained entries; the better of the two on validation stays, as among the top actions.
    ``valid_quality``: the first's validation quality when ``valid`` is a report's (fewer metrics than it needs).
    Returns (weights, valid, keep or None, the report's ``columns_choice``)."""
    prefix_quality = quality(valid) if valid_quality is None else valid_quality
    keep = largest_entries(ctx, pre_state)(sizes)
    getLogger().info("retraining the chosen action with its rows' largest pretrained entries")
    m_weights, m_valid, _ = ctx.train_from(pre_state, keep=keep, label="from pretrained, largest entries")
    largest = {"valid": pick(m_valid), "valid_quality": quality(m_valid)}
    if evaluate_test is not None:  # reported only; the choice is on validation
        largest["test"] = pick(evaluate_test())
    kept = "magnitude" if largest["valid_quality"] > prefix_quality else "prefix"
    choice = {"kept": kept, "prefix_valid_quality": prefix_quality, "magnitude": largest}
    if kept == "magnitude":
        return m_weights, m_valid, keep, choice
    return weights, valid, None, choice


def retrainer(ctx, pre_state):
    """One retraining to convergence from ``retrain_start``: (sizes) -> (weights, validation, seconds)."""
    if ctx.config["bet_retrain_init"] != "pretrained":
        return ctx.train_from_scratch
    keep_of = retrain_keep(ctx, pre_state)
    if keep_of is None:
        return lambda sizes: ctx.train_from(pre_state, sizes, label="from pretrained")
    return lambda sizes: ctx.train_from(pre_state, keep=keep_of(sizes), label="from pretrained, largest entries")


def retrained_entry(member, valid: dict) -> dict:
    """What the report says of one retrained action (its validation picked to the fitness metrics)."""
    return {"fitness": member.fitness, "t": member.t, "valid": pick(valid, FITNESS_METRICS),
            "valid_quality": quality(valid), "kept_params": member.kept_params}


def retrain_and_choose(top: list, train_from_scratch, done=None, on_retrained=None, evaluate_test=None):
    """Paper 3.5.2: train each top action from scratch; choose by validation quality (Eq. 13-14).

    ``train_from_scratch(sizes) -> (weights, valid metrics, seconds)``. ``done`` carries retrainings
    finished before an interruption ({"entries", "best", "weights"}); ``on_retrained(entries, best_rank,
    best_weights)`` is called after each one (to checkpoint). Returns the report entries, the chosen
    index and (sizes, weights, valid) of the chosen action.
    """
    logger = getLogger()
    done = done or {}
    entries = list(done.get("entries") or [])
    best_rank, best_weights = done.get("best"), done.get("weights")
    for rank, member in enumerate(top):
        if rank < len(entries):
            continue
        logger.info(f"retraining action {rank + 1}/{len(top)} (search fitness {member.fitness:.4f})")
        weights, valid, _ = train_from_scratch(member.sizes)
        entries.append(retrained_entry(member, valid))
        if evaluate_test is not None:  # reported only ("bet@1" is the first); the choice is on validation
            entries[-1]["test"] = pick(evaluate_test())
        if best_rank is None or entries[-1]["valid_quality"] > entries[best_rank]["valid_quality"]:
            best_rank, best_weights = rank, weights
        if on_retrained is not None:
            on_retrained(entries, best_rank, best_weights)
    best = entries[best_rank]
    report_entries = [dict(e, valid=pick(e["valid"])) for e in entries]
    return report_entries, best_rank, (top[best_rank].sizes, best_weights, best["valid"])


def retrain_halving(top: list, ctx, start_state: dict, first_epochs: int, evaluate_test=None, keep_of=None):
    """Successive halving over the top actions: every action trains ``first_epochs`` epochs, the better half
    (by validation quality, as the final choice) trains on to twice as many in all, and so on; the last one left
    trains to convergence. Each action's training is one continued training (its optimiser and convergence
    test carry over between its parts), from ``start_state`` with its sizes, reseeded as ``retrain_and_choose``
    reseeds each training, so the first part of every action is the first epochs of its full retraining.
    ``keep_of`` (``retrain_keep``) turns sizes into element masks. Returns what ``retrain_and_choose`` returns;
    each entry adds ``epochs`` and the ``round`` it stopped in."""
    logger, config, trimmer = getLogger(), ctx.config, ctx.trimmer
    keeps = [None if keep_of is None else keep_of(member.sizes) for member in top]
    # with trim_columns (LightGCN) each action trains on a model as wide as its kept columns (trimming.py),
    # built here, before any reseeding
    columns = [trimmer.columns(member.sizes, keep) for member, keep in zip(top, keeps)]
    trainings = [ContinuedTraining(config, ctx.model if c is None else trimmer.narrow(len(c)).model,
                                   ctx.train_data, ctx.valid_data) for c in columns]

    def full_layout(rank: int, state: dict) -> dict:
        return state if columns[rank] is None else trimmer.widen(state, columns[rank])

    weights, rounds = [start_state] * len(top), {}
    alive, until, round_no = list(range(len(top))), first_epochs, 0
    while alive:
        last = len(alive) == 1
        for rank in alive:
            # the first part starts as a full retraining starts; a later part gets its own seed
            seed = None if round_no == 0 else config["seed"] + 7919 * round_no + rank
            target, _ = trimmer.place(weights[rank], top[rank].sizes, keeps[rank], reseed=lambda: ctx.reseed(seed))
            trainings[rank].advance(trainings[rank].cap if last else until)
            weights[rank] = full_layout(rank, plain_state_dict(target.model))
            rounds[rank] = round_no
        logger.info(f"halving round {round_no}: {len(alive)} action(s) at {max(t.epochs for t in trainings)} "
                    "epochs at most")
        if last:
            break
        by_quality = sorted(alive, key=lambda r: -quality(trainings[r].best_valid))
        alive = sorted(by_quality[: (len(alive) + 1) // 2])
        until, round_no = 2 * until, round_no + 1
    entries, best_rank = [], None
    for rank, (member, training) in enumerate(zip(top, trainings)):
        entries.append(dict(retrained_entry(member, training.best_valid), epochs=training.epochs,
                            round=rounds[rank]))
        if evaluate_test is not None:  # reported only; the choice is on validation
            ctx.masked.load(full_layout(rank, training.trainer.best_state), member.sizes, keeps[rank])
            entries[-1]["test"] = pick(evaluate_test())
        ctx.trainings.append(training.record(f"halving, action {rank + 1}"))
        if columns[rank] is not None:
            ctx.trainings[-1]["columns"] = len(columns[rank])
        if best_rank is None or entries[-1]["valid_quality"] > entries[best_rank]["valid_quality"]:
            best_rank = rank
    report_entries = [dict(e, valid=pick(e["valid"])) for e in entries]
    return report_entries, best_rank, (top[best_rank].sizes,
                                       full_layout(best_rank, trainings[best_rank].trainer.best_state),
                                       entries[best_rank]["valid"])


# optimiser steps of one probe in the paper's setting: Gowalla's 513,685 training interactions at batch 10,000
# (52 steps per epoch) for 10 epochs; "auto" scales the probe batch so that smaller data keeps that many steps
PAPER_PROBE_STEPS = 520
AUTO_BATCH_BOUNDS = (128, 10000)


def finetune_batch_size(config, steps_per_epoch: int) -> int:
    """``bet_finetune_batch_size``, or for ``auto`` the batch that gives a probe about PAPER_PROBE_STEPS steps,
    from the training loader's ``steps_per_epoch`` at ``train_batch_size`` (bounded: at most the paper's 10,000,
    at least 128)."""
    value = config["bet_finetune_batch_size"]
    if value != "auto":
        return int(value)
    rows = steps_per_epoch * config["train_batch_size"]  # rows per epoch, negatives included where the loader adds them
    batch = round(rows * config["bet_finetune_epochs"] / PAPER_PROBE_STEPS)
    return int(min(max(batch, AUTO_BATCH_BOUNDS[0]), AUTO_BATCH_BOUNDS[1]))


def fitness_loader(ctx):
    """Validation users that fitness is scored on: all, or a fixed random ``bet_fitness_users`` fraction."""
    fraction = ctx.config["bet_fitness_users"]
    if fraction >= 1:
        return ctx.valid_data
    return validation_subset(ctx.config, ctx.valid_data, fraction, ctx.config["seed"])


def anchor_actions(ctx) -> list:
    """(name, sizes) of each ``bet_anchors`` entry: one-size-per-side actions the search probes first, so that
    its population holds them whatever the sampler reaches (docs/deviations.md)."""
    return [(name, one_size_per_side(name, ctx.budget, ctx.user_freq, ctx.item_freq))
            for name in anchor_names(ctx.config)]


def build_search(ctx, probe) -> SearchLoop:
    """Sampler, predictor and its trainer wired into a search loop, seeded from the config."""
    config = ctx.config
    seed = config["seed"]
    torch.manual_seed(seed)
    sampler = ActionSampler(ctx.budget, ctx.user_freq, ctx.item_freq, beta_max=config["bet_beta_max"],
                            mode=config["bet_sampler"], draw=config["bet_distribution_draw"],
                            sides=config["bet_sides"])
    predictor = build_predictor(config["bet_predictor"], ctx.user_freq, ctx.item_freq, ctx.budget.d_max)
    generator = torch.Generator().manual_seed(seed)
    trainer = PredictorTrainer(predictor, lr=config["bet_predictor_lr"],
                               batch_size=config["bet_predictor_batch_size"],
                               updates_per_iteration=config["bet_predictor_updates"], generator=generator)
    return SearchLoop(sampler, predictor, trainer, probe, config["bet_candidates"], seed,
                      selection=config["bet_selection"], anchors=anchor_actions(ctx))
