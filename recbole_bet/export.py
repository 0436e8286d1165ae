"""The compact artifact ``table.npz``: per-row sizes and only the kept values of every masked table.

Layout (numpy ``.npz``, no pickled objects, loadable with ``allow_pickle=False``):
- ``meta``: a JSON string (model, dataset, d_max, n_users, n_items, tables, ...);
- ``table.<name>.sizes``: per-row sizes, padding row (size 0) included;
- ``table.<name>.values``: float32, the first ``size`` entries of each row, rows concatenated;
- ``param.<key>``: every other parameter/buffer of the model (GNN or MLP weights), so a fresh model
  loaded from the artifact scores exactly like the one that was evaluated.
"""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import torch

from recbole_bet.errors import BadInput
from recbole_bet.masking import MaskedTables, plain_state_dict

FORMAT_VERSION = 1


def _compact(weight: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    keep = np.arange(weight.shape[1])[None, :] < sizes[:, None]
    return weight[keep].astype(np.float32)  # row-major: row by row, each row's prefix


def _expand(values: np.ndarray, sizes: np.ndarray, width: int) -> np.ndarray:
    dense = np.zeros((len(sizes), width), dtype=np.float32)
    keep = np.arange(width)[None, :] < sizes[:, None]
    dense[keep] = values
    return dense


def save_artifact(path: str, model, masked: MaskedTables, meta: dict, empty: bool = False) -> int:
    """Write the artifact atomically; returns its size in bytes. ``empty``: every size 0 (no kept value),
    to measure the artifact's fixed part."""
    state = plain_state_dict(model)
    arrays = {}
    size_dtype = np.uint8 if masked.d_max <= 255 else np.uint16
    table_names = []
    for t in masked.tables:
        sizes = masked.row_sizes(t.entity)
        if empty:
            sizes = np.zeros_like(sizes)
        weight = state.pop(f"{t.name}.weight").cpu().numpy()
        arrays[f"table.{t.name}.sizes"] = sizes.astype(size_dtype)
        arrays[f"table.{t.name}.values"] = _compact(weight, sizes)
        table_names.append({"name": t.name, "entity": t.entity, "rows": int(weight.shape[0])})
    for key, value in state.items():
        arrays[f"param.{key}"] = value.cpu().numpy()
    full_meta = dict(meta, format_version=FORMAT_VERSION, d_max=masked.d_max, tables=table_names,
                     n_users=masked.n_users, n_items=masked.n_items)
    arrays["meta"] = np.array(json.dumps(full_meta, sort_keys=True))
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return os.path.getsize(path)


def artifact_overhead_bytes(model, masked: MaskedTables, meta: dict) -> int:
    """Bytes of this model's artifact with no kept value (sizes index, other weights, metadata, zip
    headers), plus a margin for headers that grow with the shapes; each kept parameter adds 4 bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        size = save_artifact(os.path.join(tmp, "table.npz"), model, masked, meta, empty=True)
    # npy headers are padded to 64 bytes: a longer shape string can add 64 per values array; meta text too
    return size + 64 * (len(masked.tables) + 2)


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
        sizes_of = {}
        for t in masked.tables:
            sizes = arrays[f"table.{t.name}.sizes"].astype(np.int64)
            if sizes.shape != (t.module.num_embeddings,) or sizes.min() < 0 or sizes.max() > masked.d_max:
                raise ValueError(f"table {t.name} has sizes of shape {sizes.shape} outside [0, {masked.d_max}]")
            if t.entity in sizes_of and not np.array_equal(sizes_of[t.entity], sizes):
                raise ValueError(f"the {t.entity} tables disagree on sizes")
            sizes_of[t.entity] = sizes
            state[f"{t.name}.weight"] = torch.from_numpy(
                _expand(arrays[f"table.{t.name}.values"], sizes, masked.d_max))
        for key, value in arrays.items():
            if key.startswith("param."):
                state[key[len("param."):]] = torch.from_numpy(np.array(value))
        sizes = np.concatenate([sizes_of["user"][1:], sizes_of["item"][1:]])
        masked.load(state, sizes)
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise BadInput(f"artifact {path} is damaged or does not fit this model ({type(exc).__name__}: {exc})") from None
    return meta
