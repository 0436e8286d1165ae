"""PEP, SSEDS and magprune: element masks within the budget, masked entries zero, exported with their index and
reproducing the reported metrics; the budget cuts and the saliency are checked on their own."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.nn.utils import parametrize

from conftest import make_context
from recbole_bet.budget import (Budget, budget_params, keep_top_columns, keep_top_entries,
                                keep_top_entries_per_row)
from recbole_bet.export import load_artifact, read_artifact
from recbole_bet.methods.pep import SoftThreshold
from recbole_bet.methods.sseds import saliency_gradients
from recbole_bet.training import pick


def _budget(n_users, n_items, d_max, d_min, sparsity):
    return Budget(n_users, n_items, d_max, d_min, 1, sparsity)


@settings(max_examples=60, deadline=None)
@given(n_users=st.integers(1, 12), n_items=st.integers(1, 12), d_max=st.integers(1, 16), d_min=st.integers(1, 4),
       sparsity=st.floats(0.01, 0.99), seed=st.integers(0, 10_000), ties=st.booleans())
def test_keep_top_entries_fills_the_budget_with_the_best_entries(n_users, n_items, d_max, d_min, sparsity, seed, ties):
    d_min = min(d_min, d_max)
    b = _budget(n_users, n_items, d_max, d_min, sparsity)
    if b.budget_params < b.min_params:
        return
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 3, size=(b.n_entities, d_max)) if ties else rng.normal(size=(b.n_entities, d_max))
    keep = keep_top_entries(scores, b)
    sizes = keep.sum(axis=1)
    assert b.fits(sizes)
    assert sizes.sum() == b.budget_units  # nothing of the budget is left unused
    # beyond each row's d_min forced entries, no dropped entry beats a kept one
    order = np.argsort(-scores, axis=1, kind="stable")
    forced = np.zeros_like(keep)
    forced[np.arange(b.n_entities)[:, None], order[:, :d_min]] = True
    free_kept = scores[keep & ~forced]
    dropped = scores[~keep]
    if free_kept.size and dropped.size:
        assert free_kept.min() >= dropped.max()


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 20), width=st.integers(1, 16), seed=st.integers(0, 10_000), ties=st.booleans())
def test_keep_top_entries_per_row_keeps_each_rows_size_in_its_best_columns(n, width, seed, ties):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 3, size=(n, width)) if ties else rng.normal(size=(n, width))
    sizes = rng.integers(0, width + 1, size=n)
    keep = keep_top_entries_per_row(scores, sizes)
    assert (keep.sum(axis=1) == sizes).all()
    for row, k, s in zip(keep, sizes, scores):
        if 0 < k < width:
            assert s[row].min() >= s[~row].max()
            # ties go to the lower column: the kept columns are the first k of a stable descending order
            assert set(np.flatnonzero(row)) == set(np.argsort(-s, kind="stable")[:k])
    with pytest.raises(ValueError):
        keep_top_entries_per_row(scores, np.full(n, width + 1))


@settings(max_examples=60, deadline=None)
@given(n_users=st.integers(1, 40), n_items=st.integers(1, 40), d_max=st.integers(1, 16), d_min=st.integers(1, 4),
       sparsity=st.floats(0.01, 0.99), seed=st.integers(0, 10_000))
def test_keep_top_columns_is_greedy_within_the_budget(n_users, n_items, d_max, d_min, sparsity, seed):
    d_min = min(d_min, d_max)
    b = _budget(n_users, n_items, d_max, d_min, sparsity)
    if b.budget_params < b.min_params:
        return
    rng = np.random.default_rng(seed)
    sal_u, sal_i = rng.random(d_max), rng.random(d_max)
    keep = keep_top_columns(sal_u, sal_i, b)
    assert b.fits(keep.sum(axis=1))
    assert (keep[:n_users] == keep[0]).all() and (keep[n_users:] == keep[-1]).all()  # one set per field
    user_dims, item_dims = keep[0], keep[-1]
    left = b.budget_units - b.kept_params(keep.sum(axis=1))
    # greedy: every dimension left out is too expensive for what is left
    assert all(n_users > left for j in range(d_max) if not user_dims[j])
    assert all(n_items > left for j in range(d_max) if not item_dims[j])


def test_soft_threshold_is_peps_formula_and_leaves_the_stock_parameter_behind():
    ctx = make_context("LightGCN", "/tmp/recbole-bet-test-pruning", method="pep", epochs=1)
    table = ctx.masked.tables[0].module
    weight = table.weight
    threshold = SoftThreshold((weight.shape[0], 1), -2.0)
    parametrize.register_parametrization(table, "weight", threshold)
    raw = table.parametrizations.weight.original
    gate = torch.sigmoid(torch.tensor(-2.0))
    expected = torch.sign(raw) * torch.clamp(raw.abs() - gate, min=0)
    assert torch.allclose(table.weight, expected)
    assert (table.weight[raw.abs() <= gate] == 0).all()
    parametrize.remove_parametrizations(table, "weight", leave_parametrized=False)
    assert table.weight is weight and hasattr(table.weight, "_bet_mask")  # mask hook still attached


def test_saliency_is_the_gradient_of_the_loss_with_respect_to_a_mask_at_one(tmp_path):
    ctx = make_context("LightGCN", tmp_path, method="sseds", epochs=1)
    ctx.reseed(7)
    grads = saliency_gradients(ctx, batches=1)
    # the same with an explicit mask alpha = 1 on every table, differentiated with respect to alpha
    alphas = {}
    for t in ctx.masked.tables:
        class Alpha(torch.nn.Module):
            def __init__(self, shape):
                super().__init__()
                self.alpha = torch.nn.Parameter(torch.ones(shape))

            def forward(self, w):
                return w * self.alpha
        alphas[t.name] = Alpha(t.module.weight.shape)
        parametrize.register_parametrization(t.module, "weight", alphas[t.name])
    ctx.reseed(7)
    ctx.model.train()
    loss = ctx.model.calculate_loss(next(iter(ctx.train_data)).to(ctx.config["device"]))
    loss.backward()
    for t in ctx.masked.tables:
        expected = alphas[t.name].alpha.grad.numpy()
        assert np.abs(expected).max() > 0
        np.testing.assert_allclose(grads[t.name], expected, rtol=1e-4, atol=1e-9)
        parametrize.remove_parametrizations(t.module, "weight", leave_parametrized=False)


RUNS = [(m, method) for m in ("LightGCN", "NGCF", "NeuMF") for method in ("pep", "sseds", "magprune")]


@pytest.mark.parametrize("model,method", RUNS)
def test_pruned_artifact_reproduces_metrics_within_budget(cli_run, tmp_path, model, method):
    run = cli_run(model, method)
    assert run.proc.returncode == 0, run.proc.stderr[-3000:]
    report = json.loads(run.report.read_text())
    assert report["method"] == method
    assert report["kept_params"] <= report["budget_params"]
    assert report["search"]["kept_units_users"] + report["search"]["kept_units_items"] == \
        report["kept_params"] // report["tables_per_entity"]

    ctx = make_context(model, tmp_path, method=method, epochs=1)
    load_artifact(str(run.table), ctx.model, ctx.masked, model, "ml-100k")
    keep = ctx.masked.keep
    assert keep is not None and ctx.budget.fits(keep.sum(axis=1))
    assert ctx.budget.kept_params(keep.sum(axis=1)) == report["kept_params"]
    prefix = np.arange(128)[None, :] < keep.sum(axis=1)[:, None]
    assert not np.array_equal(keep, prefix)  # really element masks, not prefixes
    for t in ctx.masked.tables:  # masked entries are exactly zero, padding row included
        rows = ctx.masked.row_keep(t.entity)
        assert (t.module.weight.detach().numpy()[~rows] == 0).all()
    assert pick(ctx.evaluate(ctx.valid_data)) == report["valid"]
    assert pick(ctx.evaluate(ctx.test_data)) == report["test"]

    # the column index is stored, counted and compact (uint8 for d_max 128)
    meta, arrays = read_artifact(str(run.table))
    value_bytes = index_bytes = 0
    for table in meta["tables"]:
        index = arrays[f"table.{table['name']}.index"]
        values = arrays[f"table.{table['name']}.values"]
        assert index.dtype == np.uint8 and index.shape == values.shape
        value_bytes, index_bytes = value_bytes + values.nbytes, index_bytes + index.nbytes
    assert value_bytes == 4 * report["kept_params"] and index_bytes == report["kept_params"]
    assert report["artifact_bytes"] > value_bytes + index_bytes


def test_sseds_field_keeps_whole_dimensions_and_row_keeps_entries(tmp_path):
    from conftest import QUICK, run_cli

    runs = {}
    for granularity in ("field", "row"):
        out = tmp_path / granularity
        proc = run_cli("--model=LightGCN", "--dataset=ml-100k", "--method=sseds", f"--config_files={QUICK}",
                       "--epochs=1", f"--sseds_granularity={granularity}", f"--output_dir={out}",
                       f"--pretrain_cache_dir={tmp_path / 'pretrain'}", "--sparsity=0.95")
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[granularity] = json.loads((out / "report.json").read_text())
    field = runs["field"]["search"]
    # every user keeps the same user_dims entries, every item the same item_dims entries
    assert field["kept_units_users"] == 943 * field["user_dims"]
    assert field["kept_units_items"] == 1682 * field["item_dims"]
    row = runs["row"]
    assert row["kept_params"] == row["budget_params"] == budget_params(0.95, 128, 943, 1682, 1)
    assert row["search"]["saliency_batches"] is None  # one epoch


def test_pep_meets_a_memory_budget_with_its_index(tmp_path):
    from conftest import QUICK, run_cli

    out = tmp_path / "pep-mem"
    proc = run_cli("--model=LightGCN", "--dataset=ml-100k", "--method=pep", f"--config_files={QUICK}", "--epochs=1",
                   "--memory_budget=200KB", f"--output_dir={out}", "--pep_threshold_granularity=dimension")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["artifact_bytes"] <= report["memory_budget"] == 200_000
    # 5 bytes per kept parameter (value + column): a prefix method fits more parameters in the same bytes
    assert report["kept_params"] < (200_000 - 16_000) // 4
    assert report["search"]["threshold_granularity"] == "dimension"


def test_bet_largest_entries_retraining_keeps_each_rows_largest_pretrained_entries(tmp_path):
    """bet_retrain_columns=magnitude: the chosen action's rows keep their largest pretrained entries (an element
    mask of its sizes), stored with their columns, within a memory budget that counts them, and the artifact
    reproduces the reported metrics."""
    from conftest import QUICK, run_cli
    from recbole_bet.masking import magnitudes

    out = tmp_path / "bet-magnitude"
    proc = run_cli("--model=LightGCN", "--dataset=ml-100k", "--method=bet", f"--config_files={QUICK}", "--epochs=1",
                   "--bet_retrain_columns=magnitude", "--memory_budget=200KB", f"--output_dir={out}",
                   f"--pretrain_cache_dir={tmp_path / 'pretrain'}", f"--checkpoint_dir={tmp_path / 'ckpt'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["search"]["retrain_columns"] == "magnitude"
    assert report["artifact_bytes"] <= report["memory_budget"] == 200_000
    assert report["kept_params"] < (200_000 - 16_000) // 4  # 5 bytes a kept parameter, as for PEP

    ctx = make_context("LightGCN", tmp_path, method="bet", epochs=1)
    load_artifact(str(out / "table.npz"), ctx.model, ctx.masked, "LightGCN", "ml-100k")
    keep = ctx.masked.keep
    sizes = keep.sum(axis=1)
    assert ctx.budget.kept_params(sizes) == report["kept_params"]
    (cache,) = (tmp_path / "pretrain").glob("*.pt")
    pre_state = torch.load(cache, map_location="cpu", weights_only=True)["state"]
    assert np.array_equal(keep, keep_top_entries_per_row(magnitudes(ctx.masked, pre_state), sizes))
    assert not np.array_equal(keep, np.arange(128)[None, :] < sizes[:, None])  # not the first columns
    assert pick(ctx.evaluate(ctx.valid_data)) == report["valid"]
    assert pick(ctx.evaluate(ctx.test_data)) == report["test"]


def test_bet_choose_keeps_the_better_columns_of_the_chosen_action_on_validation(tmp_path):
    """bet_retrain_columns=choose: the top actions retrain with their first columns, the chosen one once more with
    its largest pretrained entries, and the model with the higher validation quality is the run's (exported with
    a column index only if it keeps the largest entries). bet_reuse_run gives the same run from a finished run
    that kept first columns, at one training; it refuses a run of another configuration or one that chose."""
    from conftest import QUICK, run_cli

    out = tmp_path / "bet-choose"
    common = ("--model=LightGCN", "--dataset=ml-100k", "--method=bet", f"--config_files={QUICK}", "--epochs=1",
              f"--pretrain_cache_dir={tmp_path / 'pretrain'}", f"--checkpoint_dir={tmp_path / 'ckpt'}")
    proc = run_cli(*common, "--bet_retrain_columns=choose", f"--output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    search = report["search"]
    choice = search["columns_choice"]
    prefix_quality = search["retrained"][search["chosen"]]["valid_quality"]
    assert choice["prefix_valid_quality"] == prefix_quality
    larger = choice["magnitude"]["valid_quality"] > prefix_quality
    assert choice["kept"] == ("magnitude" if larger else "prefix")
    kept = choice["magnitude"] if larger else search["retrained"][search["chosen"]]
    assert report["valid"] == kept["valid"]
    assert set(choice["magnitude"]["test"]) >= {"recall@20", "ndcg@20"}
    assert [t["label"] for t in report["trainings"]][-1] == "from pretrained, largest entries"

    ctx = make_context("LightGCN", tmp_path, method="bet", epochs=1)
    load_artifact(str(out / "table.npz"), ctx.model, ctx.masked, "LightGCN", "ml-100k")
    assert (ctx.masked.keep is not None) == larger
    _, arrays = read_artifact(str(out / "table.npz"))
    assert any(k.endswith(".index") for k in arrays) == larger
    assert pick(ctx.evaluate(ctx.valid_data)) == report["valid"]
    assert pick(ctx.evaluate(ctx.test_data)) == report["test"]

    # bet_reuse_run: a finished run that kept first columns, plus choose's one training, is the fresh choose run
    first = tmp_path / "bet-prefix"
    proc = run_cli(*common, "--bet_retrain_columns=prefix", f"--output_dir={first}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    prefix = json.loads((first / "report.json").read_text())
    assert prefix["search"]["retrained"] == search["retrained"] and "columns_choice" not in prefix["search"]
    refused = run_cli(*common, "--bet_retrain_columns=choose", "--seed=7", f"--bet_reuse_run={first}",
                      f"--output_dir={tmp_path / 'other-seed'}")
    assert refused.returncode == 2 and "another configuration (seed differ)" in refused.stderr.splitlines()[-1]
    assert not (tmp_path / "other-seed").exists()
    proc = run_cli(*common, "--bet_retrain_columns=choose", f"--bet_reuse_run={first}", f"--output_dir={first}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    reused = json.loads((first / "report.json").read_text())
    assert reused["search"]["reused_from"] == str(first)
    assert reused["search"]["columns_choice"] == choice and reused["search"]["retrained"] == search["retrained"]
    assert (reused["valid"], reused["test"], reused["sizes"]) == (report["valid"], report["test"], report["sizes"])
    assert [t["label"] for t in reused["trainings"]] == [t["label"] for t in report["trainings"]]
    assert reused["timings_s"]["search"] == prefix["timings_s"]["search"]
    again = run_cli(*common, "--bet_retrain_columns=choose", f"--bet_reuse_run={first}",
                    f"--output_dir={tmp_path / 'twice'}")
    assert again.returncode == 2 and "would add nothing" in again.stderr
