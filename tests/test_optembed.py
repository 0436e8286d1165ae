"""OptEmbed: the supernet's random group widths and learnable row thresholds, the evolutionary search repaired
into the budget, and the best candidate on validation retrained, on LightGCN, NGCF and NeuMF."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from conftest import QUICK, make_context, run_cli
from recbole_bet.budget import Budget
from recbole_bet.export import read_artifact
from recbole_bet.methods.optembed import (LongTailStep, Supernet, SupernetMask, WidthSpace, evolve,
                                          frequency_groups)


def _space(n_users, n_items, d_max, d_min, sparsity, groups, seed, prune_share=0.2):
    rng = np.random.default_rng(seed)
    b = Budget(n_users, n_items, d_max, d_min, 1, sparsity)
    pruned = rng.random(n_users + n_items) < prune_share
    users = frequency_groups(rng.integers(0, 50, n_users), groups)
    items = frequency_groups(rng.integers(0, 50, n_items), groups)
    return b, WidthSpace(b, users, items, pruned), rng


@settings(max_examples=80, deadline=None)
@given(n_users=st.integers(1, 30), n_items=st.integers(1, 30), d_max=st.integers(1, 32), d_min=st.integers(1, 32),
       sparsity=st.floats(0.0, 0.99), groups=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_every_candidate_is_repaired_into_the_budget(n_users, n_items, d_max, d_min, sparsity, groups, seed):
    d_min = min(d_min, d_max)
    b, space, rng = _space(n_users, n_items, d_max, d_min, sparsity, groups, seed)
    if b.budget_params < b.min_params:
        return  # refused before any training (Budget.check_feasible)
    raw = rng.integers(d_min, d_max + 1, size=space.n_groups)
    repaired = space.repair(raw)
    assert b.fits(space.sizes(repaired)) and space.units(repaired) == b.kept_params(space.sizes(repaired))
    assert (repaired <= raw).all() and (repaired >= d_min).all()
    if b.fits(space.sizes(raw)):
        assert np.array_equal(repaired, raw)  # a candidate that fits is left alone
    else:  # shrunk no more than needed: one more unit on any group that was cut would not fit
        cut = np.nonzero(repaired < raw)[0]
        assert all(space.units(repaired) + space.active[g] > b.budget_units for g in cut if space.active[g])
    for child in (space.random(rng), space.mutate(repaired, 0.5, rng), space.crossover(repaired, raw, rng)):
        assert b.fits(space.sizes(child))


def test_pruned_rows_keep_d_min_and_members_share_their_group_width():
    b = Budget(4, 4, 16, 2, 1, 0.0)
    space = WidthSpace(b, np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]),
                       np.array([False, True, False, False, False, False, True, False]))
    sizes = space.sizes(np.array([10, 5, 7, 3]))
    assert sizes.tolist() == [10, 2, 5, 5, 7, 3, 2, 3]
    assert space.units(np.array([10, 5, 7, 3])) == sizes.sum()


def test_groups_follow_training_frequency():
    group = frequency_groups(np.array([5, 50, 1, 20, 7, 0]), 3)
    assert group.tolist() == [1, 0, 2, 0, 1, 2]  # the most frequent in group 0


def test_the_long_tail_step_estimator():
    x = torch.tensor([-2.0, -0.7, -0.1, 0.0, 0.3, 0.9, 1.5], requires_grad=True)
    y = LongTailStep.apply(x)
    assert y.tolist() == [0, 0, 0, 0, 1, 1, 1]
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [0, 0.4, 1.6, 2.0, 0.8, 0.4, 0], atol=1e-6)


def test_supernet_mask_keeps_the_drawn_prefix_in_training_and_the_full_row_in_evaluation():
    weight = torch.randn(5, 8)
    threshold = torch.nn.Parameter(torch.tensor(0.0))
    mask = SupernetMask(torch.tensor([0, 0, 1, 1, 0]), 2, 8, threshold)
    mask.widths.copy_(torch.tensor([3, 6]))
    out = mask(weight)
    assert torch.equal(out[0], weight[0])  # padding row never masked
    for row, width in ((1, 3), (2, 6), (3, 6), (4, 3)):
        assert torch.equal(out[row, :width], weight[row, :width]) and (out[row, width:] == 0).all()
    mask.eval()
    assert torch.equal(mask(weight), weight)  # threshold 0: every row scores above it


def test_rows_below_the_learnable_threshold_are_pruned_and_the_threshold_learns():
    weight = torch.ones(4, 6)
    weight[2] *= 0.1  # far below the table's mean |v|
    threshold = torch.nn.Parameter(torch.tensor(0.5))
    mask = SupernetMask(torch.zeros(4, dtype=torch.long), 1, 6, threshold).eval()
    out = mask(weight)
    assert (out[2] == 0).all() and torch.equal(out[[0, 1, 3]], weight[[0, 1, 3]])
    out.sum().backward()  # kept rows raise this loss: descent raises the threshold
    assert threshold.grad is not None and threshold.grad < 0


@pytest.fixture(scope="module")
def lightgcn(tmp_path_factory):
    return make_context("LightGCN", tmp_path_factory.mktemp("optembed"), method="optembed", sparsity=0.9)


def test_the_supernet_draws_every_width_per_group_and_trains_them(lightgcn):
    ctx = lightgcn
    ctx.masked.load(ctx.init_state)
    groups = (frequency_groups(ctx.user_freq, 4), frequency_groups(ctx.item_freq, 4))
    supernet = Supernet(ctx, groups, thresholds=True)
    seen = set()
    for _ in range(400):
        supernet.draw()
        for mask in supernet.masks.values():
            seen.update(mask.widths.tolist())
    assert seen == set(range(ctx.budget.d_min, ctx.budget.d_max + 1))
    table = ctx.masked.tables[0]
    mask = supernet.masks[table.name]
    out = mask(table.module.weight.detach())
    width = mask.widths[torch.from_numpy(np.concatenate([[0], groups[0]]))][1:]
    cols = torch.arange(ctx.budget.d_max)
    assert (out[1:][cols[None, :] >= width[:, None]] == 0).all()


def test_evolution_returns_the_best_candidate_it_evaluated():
    b, space, rng = _space(40, 60, 16, 1, 0.6, 4, 0, prune_share=0.0)
    calls = []

    def fitness(widths):  # favours wide item groups: the budget makes it a trade-off
        calls.append(widths.copy())
        assert b.fits(space.sizes(widths))
        return float(widths[space.n_user_groups:].sum() - 0.5 * widths[:space.n_user_groups].sum())

    best, score, evaluated, history = evolve(space, fitness, 8, 6, 0.3, rng)
    assert len(calls) == len(evaluated) and len({tuple(c) for c in calls}) == len(calls)  # each once
    assert score == max(s for _, s in evaluated) == history[-1] and fitness(best) == score
    assert all(a <= c for a, c in zip(history, history[1:]))
    assert history[-1] > history[0]  # the generations after the random one improved on it


@pytest.mark.parametrize("model", ["LightGCN", "NGCF", "NeuMF"])
def test_optembed_fits_the_budget_and_retrains_its_best_candidate(tmp_path, lightgcn, model):
    out = tmp_path / "run"
    proc = run_cli(f"--model={model}", "--dataset=ml-100k", "--method=optembed", f"--config_files={QUICK}",
                   "--epochs=1", "--sparsity=0.9", f"--output_dir={out}", f"--pretrain_cache_dir={tmp_path / 'c'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    search = report["search"]
    assert report["budget_params"] - 2 < report["kept_params"] <= report["budget_params"]  # filled: the whole budget
    assert search["max_candidate_kept_params"] <= report["budget_params"] and search["filled_units"] >= 0
    assert [t["label"] for t in report["trainings"]] == ["optembed supernet", "optembed retrain"]
    evolution = search["evolution"]
    assert len(evolution["best_fitness_per_generation"]) == 2 and 6 <= evolution["evaluated"] <= 12
    assert search["chosen"]["supernet_fitness"] == max(evolution["best_fitness_per_generation"])
    assert search["supernet_width_draws"] > 0 and search["thresholds"]["user"] != 0.0  # it learned

    meta, arrays = read_artifact(str(out / "table.npz"))
    assert not any(k.endswith(".index") for k in arrays)  # prefixes: no column index
    d_min, d_max = report["config"]["d_min"], report["config"]["d_max"]
    for entity, freq, widths in (("user", lightgcn.user_freq, search["chosen"]["widths_users"]),
                                 ("item", lightgcn.item_freq, search["chosen"]["widths_items"])):
        table = next(t["name"] for t in meta["tables"] if t["entity"] == entity)
        sizes = arrays[f"table.{table}.sizes"][1:].astype(int)
        assert sizes.min() >= d_min and sizes.max() <= d_max
        expected = np.asarray(widths)[frequency_groups(freq, len(widths))]
        # what the retraining used is the chosen widths, pruned rows at d_min, plus the leftover units
        assert (sizes < expected).sum() <= search[f"pruned_{entity}s"]
        assert sizes.sum() == search[f"kept_units_{entity}s"]


def test_leftover_units_go_to_the_most_frequent_rows():
    from recbole_bet.budget import fill_by_frequency, make_budget

    b = make_budget(0.5, 8, 1, 3, 4, 1)  # 7 entities, d_max 8: 28 units, 15 used below
    sizes = np.array([1, 1, 2, 8, 1, 1, 1])
    freq = np.array([5, 9, 1, 50, 7, 0, 3])
    filled = fill_by_frequency(sizes, b, freq)
    room = b.budget_units - sizes.sum()
    assert room > 6  # more than one pass
    assert filled.sum() == sizes.sum() + room and (filled >= sizes).all() and filled.max() <= 8
    order = [1, 4, 0, 6, 2, 5]  # by frequency, the d_max row skipped
    expected = sizes.copy()
    for k in range(room):
        expected[order[k % len(order)]] += 1
    assert filled.tolist() == expected.tolist()
