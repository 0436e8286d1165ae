"""ESAPN: reward and FIFO bookkeeping, sizes that only grow, the budget cap, and quick runs end to end."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from recbole.data.interaction import Interaction
from torch import nn

from conftest import QUICK, make_context, run_cli
from recbole_bet.budget import Budget
from recbole_bet.methods.esapn import (ENLARGE, KEEP, ESAPNSettings, FrequencyCounter, LossHistory, PerSampleLosses,
                               SizeSearch, WarmStart, cap_enlargements, frequency_buckets, greedy_enlarge, grow,
                               reinforce_loss, sample_enlarge)
from recbole_bet.export import read_artifact
from recbole_bet.training import train_loader_with_batch_size, validation_pairs_loader

PAPER_SIZES = np.array([2, 4, 8, 16, 64, 128])
N_USERS, N_ITEMS = 943, 1682
TABLES_PER_ENTITY = {"LightGCN": 1, "NGCF": 1, "NeuMF": 2}


# --- reward and FIFO (Eq. 2) ---

def test_reward_is_the_mean_of_the_last_T_losses_minus_the_current_one():
    history = LossHistory(3, length=5)
    losses = [0.9, 0.7, 0.8, 0.4, 0.5, 0.3, 0.6, 0.2]
    for t, loss in enumerate(losses):
        rewards, has_history = history.reward_and_push(torch.tensor([1]), torch.tensor([loss]))
        if t == 0:  # nothing to compare with yet
            assert not has_history.item() and rewards.item() == 0
        else:
            expected = np.mean(losses[max(0, t - 5):t]) - loss
            assert has_history.item() and rewards.item() == pytest.approx(expected, abs=1e-6)
    assert history.count.tolist() == [0, len(losses), 0]  # other entities untouched


def test_fifo_keeps_each_entitys_last_T_losses_in_order():
    history = LossHistory(4, length=3)
    for step in range(7):  # entities 0 and 2 together, entity 3 only on even steps
        ids = torch.tensor([0, 2, 3]) if step % 2 == 0 else torch.tensor([0, 2])
        history.push(ids, torch.tensor([float(step), 10.0 + step, 100.0 + step][: len(ids)]))
    assert history.recent(0) == [4.0, 5.0, 6.0]
    assert history.recent(2) == [14.0, 15.0, 16.0]
    assert history.recent(3) == [102.0, 104.0, 106.0]
    assert history.recent(1) == []
    mean, has_history = history.mean(torch.tensor([0, 1, 3]))
    assert mean.tolist() == pytest.approx([5.0, 0.0, 104.0]) and has_history.tolist() == [True, False, True]
    history.push(torch.tensor([1]), torch.tensor([2.0]))  # fewer than T losses: the mean of those held
    assert history.mean(torch.tensor([1]))[0].item() == 2.0


def test_frequency_counts_only_what_the_first_pass_has_seen():
    counter = FrequencyCounter(5)
    counter.observe(torch.tensor([0, 3, 3, 4]))
    counter.observe(torch.tensor([3]))
    assert counter.counts.tolist() == [1, 0, 0, 3, 1]
    counter.complete = True  # every training interaction has been seen once
    counter.observe(torch.tensor([0, 1]))
    assert counter.counts.tolist() == [1, 0, 0, 3, 1]
    buckets = frequency_buckets(torch.tensor([0, 1, 2, 3, 4, 5, 7, 10, 11, 10 ** 6]), 32)
    assert buckets.tolist() == [0, 2, 3, 4, 4, 5, 6, 6, 7, 31]


# --- actions: sizes only grow, the largest cannot enlarge ---

def test_the_largest_size_cannot_enlarge():
    n = len(PAPER_SIZES)
    index = torch.tensor([0, 3, n - 1, n - 1])
    wants = torch.tensor([[0.0, 50.0]] * 4)  # enlarge is all but certain
    assert greedy_enlarge(wants, index, n).tolist() == [True, True, False, False]
    generator = torch.Generator().manual_seed(0)
    assert sample_enlarge(wants, index, n, generator).tolist() == [True, True, False, False]
    assert grow(index, torch.arange(4), torch.ones(4, dtype=torch.bool), n).tolist() == [1, 4, n - 1, n - 1]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), n=st.integers(1, 40), rounds=st.integers(1, 30))
def test_sizes_only_grow(seed, n, rounds):
    rng = np.random.default_rng(seed)
    n_sizes = len(PAPER_SIZES)
    index = torch.zeros(n, dtype=torch.long)
    for _ in range(rounds):
        ids = torch.from_numpy(rng.choice(n, size=rng.integers(1, n + 1), replace=False))
        new = grow(index, ids, torch.from_numpy(rng.random(len(ids)) < 0.5), n_sizes)
        assert torch.all(new >= index) and torch.all(new - index <= 1) and int(new.max()) <= n_sizes - 1
        untouched = torch.ones(n, dtype=torch.bool)
        untouched[ids] = False
        assert torch.equal(new[untouched], index[untouched])
        index = new


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), n_users=st.integers(1, 30), n_items=st.integers(1, 30),
       tables=st.integers(1, 2), sparsity=st.floats(0.01, 0.99), rounds=st.integers(1, 40))
def test_capped_growth_never_exceeds_the_budget(seed, n_users, n_items, tables, sparsity, rounds):
    rng = np.random.default_rng(seed)
    budget = Budget(n_users, n_items, 128, 1, tables, sparsity)
    n = n_users + n_items
    index = np.zeros(n, dtype=np.int64)
    if not budget.fits(PAPER_SIZES[index]):
        return  # select() refuses this budget (tested in docs/errors.md)
    for _ in range(rounds):
        ids = rng.choice(n, size=rng.integers(1, n + 1), replace=False)
        enlarge = (rng.random(len(ids)) < 0.7) & (index[ids] < len(PAPER_SIZES) - 1)
        priority = rng.random(len(ids))
        granted, refused = cap_enlargements(budget, PAPER_SIZES, index, ids, enlarge, priority)
        assert not np.any(granted & ~enlarge)  # only what was asked for
        assert refused == int(enlarge.sum() - granted.sum())
        new = grow(torch.from_numpy(index), torch.from_numpy(ids), torch.from_numpy(granted), len(PAPER_SIZES))
        new = new.numpy()
        assert np.all(new >= index)
        assert budget.fits(PAPER_SIZES[new])
        if refused:  # the most confident were granted, and the next one would not have fitted
            refused_at = np.nonzero(enlarge & ~granted)[0]
            next_one = refused_at[np.argmax(priority[refused_at])]
            assert priority[granted].min(initial=1.0) > priority[next_one]
            k = index[ids[next_one]]
            assert PAPER_SIZES[k + 1] - PAPER_SIZES[k] > budget.budget_units - PAPER_SIZES[new].sum()
        index = new


# --- policy gradient and warm start ---

def test_reinforce_raises_the_probability_of_a_rewarded_action():
    torch.manual_seed(0)
    logits = nn.Parameter(torch.zeros(3, 2))
    enlarge = torch.tensor([True, False, True])
    reinforce_loss(logits, enlarge, torch.tensor([1.0, 1.0, -1.0]), torch.tensor([1.0, 1.0, 0.0])).backward()
    step = -logits.grad  # gradient ascent on J
    assert step[0, ENLARGE] > 0 > step[0, KEEP]  # rewarded enlarge: more likely
    assert step[1, KEEP] > 0 > step[1, ENLARGE]  # rewarded keep: more likely
    assert torch.all(step[2] == 0)  # weight 0 (no history or a forced keep): no update


def test_warm_start_projection_recovers_a_linear_relation():
    generator = torch.Generator().manual_seed(3)
    lo, hi = 4, 8
    donors = torch.randn(200, 16, generator=generator)
    slope, bias = torch.randn(lo, hi - lo, generator=generator), torch.randn(hi - lo, generator=generator)
    donors[:, lo:hi] = donors[:, :lo] @ slope + bias
    prefix = torch.randn(5, lo, generator=generator)
    predicted = WarmStart.project(donors, prefix, lo, hi)
    assert torch.allclose(predicted, prefix @ slope + bias, atol=0.05)


class _PointwiseModel(nn.Module):
    def __init__(self, loss):
        super().__init__()
        self.loss = loss

    def calculate_loss(self, interaction):
        return self.loss(interaction["logit"], interaction["label"])


def test_per_sample_losses_of_a_pointwise_model_and_the_fallback():
    batch = Interaction({"logit": torch.tensor([2.0, -1.0, 0.5]), "label": torch.tensor([1.0, 0.0, 0.0])})
    expected = nn.functional.binary_cross_entropy_with_logits(batch["logit"], batch["label"], reduction="none")
    model = _PointwiseModel(nn.BCEWithLogitsLoss())
    with PerSampleLosses(model) as losses:
        loss, per_row = losses(batch)
    assert torch.allclose(per_row, expected) and torch.allclose(loss, expected.mean())
    assert "forward" not in model.loss.__dict__ and model.calculate_loss(batch).dim() == 0  # uninstalled
    plain = _PointwiseModel(lambda logit, label: (logit - label).pow(2).mean())  # no loss module to record
    with PerSampleLosses(plain) as losses:
        loss, per_row = losses(batch)
    assert torch.equal(per_row, loss.detach().expand(3))


# --- on a real model (LightGCN, quick profile) ---

@pytest.fixture(scope="module")
def lightgcn(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("esapn")
    return make_context("LightGCN", tmp, method="esapn", epochs=1, esapn_batch_size=512, sparsity=0.99,
                        esapn_budget="none", output_dir=str(tmp / "none-run"))


def test_bpr_per_sample_losses_match_the_models_own(lightgcn):
    ctx = lightgcn
    ctx.masked.load(ctx.init_state)
    model = ctx.model
    batch = next(iter(ctx.train_data))
    stock = model.calculate_loss(batch)
    with PerSampleLosses(model) as losses:
        loss, per_row = losses(batch)
    assert torch.equal(loss, stock)  # same value: calculate_loss is unchanged
    users, items = model.forward()
    u, pos, neg = users[batch[model.USER_ID]], items[batch[model.ITEM_ID]], items[batch[model.NEG_ITEM_ID]]
    expected = -torch.log(1e-10 + torch.sigmoid((u * pos).sum(1) - (u * neg).sum(1)))
    assert torch.allclose(per_row, expected.detach(), atol=1e-6)


def test_alternating_steps_grow_sizes_warm_start_and_keep_masks(lightgcn):
    ctx = lightgcn
    ctx.reseed()
    n = ctx.masked.n_users + ctx.masked.n_items
    ctx.masked.load(ctx.init_state, np.full(n, 2))
    search = SizeSearch(ctx, ESAPNSettings.from_config(ctx.config))
    train = iter(train_loader_with_batch_size(ctx.config, ctx.train_data, 512))
    held_out = iter(validation_pairs_loader(ctx.config, ctx.train_data, ctx.valid_data, 512))
    weight = ctx.masked.tables[0].module.weight  # the user table
    warm_started = 0
    with search.losses:
        for _ in range(6):
            before = search.size_index.clone()
            search.policy_step(next(held_out))
            assert torch.equal(search.size_index, before)  # the trial sizes are gone again
            assert np.array_equal(ctx.masked.sizes, search.current_sizes())
            search.model_step(next(train))
            assert torch.all(search.size_index >= before)
            sizes = torch.from_numpy(ctx.masked.row_sizes("user"))
            inside = torch.arange(ctx.masked.d_max)[None, :] < sizes[:, None]
            assert torch.all(weight[~inside] == 0)  # masked entries stay exactly 0
            grown = torch.nonzero(search.size_index[: ctx.masked.n_users] > before[: ctx.masked.n_users])[:, 0] + 1
            opened = weight[grown, 2:4][search.size_index[grown - 1] == 1]  # users that went from 2 to 4
            assert torch.all(opened != 0)  # warm-started, not left at 0
            warm_started += len(opened)
    assert warm_started > 0 and search.enlarged > 0 and int(search.history.count.max()) > 1
    assert search.frequency.counts.sum() > 0
    assert "forward" not in ctx.model.mf_loss.__dict__  # the stock loss module again


def test_uncapped_run_reports_the_budget_as_not_applied(lightgcn):
    """esapn_budget=none at sparsity 0.99: everyone starts at size 2, already over the budget."""
    from recbole_bet.pipeline import run

    ctx = lightgcn
    report = run(ctx.config, ctx)
    on_disk = json.loads((Path(ctx.config["output_dir"]) / "report.json").read_text())
    for r in (report, on_disk):
        assert r["budget_applied"] is False and r["search"]["budget_applied"] is False
        assert r["search"]["budget_mode"] == "none" and r["search"]["cap_hit"] is None
        assert r["kept_params"] >= 2 * (N_USERS + N_ITEMS) > r["budget_params"]  # over the budget, and reported
        assert r["realized_sparsity"] == pytest.approx(1 - r["kept_params"] / r["full_params"], abs=1e-12)
        histogram = r["search"]["size_histogram"]
        assert sum(int(d) * c for part in histogram.values() for d, c in part.items()) == r["kept_params"]
        assert r["timings_s"]["pretrain"] == 0 and r["timings_s"]["search"] > 0


# --- quick-profile runs through the command line, capped ---

@pytest.mark.parametrize("model", list(TABLES_PER_ENTITY))
def test_capped_quick_run_meets_the_budget(tmp_path, model):
    out = tmp_path / "out"
    extra = ["--esapn_retrain=true"] if model == "NGCF" else []  # BET's protocol: retrain with the final sizes
    proc = run_cli(f"--model={model}", "--dataset=ml-100k", "--method=esapn", f"--config_files={QUICK}", "--epochs=1",
                   "--sparsity=0.95", f"--output_dir={out}", f"--checkpoint_dir={tmp_path / 'ckpt'}", *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "esapn epoch 1/1" in proc.stderr
    r = json.loads((out / "report.json").read_text())
    tpe = TABLES_PER_ENTITY[model]
    assert r["method"] == "esapn" and r["budget_applied"] is True
    assert 2 * (N_USERS + N_ITEMS) * tpe <= r["kept_params"] <= r["budget_params"]
    assert r["realized_sparsity"] >= 0.95 - 1e-12
    search = r["search"]
    assert search["budget_mode"] == "cap" and search["candidate_sizes"] == PAPER_SIZES.tolist()
    assert isinstance(search["cap_hit"], bool) and search["epochs"] == 1 and search["best_epoch"] == 1
    histogram = search["size_histogram"]
    assert sum(histogram["user"].values()) == N_USERS and sum(histogram["item"].values()) == N_ITEMS
    assert tpe * sum(int(d) * c for part in histogram.values() for d, c in part.items()) == r["kept_params"]
    assert search["retrained"] is (model == "NGCF")
    assert (r["timings_s"]["retrain"] > 0) is (model == "NGCF") and r["timings_s"]["pretrain"] == 0
    assert r["config"]["esapn_budget"] == "cap" and r["config"]["esapn_batch_size"] == 2048
    assert r["test"]["ndcg@20"] > 0

    _, arrays = read_artifact(str(out / "table.npz"))
    table_sizes = [v[1:] for k, v in arrays.items() if k.startswith("table.") and k.endswith(".sizes")]
    assert len(table_sizes) == 2 * tpe
    assert all(set(np.unique(s).tolist()) <= set(PAPER_SIZES.tolist()) for s in table_sizes)
    assert sum(int(s.sum()) for s in table_sizes) == r["kept_params"]
