"""Pretraining the full-width model once, cached across runs.

The cache key is a hash of every config entry that shapes pretraining (model, dataset, seed, split,
training keys, ...; not the method, sparsity or search keys), so BET runs at other sparsities or with
other search settings on the same model, data and seed reuse it. The file holds tensors only and is
read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import hashlib
import json
import os
from logging import getLogger
from time import perf_counter

import torch

from recbole_bet.config import pretrain_key_items
from recbole_bet.files import atomic_write, exclusive_lock
from recbole_bet.masking import plain_state_dict


def cache_path(config, variant: str = "", suffix: str = ".pt") -> str:
    """Cache file of the pretraining config; ``variant`` names another training of the same model and data
    (RULE's training with its regulariser, or RULE's estimator pairs) so it gets a key of its own."""
    items = json.dumps(pretrain_key_items(config), sort_keys=True, default=str) + variant
    digest = hashlib.sha1(items.encode()).hexdigest()[:16]
    tag = f"-{variant.split(':')[0]}" if variant else ""
    name = f"{config['model']}-{config['dataset']}-seed{config['seed']}{tag}-{digest}{suffix}"
    return os.path.join(config["pretrain_cache_dir"], name)


def _load(path: str):
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return saved["state"], saved["valid"], saved.get("training")
    except Exception as exc:  # a truncated or foreign file is a cache miss, never a crash
        getLogger().warning(f"ignoring unreadable pretrain cache {path}: {exc}")
        return None


def _save(path: str, state: dict, valid: dict, training: dict | None) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with atomic_write(path) as fh:
        torch.save({"state": {k: v.cpu() for k, v in state.items()}, "valid": valid,
                    "training": json.dumps(training)}, fh)


def pretrained(ctx, variant: str = "", train=None) -> tuple[dict, dict, float]:
    """(stock-layout weights, validation metrics, seconds spent) of the full-width model.

    ``train(ctx) -> valid`` replaces plain training to convergence (it leaves the trained weights in
    ``ctx.model``); such a training must come with its own ``variant`` so the two never share a file.

    Runs that share a pretraining may start together (a grid's cells on Ray, two harnesses at once): the
    first takes a lock beside the cache file and trains, the others wait for it and load its file. Their
    seconds spent count from the end of the wait."""
    start = perf_counter()
    path = cache_path(ctx.config, variant)
    logger = getLogger()
    label = f"pretrain {variant.split(':')[0]}".strip()
    cached = _load(path) if os.path.isfile(path) else None
    if cached is None:
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        except OSError:
            pass  # the lock and the cache are optimisations: a read-only disk must not stop the run

        def waiting():
            logger.info(f"waiting for another run that is pretraining the same model ({path})")

        with exclusive_lock(f"{path}.lock", on_wait=waiting):
            start = perf_counter()
            cached = _load(path) if os.path.isfile(path) else None
            if cached is None:
                return _pretrain(ctx, path, label, train, start)
    state, valid, training = cached
    logger.info(f"pretrained model loaded from cache {path}")
    training = json.loads(training) if training else None
    ctx.trainings.append(dict({"label": label}, **(training or {}), cached=True))
    return state, valid, perf_counter() - start


def _pretrain(ctx, path: str, label: str, train, start: float) -> tuple[dict, dict, float]:
    logger = getLogger()
    logger.info("pretraining the full-width model to convergence")
    ctx.reseed()
    ctx.masked.load(ctx.init_state)
    before = len(ctx.trainings)
    result = train(ctx) if train is not None else ctx.train_to_convergence(label)
    valid = {k: float(v) for k, v in result.items()}
    state = plain_state_dict(ctx.model)
    training = ctx.trainings[before] if len(ctx.trainings) > before else None
    try:
        _save(path, state, valid, training)
    except OSError as exc:  # the cache is an optimisation: a read-only disk must not stop the run
        logger.warning(f"could not cache the pretrained model at {path}: {exc}")
    return state, valid, perf_counter() - start
