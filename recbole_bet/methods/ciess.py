"""CIESS (Qu et al., SIGIR 2023) as a baseline: continuous embedding sizes chosen by actor-critic RL.

One TD3 agent per side (users, items): an actor maps each entity's state (normalised frequency, current
size / d_max, current quality) to an action in [0, 1], i.e. a size in [d_min, d_max]; twin critics score
(state, action). An episode is ``ciess_steps`` probes. In each, every user and item takes its actor's action
plus exploration (a short random walk around it, the step the twin critics value most), the sizes are capped
to the budget, the masked pretrained model is finetuned briefly and ranked on validation, and each entity's
reward is its quality relative to the pretrained model minus ``ciess_size_penalty`` times its size / d_max.
Transitions go to a replay buffer and TD3 learns from it (twin critics, delayed actor updates, target policy
smoothing). The probe with the best validation quality is retrained from scratch.

Cost: the pretraining (cached and shared), ``ciess_episodes * ciess_steps`` probes of ``ciess_finetune_epochs``
epochs and one validation each, and one training to convergence. The adaptations are in docs/methods.md.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from logging import getLogger
from time import perf_counter

import numpy as np
import torch
from torch import nn

from recbole_bet.budget import Budget, allocate_sorted, assign_by_rank
from recbole_bet.methods.base import Method, Selection
from recbole_bet.pretrain import pretrained
from recbole_bet.training import FITNESS_METRICS, REPORT_METRICS, Finetuner, adam, pick, quality

TOPKS = sorted({int(m.split("@")[1]) for m in FITNESS_METRICS})  # the k of BET's quality: 5, 10, 20
STATE_DIM = 3  # normalised frequency, size / d_max, quality
REPLAY_CAPACITY = 1_000_000  # transitions kept per side; the oldest go first


@dataclass
class CIESSSettings:
    episodes: int
    steps: int
    finetune_epochs: int
    finetune_lr: float
    size_penalty: float
    hidden: int
    lr: float
    gamma: float
    tau: float
    exploration_noise: float
    walk_steps: int
    policy_noise: float
    noise_clip: float
    policy_delay: int
    updates: int
    batch_size: int

    @classmethod
    def from_config(cls, config) -> "CIESSSettings":
        return cls(*(config[f"ciess_{name}"] for name in cls.__dataclass_fields__))


# --- TD3 ---

def mlp(inputs: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 1))


class Actor(nn.Module):
    """State -> action in [0, 1] (a sigmoid: every size in [d_min, d_max] is reachable, no other)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.net = mlp(STATE_DIM, hidden)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(states)).squeeze(-1)


class Critic(nn.Module):
    """(state, action) -> Q."""

    def __init__(self, hidden: int):
        super().__init__()
        self.net = mlp(STATE_DIM + 1, hidden)

    def forward(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([states, actions[:, None]], dim=1)).squeeze(-1)


class ReplayBuffer:
    """Transitions (state, action, reward, next state, done) of one side, one row per entity and probe."""

    def __init__(self, capacity: int = REPLAY_CAPACITY):
        self.capacity = capacity
        self.rows = None  # (capacity, 2 * STATE_DIM + 3): s, a, r, s', done
        self.size = self.next = 0

    def add(self, states, actions, rewards, next_states, done: bool) -> None:
        block = torch.cat([states, actions[:, None], rewards[:, None], next_states,
                           torch.full((len(states), 1), float(done))], dim=1).float()
        if self.rows is None:
            self.rows = torch.zeros(self.capacity, block.shape[1])
        for start in range(0, len(block), self.capacity):  # a block larger than the buffer keeps its tail
            part = block[start:start + self.capacity]
            at = (self.next + torch.arange(len(part))) % self.capacity
            self.rows[at] = part
            self.next = int((self.next + len(part)) % self.capacity)
            self.size = min(self.capacity, self.size + len(part))

    def sample(self, batch_size: int, generator: torch.Generator):
        rows = self.rows[torch.randint(self.size, (batch_size,), generator=generator)]
        s = STATE_DIM
        return rows[:, :s], rows[:, s], rows[:, s + 1], rows[:, s + 2:2 * s + 2], rows[:, 2 * s + 2]


class TD3:
    """Fujimoto et al. (2018): twin critics (the smaller target Q), delayed actor and target updates, target
    policy smoothing (clipped noise on the target action)."""

    def __init__(self, settings: CIESSSettings, generator: torch.Generator, config):
        self.settings, self.generator = settings, generator
        self.actor = Actor(settings.hidden)
        self.critics = nn.ModuleList([Critic(settings.hidden), Critic(settings.hidden)])
        self.actor_target, self.critics_target = copy.deepcopy(self.actor), copy.deepcopy(self.critics)
        for target in (self.actor_target, self.critics_target):
            target.requires_grad_(False)
        self.actor_optimizer = adam(self.actor.parameters(), settings.lr, 0.0, config)
        self.critic_optimizer = adam(self.critics.parameters(), settings.lr, 0.0, config)
        self.buffer = ReplayBuffer()
        self.critic_updates = self.actor_updates = 0

    def noise(self, shape, scale: float) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator) * scale

    @torch.no_grad()
    def act(self, states: torch.Tensor) -> torch.Tensor:
        return self.actor(states)

    @torch.no_grad()
    def explore(self, states: torch.Tensor) -> torch.Tensor:
        """CIESS's random-walk exploration: ``walk_steps`` Gaussian steps from the actor's action (each from the
        previous one, kept in [0, 1]); each entity takes the step its twin critics value most (the smaller of
        the two Qs). One step is TD3's plain Gaussian exploration."""
        action = self.actor(states)
        walk = []
        for _ in range(self.settings.walk_steps):
            action = (action + self.noise(action.shape, self.settings.exploration_noise)).clamp(0, 1)
            walk.append(action)
        walk = torch.stack(walk)  # (walk_steps, n)
        values = torch.stack([self.twin_min(states, a) for a in walk])
        return walk.gather(0, values.argmax(0, keepdim=True)).squeeze(0)

    def twin_min(self, states, actions, target: bool = False) -> torch.Tensor:
        critics = self.critics_target if target else self.critics
        return torch.minimum(critics[0](states, actions), critics[1](states, actions))

    @torch.no_grad()
    def target_q(self, rewards, next_states, done) -> torch.Tensor:
        """r + gamma (1 - done) min(Q1', Q2')(s', clip(pi'(s') + clip(noise, -c, c), 0, 1))."""
        s = self.settings
        noise = self.noise(rewards.shape, s.policy_noise).clamp(-s.noise_clip, s.noise_clip)
        next_actions = (self.actor_target(next_states) + noise).clamp(0, 1)
        return rewards + s.gamma * (1 - done) * self.twin_min(next_states, next_actions, target=True)

    def update(self) -> None:
        """One critic step on a replay batch; every ``policy_delay``-th one also an actor step and soft target
        updates."""
        states, actions, rewards, next_states, done = self.buffer.sample(self.settings.batch_size, self.generator)
        target = self.target_q(rewards, next_states, done)
        loss = sum(nn.functional.mse_loss(critic(states, actions), target) for critic in self.critics)
        self.critic_optimizer.zero_grad()
        loss.backward()
        self.critic_optimizer.step()
        self.critic_updates += 1
        if self.critic_updates % self.settings.policy_delay:
            return
        actor_loss = -self.critics[0](states, self.actor(states)).mean()
        self.actor_optimizer.zero_grad()
        actor_loss.backward()
        self.actor_optimizer.step()
        self.actor_updates += 1
        with torch.no_grad():
            for net, target_net in ((self.actor, self.actor_target), (self.critics, self.critics_target)):
                for p, p_target in zip(net.parameters(), target_net.parameters()):
                    p_target.lerp_(p, self.settings.tau)


# --- actions and the budget ---

def sizes_from_actions(actions: np.ndarray, d_min: int, d_max: int) -> np.ndarray:
    """Actions in [0, 1] -> integer sizes in [d_min, d_max], linearly, rounded."""
    return np.rint(d_min + np.clip(actions, 0, 1) * (d_max - d_min)).astype(np.int64)


def actions_from_sizes(sizes: np.ndarray, d_min: int, d_max: int) -> np.ndarray:
    return (sizes - d_min) / max(d_max - d_min, 1)


def cap(budget: Budget, sizes: np.ndarray) -> np.ndarray:
    """Sizes within the budget: unchanged if they fit; otherwise scaled down together, in proportion to what
    was asked (``allocate_sorted``'s water-filling within [d_min, d_max]), to exactly the budget's units. The
    order of the sizes is kept: an entity never ends below one that asked for less."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if budget.fits(sizes):
        return sizes
    order = np.argsort(-sizes, kind="stable")
    scaled = allocate_sorted(sizes[order][None, :].astype(np.float64), np.array([budget.budget_units]),
                             budget.d_min, budget.d_max)
    return assign_by_rank(scaled, order)[0].astype(np.int64)


# --- per-entity quality ---

@torch.no_grad()
def entity_quality(ctx, data) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each validation user's quality (BET's: the mean of Recall@k and NDCG@k, k in 5, 10, 20, as RecBole
    computes them for that user), from RecBole's own full-ranking batches. Returns (user ids, 0-based, that
    have validation positives; their quality; item quality), where an item's quality is the mean over the
    users that have it as a validation positive (items with none: the mean over all users). The mean over
    users is ``quality(ctx.evaluate(data))``."""
    trainer, model, n_items = ctx.scorer.trainer, ctx.model, ctx.masked.n_items
    model.eval()
    trainer.tot_item_num = data._dataset.item_num
    kmax = max(TOPKS)
    discount = 1.0 / torch.log2(torch.arange(2, kmax + 2, dtype=torch.float64))
    users, values, pair_users, pair_items = [], [], [], []
    for batch in data:
        interaction, scores, positive_u, positive_i = trainer._full_sort_batch_eval(batch)
        top = torch.topk(scores, kmax, dim=-1)[1].cpu()
        positive_u, positive_i = positive_u.cpu().long(), positive_i.cpu().long()
        rows, cols = scores.shape
        keys = torch.unique(positive_u * cols + positive_i)
        pos_len = torch.bincount(keys // cols, minlength=rows).double()
        hits = torch.isin(torch.arange(rows)[:, None] * cols + top, keys).double()
        per_user = []
        for k in TOPKS:
            recall = hits[:, :k].sum(1) / pos_len.clamp(min=1)
            ideal = torch.cumsum(discount[:k], 0)[(pos_len.clamp(max=k).long() - 1).clamp(min=0)]
            per_user += [recall, (hits[:, :k] * discount[:k]).sum(1) / ideal]
        ids = interaction[model.USER_ID].cpu().long() - 1
        users.append(ids)
        values.append(torch.stack(per_user).mean(0))
        pair_users.append(ids[keys // cols])
        pair_items.append(keys % cols - 1)
    users, values = torch.cat(users).numpy(), torch.cat(values).numpy()
    user_q = np.zeros(ctx.masked.n_users)
    user_q[users] = values
    pair_users, pair_items = torch.cat(pair_users).numpy(), torch.cat(pair_items).numpy()
    counts = np.bincount(pair_items, minlength=n_items)
    sums = np.bincount(pair_items, weights=user_q[pair_users], minlength=n_items)
    item_q = np.where(counts > 0, sums / np.maximum(counts, 1), values.mean())
    return users, values, item_q


class ProbeFinetuner(Finetuner):
    """BET's probe finetuning (RecBole's trainer, a fresh Adam per probe) at ``ciess_finetune_lr``, no decay."""

    def _build_optimizer(self, **kwargs):
        params = [p for p in self.model.parameters() if p.requires_grad]
        return adam(params, self.config["ciess_finetune_lr"], self.weight_decay or 0.0, self.config)

    def reset_optimizer(self) -> None:
        self.optimizer = self._build_optimizer()


class Environment:
    """A probe: load the pretrained weights with the sizes, finetune, rank validation; the per-entity states."""

    def __init__(self, ctx, settings: CIESSSettings, pre_state: dict):
        self.ctx, self.settings, self.pre_state = ctx, settings, pre_state
        self.finetuner = ProbeFinetuner(ctx.config, ctx.model)
        b = ctx.budget
        freq = np.concatenate([np.log1p(ctx.user_freq) / np.log1p(max(ctx.user_freq.max(), 1)),
                               np.log1p(ctx.item_freq) / np.log1p(max(ctx.item_freq.max(), 1))])
        self.frequency = torch.tensor(freq, dtype=torch.float32)
        self.n_users, self.d_max = b.n_users, b.d_max
        ctx.masked.load(pre_state)
        self.full_quality, self.full_user_q, self.full_item_q = self.measure()
        if self.full_quality <= 0:
            raise RuntimeError("the pretrained model scores 0 on validation; CIESS's quality ratios are undefined")

    def measure(self) -> tuple[float, np.ndarray, np.ndarray]:
        """(mean quality over validation users, quality of every user (users without validation positives get
        the mean), quality of every item); absolute values, not yet relative to the pretrained model."""
        users, values, item_q = entity_quality(self.ctx, self.ctx.valid_data)
        mean = float(values.mean())
        user_q = np.full(self.n_users, mean)
        user_q[users] = values
        return mean, user_q, item_q

    def state(self, sizes: np.ndarray, user_q: np.ndarray, item_q: np.ndarray) -> torch.Tensor:
        quality_now = np.concatenate([user_q, item_q]) / self.full_quality
        return torch.stack([self.frequency, torch.tensor(sizes / self.d_max, dtype=torch.float32),
                            torch.tensor(quality_now, dtype=torch.float32)], dim=1)

    def start(self) -> torch.Tensor:
        """An episode starts at the pretrained model: everyone at d_max, its quality."""
        return self.state(np.full(len(self.frequency), self.d_max), self.full_user_q, self.full_item_q)

    def probe(self, sizes: np.ndarray, seed: int) -> tuple[float, torch.Tensor, torch.Tensor]:
        """(quality relative to the pretrained model, each entity's reward, the next states)."""
        ctx = self.ctx
        ctx.reseed(seed)
        ctx.masked.load(self.pre_state, sizes)
        self.finetuner.run(ctx.train_data, self.settings.finetune_epochs)
        mean, user_q, item_q = self.measure()
        next_states = self.state(sizes, user_q, item_q)
        rewards = next_states[:, 2] - self.settings.size_penalty * next_states[:, 1]
        return mean / self.full_quality, rewards, next_states


def probe_seed(seed: int, episode: int, step: int) -> int:
    return seed + 1009 * episode + 31 * step + 1


class CIESS(Method):
    name = "ciess"

    def select(self, ctx) -> Selection:
        config, b, logger = ctx.config, ctx.budget, getLogger()
        settings = CIESSSettings.from_config(config)
        pre_state, _, pretrain_s = pretrained(ctx)
        start = perf_counter()
        env = Environment(ctx, settings, pre_state)
        torch.manual_seed(config["seed"])
        generator = torch.Generator().manual_seed(config["seed"])
        agents = {"user": TD3(settings, generator, config), "item": TD3(settings, generator, config)}
        sides = {"user": slice(0, b.n_users), "item": slice(b.n_users, b.n_entities)}
        probes, best = [], None
        for episode in range(settings.episodes):
            states = env.start()
            for step in range(settings.steps):
                asked = torch.cat([agents[k].explore(states[part]) for k, part in sides.items()]).numpy()
                sizes = cap(b, sizes_from_actions(asked, b.d_min, b.d_max))
                assert b.fits(sizes), "CIESS: a capped action exceeds the budget"
                probe_start = perf_counter()
                relative, rewards, next_states = env.probe(sizes, probe_seed(config["seed"], episode, step))
                # the critics learn the value of the sizes that were probed, after the cap
                taken = torch.tensor(actions_from_sizes(sizes, b.d_min, b.d_max), dtype=torch.float32)
                done = step == settings.steps - 1
                for kind, part in sides.items():
                    agents[kind].buffer.add(states[part], taken[part], rewards[part], next_states[part], done)
                    for _ in range(settings.updates):
                        agents[kind].update()
                states = next_states
                kept = b.kept_params(sizes)
                probes.append({"episode": episode + 1, "step": step + 1, "quality": relative,
                               "kept_params": kept, "capped": bool(b.kept_params(
                                   sizes_from_actions(asked, b.d_min, b.d_max)) > b.budget_params),
                               "mean_reward": float(rewards.mean()), "seconds": perf_counter() - probe_start})
                if best is None or relative > best[0]:
                    best = (relative, len(probes) - 1, sizes)
                logger.info(f"ciess episode {episode + 1}/{settings.episodes} step {step + 1}/{settings.steps}: "
                            f"quality {relative:.4f} of the pretrained model (best {best[0]:.4f}), mean size "
                            f"{sizes.mean():.1f}, kept {kept} of budget {b.budget_params} parameters, "
                            f"{probes[-1]['seconds']:.1f} s")
        search_s = perf_counter() - start
        _, best_index, sizes = best
        state, valid, retrain_s = ctx.train_from_scratch(sizes, label="ciess retrain")
        kept = b.kept_params(sizes)
        search = {
            "probes": probes,
            "best_probe": best_index,
            "best_quality": probes[best_index]["quality"],
            "retrained_quality": quality(valid) / env.full_quality,
            "pretrained_quality": env.full_quality,
            "critic_updates": {k: a.critic_updates for k, a in agents.items()},
            "actor_updates": {k: a.actor_updates for k, a in agents.items()},
            "mean_size": {"user": float(sizes[:b.n_users].mean()), "item": float(sizes[b.n_users:].mean())},
            "kept_params": kept,
            "realized_sparsity": b.realized_sparsity(kept),
            "retrain_valid": pick(valid, REPORT_METRICS),
        }
        return Selection(sizes, state, valid, search, {"pretrain": pretrain_s, "search": search_s,
                                                        "retrain": retrain_s})
