"""The exported table.npz: pickle-free, compact, and reproducing the reported metrics in a fresh model."""

import json
import pickle

import numpy as np
import pytest

from conftest import make_context
from recbole_bet.errors import BadInput
from recbole_bet.export import load_artifact, read_artifact
from recbole_bet.training import pick

RUNS = [(m, s) for m in ("LightGCN", "NGCF", "NeuMF") for s in ("es", "mr")]


@pytest.mark.parametrize("model,method", RUNS)
def test_artifact_reproduces_reported_metrics(cli_run, tmp_path, model, method):
    run = cli_run(model, method)
    assert run.proc.returncode == 0, run.proc.stderr[-3000:]
    report = json.loads(run.report.read_text())

    ctx = make_context(model, tmp_path, method=method, epochs=1)  # a fresh model, as the run was configured
    meta = load_artifact(str(run.table), ctx.model, ctx.masked, model, "ml-100k")
    assert (meta["model"], meta["dataset"], meta["method"]) == (model, "ml-100k", method)
    assert ctx.budget.kept_params(ctx.masked.sizes) == report["kept_params"]
    assert ctx.budget.fits(ctx.masked.sizes)
    if method == "es":  # the equal size, and one more for the most frequent rows (the fill rule)
        sizes = sorted(set(ctx.masked.sizes.tolist()))
        assert len(sizes) <= 2 and sizes[-1] - sizes[0] <= 1
    else:
        assert len(set(ctx.masked.sizes.tolist())) > 10

    assert pick(ctx.evaluate(ctx.valid_data)) == report["valid"]
    assert pick(ctx.evaluate(ctx.test_data)) == report["test"]


@pytest.mark.parametrize("model,method", [("NeuMF", "mr"), ("LightGCN", "mr")])
def test_artifact_layout_is_compact_and_pickle_free(cli_run, model, method):
    run = cli_run(model, method)
    report = json.loads(run.report.read_text())
    with np.load(run.table, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    assert all(a.dtype != object for a in arrays.values())
    meta = json.loads(str(arrays["meta"]))
    assert (meta["n_users"], meta["n_items"], meta["d_max"]) == (943, 1682, 128)
    assert len(meta["tables"]) == 2 * report["tables_per_entity"]
    kept = 0
    sizes_by_entity = {}
    for table in meta["tables"]:
        sizes = arrays[f"table.{table['name']}.sizes"].astype(np.int64)
        values = arrays[f"table.{table['name']}.values"]
        assert sizes.shape == (table["rows"],) == ((944,) if table["entity"] == "user" else (1683,))
        assert sizes[0] == 0 and sizes[1:].min() >= 1 and sizes.max() <= 128
        assert values.dtype == np.float32 and values.shape == (sizes.sum(),)
        sizes_by_entity.setdefault(table["entity"], []).append(sizes)
        kept += int(sizes.sum())
    for same_entity in sizes_by_entity.values():  # NeuMF's GMF and MLP tables share their sizes
        assert all(np.array_equal(same_entity[0], s) for s in same_entity)
    assert kept == report["kept_params"]
    # only other model weights are stored densely: never a full-width user/item table
    assert not any(k.startswith("param.") and k.endswith("embedding.weight") for k in arrays)
    assert read_artifact(str(run.table))[0] == meta


@pytest.fixture(scope="module")
def lightgcn(tmp_path_factory):
    return make_context("LightGCN", tmp_path_factory.mktemp("lightgcn-export"), method="es")


def test_artifact_of_another_model_or_dataset_is_refused(cli_run, lightgcn):
    ctx = lightgcn
    own = str(cli_run("LightGCN", "es").table)
    with pytest.raises(BadInput, match="exported for model LightGCN on dataset ml-100k, not NGCF"):
        load_artifact(own, ctx.model, ctx.masked, "NGCF", "ml-100k")
    with pytest.raises(BadInput, match="not LightGCN on yelp2018"):
        load_artifact(own, ctx.model, ctx.masked, "LightGCN", "yelp2018")
    ngcf = str(cli_run("NGCF", "es").table)  # same table shapes, other model
    with pytest.raises(BadInput, match="exported for model NGCF"):
        load_artifact(ngcf, ctx.model, ctx.masked, "LightGCN", "ml-100k")
    with pytest.raises(BadInput, match="does not exist"):
        load_artifact(own + ".missing", ctx.model, ctx.masked, "LightGCN", "ml-100k")


class _Payload:
    """Unpickling this creates ``marker``: proof that something was unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.mkdir, (self.marker,)


def test_pickles_are_refused_unopened(tmp_path, lightgcn):
    ctx = lightgcn
    marker = tmp_path / "unpickled"
    meta = np.array(json.dumps({"model": "LightGCN", "dataset": "ml-100k", "n_users": 943, "n_items": 1682,
                                "d_max": 128}))
    crafted = {}
    crafted["raw_pickle.npz"] = pickle.dumps(_Payload(marker))
    with open(tmp_path / "object_array.npz", "wb") as fh:  # a .npy of an object array, named .npz
        np.save(fh, np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "zip_with_object.npz", meta=meta, evil=np.array([_Payload(marker)], dtype=object))
    for name, payload in crafted.items():
        (tmp_path / name).write_bytes(payload)
    for name in ("raw_pickle.npz", "object_array.npz", "zip_with_object.npz"):
        with pytest.raises(BadInput, match="not a valid recbole-bet artifact"):
            load_artifact(str(tmp_path / name), ctx.model, ctx.masked, "LightGCN", "ml-100k")
        assert not marker.exists(), f"{name} was unpickled"


def test_damaged_artifacts_give_bad_input(tmp_path, cli_run, lightgcn):
    ctx = lightgcn
    good = dict(np.load(cli_run("LightGCN", "es").table, allow_pickle=False))
    meta = json.loads(str(good["meta"]))
    cases = {
        "garbage.npz": None,
        "no_meta.npz": {k: v for k, v in good.items() if k != "meta"},
        "bad_meta.npz": dict(good, meta=np.array("{not json")),
        "missing_table.npz": {k: v for k, v in good.items() if not k.startswith("table.item_embedding.")},
        "short_values.npz": dict(good, **{"table.user_embedding.values": good["table.user_embedding.values"][:-1]}),
        "oversized.npz": dict(good, **{"table.user_embedding.sizes": np.full(944, 200, dtype=np.uint8)}),
        "other_shape.npz": dict(good, meta=np.array(json.dumps(dict(meta, n_items=1000)))),
    }
    for name, arrays in cases.items():
        path = tmp_path / name
        if arrays is None:
            path.write_bytes(b"PK\x03\x04 definitely not a zip file")
        else:
            np.savez(path, **arrays)
        with pytest.raises(BadInput):
            load_artifact(str(path), ctx.model, ctx.masked, "LightGCN", "ml-100k")
