"""RULE: every candidate and mutation within the budget, block masks, the estimator, the bounded regulariser,
and quick CLI runs (a sparsity list, a single budget reusing its training, NGCF and NeuMF) whose artifacts
reproduce the reported metrics."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from conftest import QUICK, make_context, run_cli
from recbole_bet.budget import Budget, block_units, check_blocks_feasible
from recbole_bet.errors import BadInput
from recbole_bet.export import load_artifact
from recbole_bet.methods.rule import BlockSpace, block_diversity, evolve, fit_estimator, make_groups
from recbole_bet.training import pick


def _space(n_users, n_items, n_groups, n_blocks, width, d_min, mode, seed):
    rng = np.random.default_rng(seed)
    freq_u, freq_i = rng.integers(0, 50, n_users), rng.integers(0, 50, n_items)
    return BlockSpace(n_users, n_items, n_blocks * width, n_blocks, make_groups(freq_u, n_groups, mode, rng),
                      make_groups(freq_i, n_groups, mode, rng), d_min)


@settings(max_examples=60, deadline=None)
@given(n_users=st.integers(1, 60), n_items=st.integers(1, 90), n_groups=st.integers(1, 8), n_blocks=st.integers(1, 8),
       width=st.integers(1, 4), d_min=st.integers(1, 5), fill=st.floats(0.0, 1.0), seed=st.integers(0, 10_000),
       mode=st.sampled_from(["random", "popularity"]))
def test_every_candidate_and_mutation_fits_the_budget(n_users, n_items, n_groups, n_blocks, width, d_min, fill, seed,
                                                       mode):
    space = _space(n_users, n_items, n_groups, n_blocks, width, min(d_min, n_blocks * width), mode, seed)
    n = n_users + n_items
    lowest, highest = n * width * space.min_count, n * width * n_blocks
    units = int(lowest + fill * (highest - lowest))
    budget = Budget(n_users, n_items, n_blocks * width, min(d_min, n_blocks * width), 1, 1 - units / highest)
    rng = np.random.default_rng(seed)
    candidate = space.random(units, rng)
    for _ in range(30):
        for sel in (candidate, space.mutate(candidate, units, rng)):
            sizes = space.sizes(sel)
            assert space.units(sel) == sizes.sum() <= units
            assert block_units(sel.sum(axis=1), space.group_sizes, width) == sizes.sum()
            assert (sel.sum(axis=1) >= space.min_count).all() and (sizes >= budget.d_min).all()
            assert budget.kept_params(sizes) <= max(budget.budget_params, units)
        candidate = space.mutate(candidate, units, rng)


def test_block_mask_keeps_exactly_the_groups_selected_blocks():
    space = _space(7, 9, 3, 4, 2, 1, "random", 0)
    sel = np.random.default_rng(1).random((space.n_groups, 4)) < 0.5
    sel[:, 0] = True
    keep = space.keep(sel)
    assert keep.shape == (16, 8) and np.array_equal(keep.sum(axis=1), space.sizes(sel))
    for entity, g in enumerate(space.group_of):
        expected = np.zeros(8, dtype=bool)
        for block in np.nonzero(sel[g])[0]:
            expected[2 * block: 2 * block + 2] = True
        assert np.array_equal(keep[entity], expected)
    assert space.is_item[space.group_of[7:]].all() and not space.is_item[space.group_of[:7]].any()


def test_popularity_groups_are_ordered_and_random_groups_balanced():
    freq = np.array([5, 50, 1, 30, 7, 0, 12, 40])
    groups = make_groups(freq, 4, "popularity", np.random.default_rng(0))
    assert [sorted(freq[groups == g]) for g in range(4)] == [[40, 50], [12, 30], [5, 7], [0, 1]]
    counts = np.bincount(make_groups(np.zeros(103), 20, "random", np.random.default_rng(0)))
    assert len(counts) == 20 and counts.max() - counts.min() <= 1


def test_estimator_learns_a_synthetic_target():
    rng = np.random.default_rng(0)
    n_groups, n_blocks = 10, 8
    sel = rng.random((400, n_groups, n_blocks)) < rng.random((400, 1, 1))
    weight = rng.random((n_groups, n_blocks))
    counts = sel.sum(axis=2)
    target = (sel * weight).sum(axis=(1, 2)) + 0.05 * counts[:, 0] * counts[:, 1]  # additive and pairwise
    _, predict = fit_estimator(sel[:300], target[:300], dim=32, steps=400, lr=0.01, seed=0)
    pred = predict(sel[300:])
    assert np.corrcoef(pred, target[300:])[0, 1] > 0.95
    # the search follows the estimator: evolution with the true target as estimate finds a better one than random
    space = _space(30, 50, 5, n_blocks, 2, 1, "random", 0)
    w = np.random.default_rng(3).random((space.n_groups, n_blocks))
    estimate = lambda s: (np.asarray(s) * w).sum(axis=(1, 2))  # noqa: E731
    units = space.units(np.ones((space.n_groups, 3), dtype=bool))
    best, score, evaluated, history = evolve(space, estimate, units, 20, 5, 50, np.random.default_rng(0))
    assert max(evaluated) <= units and len(evaluated) == 70
    assert score == history[-1] >= history[0] and score == estimate(best[None])[0]
    randoms = [estimate(space.random(units, np.random.default_rng(s))[None])[0] for s in range(20)]
    assert score >= max(randoms)


def test_diversity_is_bounded_and_scale_free():
    torch.manual_seed(0)
    w = torch.randn(50, 16)
    d = block_diversity(w, 4)
    assert -1 / 3 - 1e-6 <= float(d) <= 1
    assert torch.allclose(block_diversity(1000 * w, 4), d, atol=1e-5)
    same = torch.randn(50, 4).repeat(1, 4)
    assert torch.isclose(block_diversity(same, 4), torch.tensor(1.0))
    assert float(block_diversity(w, 1)) == 0.0


def test_infeasible_block_width_names_the_fix():
    b = Budget(943, 1682, 128, 1, 1, 0.95)
    check_blocks_feasible(b, 32, 1)  # 4-wide blocks fit
    with pytest.raises(BadInput, match=r"use rule_blocks=32 \(4-dimension blocks\) or a sparsity of at most 0.9375"):
        check_blocks_feasible(b, 16, 1)


# ------------------------------------------------------------------------------------ quick CLI runs

def _cli(out, cache, *extra):
    return run_cli("--dataset=ml-100k", "--method=rule", f"--config_files={QUICK}", "--epochs=1",
                   f"--output_dir={out}", f"--pretrain_cache_dir={cache}", *extra)


def _check_artifact(ctx, report, table):
    """The artifact loads into a fresh model within budget, with whole blocks per group, masked entries zero,
    and reproduces the report's metrics."""
    from recbole_bet.scoring import scoring_spec

    load_artifact(str(table), ctx.model, ctx.masked, report["model"], "ml-100k")
    eq2 = report["search"]["scoring"] == "eq2"
    assert (scoring_spec(ctx.model) or {}).get("kind") == ("rule_eq2" if eq2 else None)  # it scores as it was run
    keep = ctx.masked.keep
    assert ctx.budget.kept_params(keep.sum(axis=1)) == report["kept_params"] <= report["budget_params"]
    assert report["search"]["max_candidate_kept_params"] <= report["budget_params"]
    width = report["search"]["block_width"]
    blocks = keep.reshape(len(keep), -1, width)
    assert (blocks.all(axis=2) | ~blocks.any(axis=2)).all()  # whole blocks only
    assert (keep.sum(axis=1) >= width).all()
    for t in ctx.masked.tables:
        assert (t.module.weight.detach().numpy()[~ctx.masked.row_keep(t.entity)] == 0).all()
    assert pick(ctx.evaluate(ctx.valid_data)) == report["valid"]
    assert pick(ctx.evaluate(ctx.test_data)) == report["test"]


def test_sparsity_list_trains_once_and_a_single_budget_reuses_it(tmp_path):
    cache = tmp_path / "cache"
    out = tmp_path / "list"
    old = ("--rule_scoring=dot", "--rule_compress=both")  # the stock scoring, users searched too: still reachable
    proc = _cli(out, cache, "--model=LightGCN", "--sparsity=[0.8,0.95]", "--rule_blocks=32", *old)
    assert proc.returncode == 0, proc.stderr[-3000:]
    listing = json.loads((out / "reports.json").read_text())
    assert [r["sparsity"] for r in listing["reports"]] == [0.8, 0.95]
    for line in ("sparsity-0.8/report.json", "sparsity-0.95/report.json", "reports.json"):
        assert line in proc.stdout
    reports = [json.loads((out / r["report"]).read_text()) for r in listing["reports"]]
    first, second = (r["search"] for r in reports)
    assert first["scoring"] == "dot" and first["compress"] == "both" and first["user_blocks"] is None
    assert not first["training_reused"] and not first["estimator"]["pairs_reused"]
    assert second["training_reused"] and second["estimator"]["pairs_reused"]  # one training for both budgets
    assert reports[0]["kept_params"] > reports[1]["kept_params"]
    assert all(r["timings_s"]["retrain"] == 0 and r["config"]["sparsity"] == s for r, s in zip(reports, [0.8, 0.95]))

    single = tmp_path / "single"
    proc = _cli(single, cache, "--model=LightGCN", "--sparsity=0.95", "--rule_blocks=32", *old)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((single / "report.json").read_text())
    assert report["search"]["training_reused"] and report["search"]["estimator"]["pairs_reused"]
    assert report["search"]["chosen"] == reports[1]["search"]["chosen"]
    assert (report["valid"], report["test"], report["kept_params"]) == \
        (reports[1]["valid"], reports[1]["test"], reports[1]["kept_params"])

    ctx = make_context("LightGCN", tmp_path, method="rule", sparsity=0.95, rule_blocks=32, epochs=1,
                       rule_scoring="dot", rule_compress="both")
    _check_artifact(ctx, report, single / "table.npz")


@pytest.mark.parametrize("model", ["NGCF", "NeuMF"])
def test_quick_run_meets_the_budget_and_reproduces_from_the_artifact(tmp_path, model):
    out = tmp_path / model
    proc = _cli(out, tmp_path / "cache", f"--model={model}", "--sparsity=0.9", "--rule_grouping=popularity")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "rule" and report["search"]["groups"]["grouping"] == "popularity"
    search = report["search"]
    assert search["scoring"] == "eq2" and search["compress"] == "items"  # the paper's defaults
    assert search["kept_units_users"] == 943 * search["block_width"]  # every user: its first block only
    assert search["estimator"]["near_budget"]["selections"] == 5
    ctx = make_context(model, tmp_path, method="rule", sparsity=0.9, epochs=1)
    _check_artifact(ctx, report, out / "table.npz")


def test_aligned_blocks_diagnostic_fits_the_budget_and_scores_the_chosen_selection(tmp_path):
    """The report scores the trained model with aligned first blocks (no search) beside the chosen selection."""
    from recbole_bet.methods.rule import first_blocks

    sel = first_blocks([2, 0, 3], 4)
    assert sel.tolist() == [[True, True, False, False], [False] * 4, [True, True, True, False]]
    out = tmp_path / "run"
    proc = _cli(out, tmp_path / "cache", "--model=LightGCN", "--sparsity=0.9")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    aligned = report["search"]["aligned"]
    assert aligned["chosen"]["valid_ndcg@20"] == pytest.approx(report["valid"]["ndcg@20"], abs=1e-6)
    # the most blocks everyone can keep: one more would not fit the budget
    blocks, width = aligned["uniform"]["blocks"], report["search"]["block_width"]
    n_entities = 943 + 1682
    assert n_entities * blocks * width <= report["budget_params"] < n_entities * (blocks + 1) * width
    for part in ("chosen_counts", "uniform"):
        assert 0 < aligned[part]["valid_ndcg@20"] < 1
    assert report["search"]["final_layer"]  # LightGCN with Eq. 2: blocks of its final-layer embeddings
    ctx = make_context("LightGCN", tmp_path, method="rule", sparsity=0.9, epochs=1)
    _check_artifact(ctx, report, out / "table.npz")
    assert ctx.model.n_layers == 0  # the artifact's tables are final-layer embeddings


@pytest.mark.parametrize("model", ["LightGCN", "NeuMF"])
def test_eq2_scores_each_kept_item_block_against_the_users_block_sum(tmp_path, model):
    """Eq. 2 on the stock model's own representations: r_ij = max|B| / |B_j| * sum over j's kept blocks n of
    (sum of u_i's blocks)^T e_j(n); at full width (training) the block-sums' dot product; removing it gives the
    stock scores back."""
    from recbole_bet.scoring import install_block_scoring, remove_block_scoring, scoring_spec

    ctx = make_context(model, tmp_path, method="rule", sparsity=0.9, rule_blocks=8)
    b, masked, net = ctx.budget, ctx.masked, ctx.model
    n_blocks, width = 8, b.d_max // 8
    rng = np.random.default_rng(0)
    keep = np.zeros((b.n_users + b.n_items, b.d_max), dtype=bool)
    counts = rng.integers(1, n_blocks + 1, b.n_items)
    for j, c in enumerate(counts):  # item j keeps c random blocks; users keep everything
        for n in rng.choice(n_blocks, size=c, replace=False):
            keep[b.n_users + j, n * width:(n + 1) * width] = True
    keep[: b.n_users] = True
    users, items = torch.tensor([1, 5, 9]), torch.tensor([2, 3, 40])
    pairs = {net.USER_ID: users, net.ITEM_ID: items}

    def representations():
        if model == "LightGCN":
            u_all, v_all = net.forward()
            return u_all[users], v_all[items]
        return net.user_mf_embedding(users), net.item_mf_embedding(items)

    def fold(x):
        return x.reshape(len(x), n_blocks, width).sum(dim=1)

    net.eval()
    with torch.no_grad():
        masked.load(ctx.init_state)
        u_full, v_full = representations()
        masked.load(ctx.init_state, keep=keep)
        u, v = representations()
        stock = net.predict(pairs)
        install_block_scoring(net, masked, n_blocks)
        assert scoring_spec(net) == {"kind": "rule_eq2", "n_blocks": n_blocks, "mask_users": False}
        kept = torch.from_numpy(keep[b.n_users + items.numpy() - 1])
        scale = counts.max() / counts[items.numpy() - 1]
        expected = torch.stack([float(scale[k]) * sum(
            fold(u)[k] @ v[k, n * width:(n + 1) * width] for n in range(n_blocks) if kept[k, n * width])
            for k in range(3)])
        if model == "LightGCN":
            assert torch.allclose(net.predict(pairs), expected, atol=1e-5)
            masked.load(ctx.init_state)  # full width: the dot product of the block-sums
            assert torch.allclose(net.predict(pairs), (fold(u_full) * fold(v_full)).sum(dim=1), atol=1e-5)
        else:  # NeuMF scores h^T (u' * v') + MLP: Eq. 2 enters through its GMF embeddings
            u2, v2 = representations()
            assert torch.allclose(u2, fold(u).tile((n_blocks,)), atol=1e-6)
            assert torch.allclose(v2, v * kept * torch.from_numpy(scale).float().unsqueeze(-1), atol=1e-6)
            assert torch.allclose((u2 * v2).sum(dim=1), expected, atol=1e-5)
        remove_block_scoring(net)
        masked.load(ctx.init_state, keep=keep)
        assert torch.allclose(net.predict(pairs), stock, atol=1e-6)


def test_items_only_space_keeps_every_users_first_blocks_and_fits():
    rng = np.random.default_rng(3)
    n_users, n_items, n_blocks, width = 30, 70, 8, 2
    space = BlockSpace(n_users, n_items, n_blocks * width, n_blocks, make_groups(rng.integers(0, 9, n_users), 4,
                       "random", rng), make_groups(rng.integers(0, 9, n_items), 5, "random", rng), 1, user_blocks=2)
    fixed = np.arange(n_blocks) < 2
    user_rows = ~space.is_item
    budget_units = block_units(np.where(user_rows, 2, 3), space.group_sizes, width)
    selections = [space.random(budget_units, rng) for _ in range(40)]
    selections += [space.mutate(s, budget_units, rng) for s in selections]
    for s in selections:
        assert (s[user_rows] == fixed).all()  # users: their first two blocks, always
        assert space.units(s) <= budget_units
        assert (s[~user_rows].sum(axis=1) >= 1).all()
    item_counts = {tuple(s[~user_rows].sum(axis=1)) for s in selections}
    assert len(item_counts) > 5  # item groups are searched


def test_baked_lightgcn_scores_its_final_layer_like_the_trained_model(tmp_path):
    """LightGCN's final-layer embeddings as the tables of a LightGCN with n_layers 0, users folded into their
    first block: at full width the same Eq. 2 scores as the trained model; the spec records it."""
    from recbole_bet.scoring import bake_final_layer, install_block_scoring, remove_block_scoring, scoring_spec

    ctx = make_context("LightGCN", tmp_path, method="rule", sparsity=0.9)
    net, masked = ctx.model, ctx.masked
    layers = net.n_layers
    assert layers > 0
    install_block_scoring(net, masked, 16)
    users, items = torch.tensor([1, 5, 9, 30]), torch.tensor([2, 3, 40, 7])
    pairs = {net.USER_ID: users, net.ITEM_ID: items}
    net.eval()
    with torch.no_grad():
        masked.load(ctx.init_state)
        before = net.predict(pairs)
        baked = bake_final_layer(net, masked, ctx.init_state, fold_users=True, n_layers=layers)
        masked.load(baked)
        assert net.n_layers == 0 and scoring_spec(net)["n_layers"] == 0
        assert torch.allclose(net.predict(pairs), before, atol=1e-5)
        user_rows = baked["user_embedding.weight"]
        assert (user_rows[:, 8:] == 0).all() and user_rows[:, :8].abs().sum() > 0  # one 8-wide block per user
    remove_block_scoring(net)
    assert net.n_layers == layers
