"""Search checkpoints: written atomically after every iteration and every retraining, read safely.

A checkpoint is a dict of tensors, plain Python values and one JSON string, saved with ``torch.save``
and read with ``torch.load(weights_only=True)``: nothing is unpickled. RNG states need not be saved:
every iteration and every from-scratch training reseeds from (seed, iteration).
"""
from __future__ import annotations

import json
import os

import torch

from recbole_bet.errors import BadInput
from recbole_bet.files import atomic_write
from recbole_bet.methods.base import CHECKPOINT_FILENAME

FILENAME = CHECKPOINT_FILENAME
VERSION = 1
# keys added after checkpoints (and finished runs' records) were written, at the values those runs ran with (the
# behaviour before the key existed): left out of a run's identity while at them, so that those runs still match
LATER_KEYS_DEFAULTS = {"bet_sides": "independent", "bet_probe_seed": "per_iteration", "bet_anchors": [],
                       "bet_retrain_columns": "prefix"}


def save(path: str, meta: dict, tensors: dict) -> None:
    """Write then rename: a kill at any moment leaves either the old or the new checkpoint whole."""
    with atomic_write(path) as fh:
        torch.save({"meta": json.dumps(dict(meta, version=VERSION), sort_keys=True), **tensors}, fh)


def load(path: str) -> tuple[dict, dict]:
    """(meta, tensors) of a checkpoint; BadInput if it is missing, truncated or not ours."""
    if not os.path.isfile(path):
        raise BadInput(f"no checkpoint {path} to resume from; give --resume the output_dir of an interrupted run")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        meta = json.loads(data.pop("meta"))
    except Exception as exc:  # truncated zip, foreign pickle (refused by weights_only), bad JSON
        raise BadInput(
            f"checkpoint {path} is damaged or not a recbole-bet checkpoint ({type(exc).__name__}); "
            "start the run again without --resume"
        ) from None
    if not isinstance(meta, dict) or meta.get("version") != VERSION:
        raise BadInput(f"checkpoint {path} has an unknown format; start the run again without --resume")
    return meta, data


def check_same_run(meta: dict, identity: dict, path: str) -> None:
    """Refuse to resume a checkpoint written with another model, dataset, sparsity, method or config."""
    saved = meta.get("identity", {})
    differ = sorted(k for k in set(saved) | set(identity) if saved.get(k) != identity.get(k))
    if differ:
        shown = ", ".join(f"{k}: {saved.get(k)!r} there, {identity.get(k)!r} now" for k in differ[:4])
        raise BadInput(
            f"cannot resume {os.path.dirname(path)}: it was written with a different configuration ({shown}); "
            "resume with the same arguments or start a new run"
        )
