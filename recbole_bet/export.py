"""The compact artifact ``table.npz``: per-row sizes and only the kept values of every masked table.

Layout (numpy ``.npz``, no pickled objects, loadable with ``allow_pickle=False``):
- ``meta``: a JSON string (model, dataset, d_max, n_users, n_items, tables, ...);
- ``table.<name>.sizes``: per-row sizes, padding row (size 0) included;
- ``table.<name>.values``: float32, the kept entries of each row, rows concatenated;
- ``table.<name>.index`` (element masks only: PEP, SSEDS, RULE): the column of every kept value, so a
  row's kept entries need not be a prefix; absent for prefix masks (a row keeps its first ``size``);
- ``param.<key>``: every other parameter/buffer of the model (GNN or MLP weights), so a fresh model
  loaded from the artifact scores exactly like the one that was evaluated;
- ``meta["scoring"]`` (RULE with ``rule_scoring: eq2`` only): the block scoring of ``recbole_bet/scoring.py``,
  installed again on load.
"""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import torch

from recbole_bet.budget import index_bytes
from recbole_bet.errors import BadInput
from recbole_bet.files import atomic_write
from recbole_bet.masking import MaskedTables, plain_state_dict
from recbole_bet.scoring import apply_scoring_spec, scoring_spec

FORMAT_VERSION = 1


def _prefix(sizes: np.ndarray, width: int) -> np.ndarray:
    return np.arange(width)[None, :] < sizes[:, None]


def _index_dtype(d_max: int):
    return np.uint8 if index_bytes(d_max) == 1 else np.uint16


def _expand(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    dense = np.zeros(keep.shape, dtype=np.float32)
    dense[keep] = values  # row-major: row by row, each row's kept entries in column order
    return dense


def save_artifact(path: str, model, masked: MaskedTables, meta: dict, empty: bool = False,
                  element_masks: bool | None = None) -> int:
    """Write the artifact atomically; returns its size in bytes. ``empty``: every size 0 (no kept value),
    to measure the artifact's fixed part; ``element_masks`` (default: whether ``masked`` has them) adds
    the column index of every kept value."""
    state = plain_state_dict(model)
    arrays = {}
    size_dtype = np.uint8 if masked.d_max <= 255 else np.uint16
    if element_masks is None:
        element_masks = masked.keep is not None
    table_names = []
    for t in masked.tables:
        sizes = masked.row_sizes(t.entity)
        keep = masked.row_keep(t.entity) if masked.keep is not None else _prefix(sizes, masked.d_max)
        if empty:
            sizes, keep = np.zeros_like(sizes), np.zeros_like(keep)
        weight = state.pop(f"{t.name}.weight").cpu().numpy()
        arrays[f"table.{t.name}.sizes"] = sizes.astype(size_dtype)
        arrays[f"table.{t.name}.values"] = weight[keep].astype(np.float32)
        if element_masks:
            arrays[f"table.{t.name}.index"] = np.nonzero(keep)[1].astype(_index_dtype(masked.d_max))
        table_names.append({"name": t.name, "entity": t.entity, "rows": int(weight.shape[0])})
    for key, value in state.items():
        arrays[f"param.{key}"] = value.cpu().numpy()
    full_meta = dict(meta, format_version=FORMAT_VERSION, d_max=masked.d_max, tables=table_names,
                     n_users=masked.n_users, n_items=masked.n_items)
    if scoring_spec(model) is not None:  # a model that scores with Eq. 2 must load into one that does too
        full_meta["scoring"] = scoring_spec(model)
    arrays["meta"] = np.array(json.dumps(full_meta, sort_keys=True))
    with atomic_write(path) as fh:
        np.savez(fh, **arrays)
    return os.path.getsize(path)


def artifact_meta(config, budget) -> dict:
    """What the artifact records about its run (its size must not depend on the sizes chosen)."""
    return {"model": config["model"], "dataset": config["dataset"], "method": config["method"],
            "sparsity": None if budget is None else budget.sparsity, "seed": config["seed"],
            "memory_budget": config["memory_budget"]}


def artifact_overhead_bytes(model, masked: MaskedTables, meta: dict, element_masks: bool = False) -> int:
    """Bytes of this model's artifact with no kept value (sizes index, other weights, metadata, zip
    headers), plus a margin for headers that grow with the shapes; each kept parameter adds 4 bytes
    (and its column index with ``element_masks``)."""
    with tempfile.TemporaryDirectory() as tmp:
        size = save_artifact(os.path.join(tmp, "table.npz"), model, masked, meta, empty=True,
                             element_masks=element_masks)
    # npy headers are padded to 64 bytes: a longer shape string can add 64 per values/index array; meta too
    return size + 64 * ((2 if element_masks else 1) * len(masked.tables) + 2)


def read_artifact(path: str) -> tuple[dict, dict]:
    """(meta, arrays) of an artifact, never unpickling anything."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise BadInput(f"artifact {path} does not exist") from None
    except Exception as exc:  # zip, npy header or pickle refusal: all mean "not a valid artifact"
        raise BadInput(f"{path} is not a valid recbole-bet artifact ({type(exc).__name__}: {exc})") from None
    if "meta" not in arrays:
        raise BadInput(f"{path} is not a recbole-bet artifact (no meta entry)")
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise BadInput(f"{path} is not a recbole-bet artifact (its meta entry is not a JSON object)")
    return meta, arrays


def _keep_from_index(index: np.ndarray, sizes: np.ndarray, width: int) -> np.ndarray:
    index = index.astype(np.int64)
    if index.shape != (int(sizes.sum()),) or (index.size and index.max() >= width):
        raise ValueError(f"a column index of shape {index.shape} does not match sizes summing to {int(sizes.sum())}")
    keep = np.zeros((len(sizes), width), dtype=bool)
    keep[np.repeat(np.arange(len(sizes)), sizes), index] = True
    if not np.array_equal(keep.sum(axis=1), sizes):  # a repeated column within a row
        raise ValueError("the column index repeats a column within a row")
    return keep


def load_artifact(path: str, model, masked: MaskedTables, model_name: str, dataset_name: str) -> dict:
    """Load sizes and weights into ``model`` (already masked); returns the artifact's meta.

    Refuses an artifact of another model or dataset, or one whose table shapes do not match.
    """
    meta, arrays = read_artifact(path)
    if meta.get("model") != model_name or meta.get("dataset") != dataset_name:
        raise BadInput(
            f"artifact {path} was exported for model {meta.get('model')} on dataset {meta.get('dataset')}, "
            f"not {model_name} on {dataset_name}; load it with the model and dataset it was made for"
        )
    if (meta.get("n_users"), meta.get("n_items"), meta.get("d_max")) != (masked.n_users, masked.n_items, masked.d_max):
        raise BadInput(
            f"artifact {path} has {meta.get('n_users')} users, {meta.get('n_items')} items and d_max "
            f"{meta.get('d_max')}; this model has {masked.n_users}, {masked.n_items} and {masked.d_max}: "
            "the dataset or config differ"
        )
    try:  # a damaged or hand-made file must give BadInput, not a KeyError/ValueError traceback
        state = {}
        keep_of = {}
        element_masks = any(k.endswith(".index") for k in arrays)
        for t in masked.tables:
            sizes = arrays[f"table.{t.name}.sizes"].astype(np.int64)
            if sizes.shape != (t.module.num_embeddings,) or sizes.min() < 0 or sizes.max() > masked.d_max:
                raise ValueError(f"table {t.name} has sizes of shape {sizes.shape} outside [0, {masked.d_max}]")
            keep = _keep_from_index(arrays[f"table.{t.name}.index"], sizes, masked.d_max) if element_masks \
                else _prefix(sizes, masked.d_max)
            if t.entity in keep_of and not np.array_equal(keep_of[t.entity], keep):
                raise ValueError(f"the {t.entity} tables disagree on their masks")
            keep_of[t.entity] = keep
            state[f"{t.name}.weight"] = torch.from_numpy(_expand(arrays[f"table.{t.name}.values"], keep))
        for key, value in arrays.items():
            if key.startswith("param."):
                state[key[len("param."):]] = torch.from_numpy(np.array(value))
        keep = np.concatenate([keep_of["user"][1:], keep_of["item"][1:]])
        if element_masks:
            masked.load(state, keep=keep)
        else:
            masked.load(state, keep.sum(axis=1))
        apply_scoring_spec(model, masked, meta.get("scoring"))
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise BadInput(f"artifact {path} is damaged or does not fit this model ({type(exc).__name__}: {exc})") from None
    return meta
