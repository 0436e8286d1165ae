"""CIESS: TD3's parts (twin-critic target, delayed actor, clipped target noise), actions mapped into
[d_min, d_max] and capped to the budget, per-entity quality as RecBole scores it, and quick runs end to end."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from conftest import QUICK, make_context, run_cli
from recbole_bet.export import load_artifact
from recbole_bet.budget import Budget
from recbole_bet.methods.ciess import (TD3, CIESSSettings, actions_from_sizes, cap, entity_quality,
                                       sizes_from_actions)
from recbole_bet.training import quality

TABLES_PER_ENTITY = {"LightGCN": 1, "NGCF": 1, "NeuMF": 2}


def agent(**overrides) -> TD3:
    values = dict(episodes=1, steps=1, finetune_epochs=1, finetune_lr=0.01, size_penalty=0.1, hidden=8, lr=0.01,
                  gamma=0.9, tau=0.5, exploration_noise=0.1, walk_steps=3, policy_noise=0.1, noise_clip=0.25,
                  policy_delay=3, updates=1, batch_size=16)
    values.update(overrides)
    torch.manual_seed(0)
    return TD3(CIESSSettings(**values), torch.Generator().manual_seed(0), {"fused_adam": False})


def fill(td3: TD3, n: int = 64) -> None:
    g = torch.Generator().manual_seed(1)
    states, next_states = torch.rand(n, 3, generator=g), torch.rand(n, 3, generator=g)
    td3.buffer.add(states, torch.rand(n, generator=g), torch.rand(n, generator=g), next_states, done=False)


# --- TD3 ---

def test_the_target_takes_the_smaller_twin_critic():
    td3 = agent(policy_noise=0.0)
    fill(td3)
    with torch.no_grad():  # make the twin target critics disagree by a constant
        td3.critics_target[1].net[-1].bias += 5.0
    _, _, rewards, next_states, done = td3.buffer.sample(16, torch.Generator().manual_seed(2))
    with torch.no_grad():
        next_actions = td3.actor_target(next_states)
        q1 = td3.critics_target[0](next_states, next_actions)
        q2 = td3.critics_target[1](next_states, next_actions)
    assert torch.all(q2 > q1)
    expected = rewards + 0.9 * (1 - done) * torch.minimum(q1, q2)
    assert torch.allclose(td3.target_q(rewards, next_states, done), expected, atol=1e-6)
    assert torch.allclose(td3.target_q(rewards, next_states, torch.ones_like(done)), rewards)  # no bootstrap at the end


def test_target_policy_noise_is_clipped():
    td3 = agent(policy_noise=100.0, noise_clip=0.25, gamma=1.0)
    next_states = torch.rand(500, 3, generator=torch.Generator().manual_seed(3))
    base = td3.actor_target(next_states).detach()
    # the target critic as a probe: Q(s', a) = a, so the target is the noisy, clipped target action
    for critic in td3.critics_target:
        critic.forward = lambda states, actions: actions
    noisy = td3.target_q(torch.zeros(500), next_states, torch.zeros(500))
    seen = (noisy - base).abs()
    assert float(seen.max()) <= 0.25 + 1e-6  # N(0, 100) clipped to +-0.25
    assert float(seen.max()) > 0.24  # and it does reach the clip
    assert float(noisy.min()) >= 0 and float(noisy.max()) <= 1  # then kept in the action range


def test_the_actor_updates_every_policy_delay_critic_updates():
    td3 = agent(policy_delay=3)
    fill(td3)
    actor_before = [p.detach().clone() for p in td3.actor.parameters()]
    target_before = [p.detach().clone() for p in td3.actor_target.parameters()]
    critic_before = [p.detach().clone() for p in td3.critics.parameters()]
    for n in range(1, 8):
        td3.update()
        assert td3.critic_updates == n and td3.actor_updates == n // 3
        if n == 2:  # the critics moved, the actor and its target not yet
            assert any(not torch.equal(a, b) for a, b in zip(critic_before, td3.critics.parameters()))
            assert all(torch.equal(a, b) for a, b in zip(actor_before, td3.actor.parameters()))
            assert all(torch.equal(a, b) for a, b in zip(target_before, td3.actor_target.parameters()))
        if n == 3:
            assert any(not torch.equal(a, b) for a, b in zip(actor_before, td3.actor.parameters()))
            assert any(not torch.equal(a, b) for a, b in zip(target_before, td3.actor_target.parameters()))


def test_exploration_takes_the_walk_step_the_critics_value_most():
    td3 = agent(walk_steps=5, exploration_noise=0.2)
    for critic in td3.critics:  # Q(s, a) = a: the largest step of the walk wins
        critic.forward = lambda states, actions: actions
    states = torch.rand(200, 3, generator=torch.Generator().manual_seed(4))
    start = td3.act(states)
    chosen = td3.explore(states)
    assert float(chosen.min()) >= 0 and float(chosen.max()) <= 1
    assert float((chosen - start).mean()) > 0.05  # the best of five steps lies above the start on average


# --- actions and the budget ---

@settings(max_examples=100, deadline=None)
@given(n_users=st.integers(1, 30), n_items=st.integers(1, 30), d_max=st.integers(2, 64), d_min=st.integers(1, 4),
       tables=st.integers(1, 2), sparsity=st.floats(0.0, 0.95), seed=st.integers(0, 10_000))
def test_actions_become_sizes_in_range_and_the_cap_keeps_the_budget(n_users, n_items, d_max, d_min, tables, sparsity,
                                                                    seed):
    d_min = min(d_min, d_max)
    b = Budget(n_users, n_items, d_max, d_min, tables, sparsity)
    if b.budget_params < b.min_params:
        return  # refused when the run starts (docs/errors.md)
    actions = np.random.default_rng(seed).uniform(-0.5, 1.5, b.n_entities)
    sizes = sizes_from_actions(actions, d_min, d_max)
    assert sizes.min() >= d_min and sizes.max() <= d_max
    assert sizes_from_actions(np.array([0.0, 1.0]), d_min, d_max).tolist() == [d_min, d_max]
    assert np.array_equal(sizes_from_actions(actions_from_sizes(sizes, d_min, d_max), d_min, d_max), sizes)
    capped = cap(b, sizes)
    assert b.fits(capped)
    if b.fits(sizes):
        assert np.array_equal(capped, sizes)  # a fitting action is left alone
    else:  # scaled down to the budget's units, order kept
        assert capped.sum() == b.budget_units
        order = np.argsort(-sizes, kind="stable")
        assert np.all(np.diff(capped[order]) <= 0)


# --- per-entity quality and end-to-end ---

def test_per_user_quality_averages_to_recboles_quality(tmp_path):
    ctx = make_context("LightGCN", tmp_path, method="ciess")
    users, values, item_q = entity_quality(ctx, ctx.valid_data)
    assert len(users) == len(set(users.tolist())) and values.min() >= 0 and values.max() <= 1
    assert float(values.mean()) == pytest.approx(quality(ctx.evaluate(ctx.valid_data)), abs=1e-6)
    assert item_q.shape == (ctx.masked.n_items,) and item_q.min() >= 0 and item_q.max() <= 1


@pytest.mark.parametrize("model", ["LightGCN", "NGCF", "NeuMF"])
def test_ciess_retrains_its_best_probe_within_the_budget(tmp_path, model):
    out = tmp_path / "run"
    proc = run_cli(f"--model={model}", "--dataset=ml-100k", "--method=ciess", f"--config_files={QUICK}",
                   "--epochs=1", "--sparsity=0.9", "--seed=3", f"--output_dir={out}",
                   f"--pretrain_cache_dir={tmp_path / 'pretrain'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    search = report["search"]
    probes = search["probes"]
    assert [(p["episode"], p["step"]) for p in probes] == [(1, 1), (1, 2), (2, 1), (2, 2)]  # quick: 2 x 2
    qualities = [p["quality"] for p in probes]
    assert search["best_probe"] == int(np.argmax(qualities)) and search["best_quality"] == max(qualities)
    assert all(p["kept_params"] <= report["budget_params"] for p in probes)
    # quick: 4 critic updates per probe and side, the actor every 2nd
    assert search["critic_updates"] == {"user": 16, "item": 16} and search["actor_updates"] == {"user": 8, "item": 8}
    assert report["kept_params"] == search["kept_params"] <= report["budget_params"]
    assert report["kept_params"] == probes[search["best_probe"]]["kept_params"]
    assert [t["label"] for t in report["trainings"]][-1] == "ciess retrain"  # the best probe, trained from scratch
    ctx = make_context(model, tmp_path, method="ciess", epochs=1)
    b = ctx.budget
    assert b.tables_per_entity == TABLES_PER_ENTITY[model]
    load_artifact(str(out / "table.npz"), ctx.model, ctx.masked, model, "ml-100k")
    assert b.fits(ctx.masked.sizes) and b.kept_params(ctx.masked.sizes) == report["kept_params"]
    assert ctx.masked.sizes.min() >= b.d_min and ctx.masked.sizes.max() <= b.d_max


def test_the_best_probe_is_the_one_retrained(tmp_path, monkeypatch):
    from recbole_bet.methods import ciess

    ctx = make_context("LightGCN", tmp_path, method="ciess", epochs=1, seed=4)
    probed, retrained = [], []
    stock_probe = ciess.Environment.probe

    def probe(self, sizes, seed):
        relative, rewards, next_states = stock_probe(self, sizes, seed)
        probed.append((relative, sizes.copy()))
        return relative, rewards, next_states

    stock_train = ctx.train_from_scratch

    def train_from_scratch(sizes, label="from scratch"):
        retrained.append((label, np.array(sizes)))
        return stock_train(sizes, label=label)

    monkeypatch.setattr(ciess.Environment, "probe", probe)
    monkeypatch.setattr(ctx, "train_from_scratch", train_from_scratch)
    selection = ciess.CIESS().select(ctx)
    assert len(probed) == 4 and len(retrained) == 1 and retrained[0][0] == "ciess retrain"
    best = max(range(len(probed)), key=lambda i: probed[i][0])
    assert np.array_equal(retrained[0][1], probed[best][1]) and np.array_equal(selection.sizes, probed[best][1])
    assert all(ctx.budget.fits(sizes) for _, sizes in probed)
    assert len({sizes.tobytes() for _, sizes in probed}) > 1  # the agents explore: not one action four times
    assert selection.search["best_probe"] == best
