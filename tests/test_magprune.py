"""magprune: the largest-magnitude entries of the pretrained tables, a per-row minimum chosen on validation,
and (optionally) one retraining from the kept weights."""

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import QUICK, check_refused, make_context, run_cli
from recbole_bet.budget import Budget, feasible_row_minimums, keep_top_entries
from recbole_bet.export import load_artifact


@settings(max_examples=60, deadline=None)
@given(n_users=st.integers(1, 12), n_items=st.integers(1, 12), d_max=st.integers(1, 16),
       floor=st.integers(1, 8), sparsity=st.floats(0.01, 0.99), seed=st.integers(0, 10_000))
def test_every_row_keeps_its_minimum_and_the_rest_goes_to_the_largest(n_users, n_items, d_max, floor, sparsity, seed):
    b = Budget(n_users, n_items, d_max, 1, 1, sparsity)
    scores = np.random.default_rng(seed).normal(size=(b.n_entities, d_max))
    floor = min(floor, d_max)
    if b.n_entities * floor > b.budget_units:
        with pytest.raises(ValueError, match="entries per row"):
            keep_top_entries(scores, b, min_per_row=floor)
        assert floor not in feasible_row_minimums([floor], b)
        return
    assert feasible_row_minimums([floor], b) == [floor]
    keep = keep_top_entries(scores, b, min_per_row=floor)
    sizes = keep.sum(axis=1)
    assert (sizes >= floor).all() and sizes.sum() == b.budget_units
    order = np.argsort(-scores, axis=1, kind="stable")
    forced = np.zeros_like(keep)
    forced[np.arange(b.n_entities)[:, None], order[:, :floor]] = True
    assert keep[forced].all()  # each row's `floor` largest are kept
    free_kept, dropped = scores[keep & ~forced], scores[~keep]
    if free_kept.size and dropped.size:
        assert free_kept.min() >= dropped.max()


def test_feasible_minimums_respect_d_min_and_the_budget():
    b = Budget(10, 10, 16, 2, 1, 0.75)  # 4 units per entity on average
    assert feasible_row_minimums([1, 2, 4, 8], b) == [2, 4]  # 1 is raised to d_min; 8 does not fit


@pytest.mark.parametrize("retrain", [False, True])
def test_magprune_keeps_the_largest_pretrained_entries(tmp_path, retrain):
    from recbole_bet.masking import magnitudes
    from recbole_bet.pretrain import pretrained

    out, cache = tmp_path / "run", tmp_path / "pretrain"
    proc = run_cli("--model=LightGCN", "--dataset=ml-100k", "--method=magprune", f"--config_files={QUICK}",
                   "--epochs=1", "--sparsity=0.9", f"--magprune_retrain={retrain}", f"--output_dir={out}",
                   f"--pretrain_cache_dir={cache}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    search = report["search"]
    # 12.8 units per entity at 0.9: 1-8 of the default list fit (16 and 32 do not), and the best on validation wins
    assert [c["min_per_row"] for c in search["candidates"]] == [1, 2, 4, 8]
    scores = [c["valid_ndcg@20"] for c in search["candidates"]]
    assert search["min_per_row"] == search["candidates"][int(np.argmax(scores))]["min_per_row"]
    assert search["retrain"] is retrain and report["config"]["magprune_retrain"] is retrain
    assert report["kept_params"] == report["budget_params"]
    assert (report["timings_s"]["retrain"] > 0) is retrain

    ctx = make_context("LightGCN", tmp_path, method="magprune", epochs=1, pretrain_cache_dir=str(cache))
    state, _, _ = pretrained(ctx)  # the cached pretraining of the run
    expected = keep_top_entries(magnitudes(ctx.masked, state), ctx.budget, min_per_row=search["min_per_row"])
    load_artifact(str(out / "table.npz"), ctx.model, ctx.masked, "LightGCN", "ml-100k")
    assert np.array_equal(ctx.masked.keep, expected)
    if not retrain:  # the pruned pretrained weights, untouched, and the validation the search saw
        for t in ctx.masked.tables:
            rows = ctx.masked.row_keep(t.entity)
            np.testing.assert_array_equal(t.module.weight.detach().numpy()[rows],
                                          state[f"{t.name}.weight"].numpy()[rows])
        assert report["valid"]["ndcg@20"] == pytest.approx(max(scores), abs=1e-6)


def test_a_minimum_the_budget_cannot_give_is_refused(tmp_path):
    out = tmp_path / "out"
    proc = run_cli("--model=LightGCN", "--dataset=ml-100k", "--method=magprune", f"--config_files={QUICK}",
                   "--sparsity=0.95", "--magprune_min_per_row=8", f"--output_dir={out}")
    check_refused(proc, out, "")
    assert "magprune_min_per_row=8 does not fit the budget" in proc.stderr
