"""ESAPN (Liu et al., SIGIR 2020) as a baseline: embedding sizes chosen by reinforcement learning.

Every user and item starts at the smallest candidate size. Each training batch has two stages
(Algorithm 1):

1. policy stage: a batch of held-out validation pairs. Each of its users and items samples keep or enlarge
   from its type's policy network; enlargements are applied temporarily (warm-started). The per-entity
   losses on the batch give the rewards of Eq. 2 (the mean of the entity's last T losses minus the current
   one), REINFORCE (Eq. 5-7) updates both policies, and the sizes go back.
2. model stage: a training batch. Each of its users and items takes its policy's likelier action;
   enlargements are permanent and warm-started (``esapn_budget: cap`` grants them only while the budget
   lasts). The recommender then takes one Adam step on its own loss.

Sizes are prefixes of the d_max-wide stock tables (``MaskedTables``): growing one only opens entries.
docs/methods.md lists each adaptation from the paper's streaming CTR setting to top-k ranking on a static
split, and why.
"""
from __future__ import annotations

from dataclasses import dataclass
from logging import getLogger
from time import perf_counter

import numpy as np
import torch
import torch.nn.functional as F
from recbole.model.loss import BPRLoss
from torch import nn

from recbole_bet.budget import Budget
from recbole_bet.errors import BadInput
from recbole_bet.masking import plain_state_dict
from recbole_bet.plots import plot_esapn_search
from recbole_bet.methods.base import Method, Selection
from recbole_bet.training import (REPORT_METRICS, Convergence, adam, pick, train_loader_with_batch_size,
                                  validation_pairs_loader)

KEEP, ENLARGE = 0, 1
FREQUENCY_DIM = 32  # width of the frequency embedding in the authors' code


def frequency_buckets(freq: torch.Tensor, n_buckets: int) -> torch.Tensor:
    """``floor(2 log2(1 + f))``, capped at the last bucket: exact for small counts, two buckets per doubling
    beyond (0 -> 0, 1 -> 2, 2 -> 3, 3-4 -> 4, 5-6 -> 5, 7-10 -> 6, ...)."""
    return torch.clamp(torch.floor(2 * torch.log2(freq.double() + 1)).long(), max=n_buckets - 1)


class FrequencyCounter:
    """Positive training interactions seen so far per entity (users, then items). Counting stops after the
    first pass over the training data: by then every interaction has been seen once, and a state never
    uses an interaction that has not been seen yet."""

    def __init__(self, n_entities: int, device=None):
        self.counts = torch.zeros(n_entities, dtype=torch.long, device=device)
        self.complete = False

    def observe(self, entity_ids: torch.Tensor) -> None:
        """Count one interaction per occurrence of an entity (ids may repeat)."""
        if not self.complete:
            self.counts.index_add_(0, entity_ids, torch.ones_like(entity_ids))


class LossHistory:
    """The FIFO queues of Eq. 2 for all entities at once: a ring buffer of each entity's last T losses."""

    def __init__(self, n_entities: int, length: int, device=None):
        self.length = length
        self.values = torch.zeros(n_entities, length, device=device)
        self.count = torch.zeros(n_entities, dtype=torch.long, device=device)

    def mean(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean of each entity's queued losses (at most T), and whether it has any."""
        held = self.count[ids].clamp(max=self.length)
        return self.values[ids].sum(1) / held.clamp(min=1), held > 0

    def push(self, ids: torch.Tensor, losses: torch.Tensor) -> None:
        """Append one loss per entity (``ids`` unique); the oldest of a full queue drops out."""
        self.values[ids, self.count[ids] % self.length] = losses.to(self.values.dtype)
        self.count[ids] += 1

    def reward_and_push(self, ids: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 2: R = mean of the last T losses - current loss, then the current loss joins the queue.
        Returns (rewards, has_history); an entity without earlier losses has no reward (0)."""
        baseline, has_history = self.mean(ids)
        rewards = torch.where(has_history, baseline - losses, torch.zeros_like(baseline))
        self.push(ids, losses)
        return rewards, has_history

    def recent(self, entity: int) -> list[float]:
        """One entity's queued losses, oldest first."""
        count = int(self.count[entity])
        held = min(count, self.length)
        return [float(self.values[entity, (count - held + j) % self.length]) for j in range(held)]


class SizePolicy(nn.Module):
    """One policy network (users or items): state (frequency bucket, current size) -> logits of (keep,
    enlarge). The frequency is embedded and the size one-hot, then one tanh hidden layer (paper: 512)."""

    def __init__(self, n_buckets: int, n_sizes: int, hidden: int):
        super().__init__()
        self.n_sizes = n_sizes
        self.frequency = nn.Embedding(n_buckets, FREQUENCY_DIM)
        self.mlp = nn.Sequential(nn.Linear(FREQUENCY_DIM + n_sizes, hidden), nn.Tanh(), nn.Linear(hidden, 2))

    def forward(self, buckets: torch.Tensor, size_index: torch.Tensor) -> torch.Tensor:
        state = torch.cat([self.frequency(buckets), F.one_hot(size_index, self.n_sizes).float()], dim=1)
        return self.mlp(state)


def can_enlarge(size_index: torch.Tensor, n_sizes: int) -> torch.Tensor:
    return size_index < n_sizes - 1


def greedy_enlarge(logits: torch.Tensor, size_index: torch.Tensor, n_sizes: int) -> torch.Tensor:
    """The model stage's action: enlarge where the policy finds it likelier than keeping and a larger size exists."""
    return (logits[:, ENLARGE] > logits[:, KEEP]) & can_enlarge(size_index, n_sizes)


def sample_enlarge(logits: torch.Tensor, size_index: torch.Tensor, n_sizes: int,
                   generator: torch.Generator) -> torch.Tensor:
    """The policy stage's action, one Monte-Carlo sample per entity (N = 1 in Eq. 6)."""
    p_enlarge = torch.softmax(logits.detach(), dim=1)[:, ENLARGE]
    draws = torch.rand(len(p_enlarge), generator=generator).to(p_enlarge.device)
    return (draws < p_enlarge) & can_enlarge(size_index, n_sizes)


def reinforce_loss(logits: torch.Tensor, enlarge: torch.Tensor, rewards: torch.Tensor,
                   weight: torch.Tensor) -> torch.Tensor:
    """Eq. 6-7 as a loss to minimise: -mean over the weighted entities of R * log pi(a|s)."""
    log_p = torch.log_softmax(logits, dim=1).gather(1, enlarge.long()[:, None]).squeeze(1)
    return -(weight * rewards.detach() * log_p).sum() / weight.sum().clamp(min=1)


def grow(size_index: torch.Tensor, ids: torch.Tensor, enlarge: torch.Tensor, n_sizes: int) -> torch.Tensor:
    """A new size-index vector: the entities ``ids`` (unique) that enlarge move one candidate up. Sizes never
    shrink, and one at the largest candidate stays there."""
    grown = size_index.clone()
    step = enlarge & can_enlarge(size_index[ids], n_sizes)
    grown[ids[step]] += 1
    return grown


def cap_enlargements(budget: Budget, candidate_sizes: np.ndarray, size_index: np.ndarray, ids: np.ndarray,
                     enlarge: np.ndarray, priority: np.ndarray) -> tuple[np.ndarray, int]:
    """``esapn_budget: cap``: grant the requested enlargements, the policy's most confident first, while the
    budget lasts; the first one that would exceed it stops the rest. Returns (granted mask over ``ids``,
    number refused)."""
    requested = np.nonzero(enlarge)[0]
    order = requested[np.argsort(-priority[requested], kind="stable")]
    current = size_index[ids[order]]
    increments = candidate_sizes[current + 1] - candidate_sizes[current]
    n_granted = budget.growth_granted(candidate_sizes[size_index], increments)
    granted = np.zeros(len(ids), dtype=bool)
    granted[order[:n_granted]] = True
    return granted, len(order) - n_granted


class WarmStart:
    """Values for the entries an entity opens when it grows from candidate size d_k to d_(k+1).

    The paper initialises the larger embedding as ``W_(k->k+1) e_k + b``, with W learned through the
    projection chain of Eq. 1, which every smaller embedding passes on its way to the model. Here a size
    is a prefix of one d_max-wide stock table and nothing projects in the forward pass, so such a W would
    get no gradient. Instead, the map from an entity's first d_k entries to its entries d_k..d_(k+1) is
    fitted (ridge least squares, with a bias) on the entities of the same table already at d_(k+1) or
    more: what the model has learned for them. The first d_k entries are kept as they are. Until there are
    at least 2 (d_k + 1) such entities, the opened entries take the model's fresh initial values.
    """

    RIDGE = 1e-3  # relative to the mean diagonal of the Gram matrix

    def __init__(self, masked, init_state: dict, candidate_sizes):
        self.masked = masked
        self.sizes = [int(d) for d in candidate_sizes]
        self.init = {t.name: init_state[f"{t.name}.weight"].to(t.module.weight.device) for t in masked.tables}

    @torch.no_grad()
    def fill(self, grown: torch.Tensor, from_index: torch.Tensor, size_index: torch.Tensor) -> tuple[int, int]:
        """Write the opened entries of ``grown`` (global ids, unique), each growing one candidate up from
        ``from_index``. ``size_index`` holds the permanent sizes: the donors of the projection. Returns how
        many (table, entity) pairs were projected and how many took initial values."""
        n_users = self.masked.n_users
        projected = initialised = 0
        for table in self.masked.tables:
            offset, count = (0, n_users) if table.entity == "user" else (n_users, self.masked.n_items)
            own = (grown >= offset) & (grown < offset + count)
            if not bool(own.any()):
                continue
            rows, steps = grown[own] - offset + 1, from_index[own]  # table rows: padding row 0 first
            table_index = size_index[offset:offset + count]
            weight = table.module.weight
            for k in torch.unique(steps).tolist():  # at most one pass per candidate size
                target = rows[steps == k]
                lo, hi = self.sizes[k], self.sizes[k + 1]
                donors = torch.nonzero(table_index > k).squeeze(1) + 1
                if len(donors) >= 2 * (lo + 1):
                    weight[target, lo:hi] = self.project(weight[donors], weight[target, :lo], lo, hi)
                    projected += len(target)
                else:
                    weight[target, lo:hi] = self.init[table.name][target, lo:hi]
                    initialised += len(target)
        return projected, initialised

    @classmethod
    def project(cls, donors: torch.Tensor, prefix: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """Ridge regression of donors' entries lo..hi on their first lo entries, applied to ``prefix``."""
        x = torch.cat([donors[:, :lo], torch.ones_like(donors[:, :1])], dim=1).double()
        gram = x.T @ x
        ridge = cls.RIDGE * gram.diagonal().mean() + 1e-12
        coef = torch.linalg.solve(gram + ridge * torch.eye(lo + 1, dtype=gram.dtype, device=gram.device),
                                  x.T @ donors[:, lo:hi].double())
        inputs = torch.cat([prefix, torch.ones_like(prefix[:, :1])], dim=1).double()
        return (inputs @ coef).to(donors.dtype)


class PerSampleLosses:
    """While installed, the model's prediction-loss module (``mf_loss``: BPR for LightGCN/NGCF; ``loss``:
    BCE with logits for NeuMF) also records its per-sample values before taking the batch mean, so
    ``calculate_loss`` keeps its exact value and gradient while ESAPN attributes losses to users and items.
    Regularisation terms are not part of them. A model with no such module (or several) gets the batch loss
    for every sample."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.modules = [m for m in model.children()
                        if isinstance(m, BPRLoss) or (isinstance(m, nn.modules.loss._Loss)
                                                      and getattr(m, "reduction", None) in ("mean", "sum"))]
        self.last = None
        if len(self.modules) != 1:
            getLogger().warning(f"ESAPN: {type(model).__name__} has {len(self.modules)} recognised loss modules; "
                                "every sample of a batch gets the batch loss")

    def __enter__(self):
        if len(self.modules) == 1:
            module = self.modules[0]
            module.forward = self._bpr(module) if isinstance(module, BPRLoss) else self._unreduced(module)
        return self

    def __exit__(self, *exc):
        for module in self.modules:
            module.__dict__.pop("forward", None)  # the class's forward again

    def _bpr(self, module):
        def forward(pos_score, neg_score):
            losses = -torch.log(module.gamma + torch.sigmoid(pos_score - neg_score))  # BPRLoss, per sample
            self.last = losses.detach()
            return losses.mean()
        return forward

    def _unreduced(self, module):
        reduce = torch.mean if module.reduction == "mean" else torch.sum
        stock = type(module).forward

        def forward(*args, **kwargs):
            saved, module.reduction = module.reduction, "none"
            try:
                losses = stock(module, *args, **kwargs)
            finally:
                module.reduction = saved
            self.last = losses.detach().reshape(len(losses), -1).mean(1)
            return reduce(losses)
        return forward

    def __call__(self, interaction) -> tuple[torch.Tensor, torch.Tensor]:
        """(the model's batch loss, one prediction loss per row of ``interaction``)."""
        self.last = None
        loss = self.model.calculate_loss(interaction)
        if isinstance(loss, tuple):  # RecBole's trainer sums a tuple of losses too
            loss = sum(loss)
        rows = interaction.length
        per_row = self.last
        if per_row is None or per_row.shape != (rows,):
            per_row = loss.detach().expand(rows)
        return loss, per_row


@dataclass
class ESAPNSettings:
    candidate_sizes: list
    budget_mode: str  # "cap" or "none"
    policy_lr: float
    batch_size: int
    history: int
    hidden: int
    frequency_buckets: int
    retrain: bool

    @classmethod
    def from_config(cls, config) -> "ESAPNSettings":
        return cls([int(d) for d in config["esapn_candidate_sizes"]], config["esapn_budget"],
                   float(config["esapn_policy_lr"]), config["esapn_batch_size"], config["esapn_history"],
                   config["esapn_hidden"], config["esapn_frequency_buckets"], bool(config["esapn_retrain"]))


@dataclass
class SearchOutcome:
    sizes: np.ndarray  # at the best validation epoch
    state: dict  # weights of that epoch
    valid: dict
    epochs: int
    best_epoch: int  # 1-based
    per_epoch: list


def _cycle(loader):
    while True:  # each pass reshuffles
        yield from loader


def _scatter_mean(values: torch.Tensor, inverse: torch.Tensor, n: int) -> torch.Tensor:
    sums = torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(0, inverse, values)
    return sums / torch.bincount(inverse, minlength=n).clamp(min=1).to(values.dtype)


class SizeSearch:
    """Algorithm 1 on one run context: the recommender and the two policies alternate per batch."""

    def __init__(self, ctx, settings: ESAPNSettings):
        self.ctx, self.settings = ctx, settings
        self.model, self.masked, self.budget = ctx.model, ctx.masked, ctx.budget
        config = ctx.config
        self.device = next(self.model.parameters()).device
        self.sizes = np.asarray(settings.candidate_sizes, dtype=np.int64)
        self.n_sizes = len(self.sizes)
        n = self.masked.n_users + self.masked.n_items
        self.size_index = torch.zeros(n, dtype=torch.long, device=self.device)
        self.frequency = FrequencyCounter(n, self.device)
        self.history = LossHistory(n, settings.history, self.device)
        torch.manual_seed(config["seed"])  # the policies' initial weights
        self.policies = {kind: SizePolicy(settings.frequency_buckets, self.n_sizes, settings.hidden).to(self.device)
                         for kind in ("user", "item")}
        self.policy_optimizers = {kind: torch.optim.Adam(p.parameters(), lr=settings.policy_lr)
                                  for kind, p in self.policies.items()}
        self.optimizer = adam(self.model.parameters(), config["learning_rate"], config["weight_decay"] or 0.0, config)
        self.warm_start = WarmStart(self.masked, ctx.init_state, self.sizes)
        self.losses = PerSampleLosses(self.model)
        self.generator = torch.Generator().manual_seed(config["seed"])
        self.label_field = config["LABEL_FIELD"]
        self.enlarged = 0  # permanent enlargements
        self.refused = 0  # enlargement requests the cap refused (an entity once per batch it asks in)
        self.warm_started = {"projected": 0, "initialised": 0}  # permanent ones, per (table, entity)

    def current_sizes(self) -> np.ndarray:
        return self.sizes[self.size_index.cpu().numpy()]

    def _entities(self, batch) -> dict:
        """Global ids (users, then items) of each row's user and item."""
        users = batch[self.model.USER_ID] - 1  # RecBole's ids start at 1 (0 is padding)
        items = batch[self.model.ITEM_ID] - 1 + self.masked.n_users
        return {"user": users, "item": items}

    def _decide(self, kind: str, ids: torch.Tensor):
        index = self.size_index[ids]
        logits = self.policies[kind](frequency_buckets(self.frequency.counts[ids], self.settings.frequency_buckets),
                                     index)
        return logits, index

    def _resize(self, new_index: torch.Tensor, grown: torch.Tensor, from_index: torch.Tensor) -> tuple[int, int]:
        """Apply the sizes of ``new_index`` (growing only opens entries), then warm-start what opened."""
        self.masked.set_sizes(self.sizes[new_index.cpu().numpy()])
        return self.warm_start.fill(grown, from_index, self.size_index)

    def policy_step(self, batch) -> None:
        """Algorithm 1, lines 2-6, on a batch of validation pairs."""
        columns = self._entities(batch)
        trial_index = self.size_index.clone()
        plans, grown, from_index = [], [], []
        for kind, column in columns.items():
            ids, inverse = torch.unique(column, return_inverse=True)
            logits, index = self._decide(kind, ids)
            enlarge = sample_enlarge(logits, index, self.n_sizes, self.generator)
            trial_index[ids[enlarge]] += 1
            plans.append((kind, ids, inverse, logits, enlarge, index))
            grown.append(ids[enlarge])
            from_index.append(index[enlarge])
        grown, from_index = torch.cat(grown), torch.cat(from_index)
        if len(grown):
            self._resize(trial_index, grown, from_index)
        self.model.eval()  # no dropout in the reward
        with torch.no_grad():
            _, row_losses = self.losses(batch)
        self.model.train()
        if len(grown):  # back to the permanent sizes: this zeroes the trial entries again
            self.masked.set_sizes(self.current_sizes())
        for kind, ids, inverse, logits, enlarge, index in plans:
            rewards, has_history = self.history.reward_and_push(ids, _scatter_mean(row_losses, inverse, len(ids)))
            weight = (has_history & can_enlarge(index, self.n_sizes)).float()  # a forced "keep" teaches nothing
            optimizer = self.policy_optimizers[kind]
            optimizer.zero_grad()
            reinforce_loss(logits, enlarge, rewards, weight).backward()
            optimizer.step()

    def model_step(self, batch) -> float:
        """Algorithm 1, lines 7-10, on a training batch; returns the batch loss."""
        columns = self._entities(batch)
        if not self.frequency.complete:
            positive = (batch[self.label_field] > 0) if self.label_field in batch.interaction else slice(None)
            self.frequency.observe(torch.cat([columns["user"][positive], columns["item"][positive]]))
        ids, enlarge, confidence = [], [], []
        with torch.no_grad():
            for kind, column in columns.items():
                kind_ids = torch.unique(column)
                logits, index = self._decide(kind, kind_ids)
                ids.append(kind_ids)
                enlarge.append(greedy_enlarge(logits, index, self.n_sizes))
                confidence.append(torch.softmax(logits, dim=1)[:, ENLARGE])
        ids, enlarge, confidence = torch.cat(ids), torch.cat(enlarge), torch.cat(confidence)
        if self.settings.budget_mode == "cap" and bool(enlarge.any()):
            granted, refused = cap_enlargements(self.budget, self.sizes, self.size_index.cpu().numpy(),
                                                ids.cpu().numpy(), enlarge.cpu().numpy(), confidence.cpu().numpy())
            enlarge = torch.from_numpy(granted).to(self.device)
            self.refused += refused
        if bool(enlarge.any()):
            grown = ids[enlarge]
            new_index = grow(self.size_index, ids, enlarge, self.n_sizes)
            projected, initialised = self._resize(new_index, grown, self.size_index[grown])
            self.warm_started["projected"] += projected
            self.warm_started["initialised"] += initialised
            self.size_index = new_index
            self.enlarged += len(grown)
        self.model.train()
        self.optimizer.zero_grad()
        loss, _ = self.losses(batch)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def fit(self) -> SearchOutcome:
        """Alternate per batch for up to ``epochs`` epochs, with early stopping on ``valid_metric`` as every
        method (no stop before ``warmup_epochs``). Returns the sizes and weights of the best epoch."""
        ctx, config, logger = self.ctx, self.ctx.config, getLogger()
        seed, metric = config["seed"], config["valid_metric"].lower()
        train = train_loader_with_batch_size(config, ctx.train_data, self.settings.batch_size)
        train.generator.manual_seed(seed)
        held_out = validation_pairs_loader(config, ctx.train_data, ctx.valid_data, self.settings.batch_size)
        held_out.generator.manual_seed(seed + 1)
        validation_batches = _cycle(held_out)
        convergence, best_score, best, per_epoch = Convergence(config, eval_step=1), -np.inf, None, []
        started = perf_counter()
        with self.losses:
            for epoch in range(config["epochs"]):
                start, enlarged_before, losses = perf_counter(), self.enlarged, []
                for batch in train:
                    self.policy_step(next(validation_batches).to(self.device))
                    losses.append(self.model_step(batch.to(self.device)))
                self.frequency.complete = True
                valid = ctx.evaluate(ctx.valid_data)
                improved = valid[metric] > best_score
                best_score = max(best_score, valid[metric])
                stop = convergence.update(valid[metric])
                sizes = self.current_sizes()
                if improved:
                    best = (epoch + 1, sizes, plain_state_dict(self.model), dict(valid))
                kept = self.budget.kept_params(sizes)
                per_epoch.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), metric: float(valid[metric]),
                                  "kept_params": kept, "enlarged": self.enlarged - enlarged_before,
                                  "seconds": perf_counter() - start})
                logger.info(
                    f"esapn epoch {epoch + 1}/{config['epochs']}: train loss {per_epoch[-1]['train_loss']:.4f}, "
                    f"valid {metric} {valid[metric]:.4f} (best {best_score:.4f} at epoch {best[0]}), mean size "
                    f"{sizes.mean():.1f}, kept {kept} of budget {self.budget.budget_params} parameters, "
                    f"{per_epoch[-1]['enlarged']} enlarged, {self.refused} refused by the cap so far, "
                    f"{per_epoch[-1]['seconds']:.1f} s")
                if stop:
                    break
        warning = convergence.warning()
        if warning:
            logger.warning(f"esapn: {warning}")
        ctx.trainings.append(dict(convergence.record(), label="esapn search", seconds=perf_counter() - started))
        best_epoch, sizes, state, valid = best
        return SearchOutcome(sizes, state, valid, len(per_epoch), best_epoch, per_epoch)


def size_histogram(sizes: np.ndarray, candidate_sizes, n_users: int) -> dict:
    """How many users and items ended at each candidate size."""
    return {kind: {str(d): int((part == d).sum()) for d in candidate_sizes}
            for kind, part in (("user", sizes[:n_users]), ("item", sizes[n_users:]))}


class ESAPN(Method):
    """ESAPN's sizes and, by default, the weights trained alongside them (``esapn_retrain`` retrains)."""

    name = "esapn"

    def plot_search(self, path, search, title, budget) -> bool:
        return bool(search) and plot_esapn_search(path, search, title, budget.budget_params)

    def select(self, ctx) -> Selection:
        settings = ESAPNSettings.from_config(ctx.config)
        b = ctx.budget
        start_sizes = np.full(b.n_entities, settings.candidate_sizes[0], dtype=np.int64)
        if settings.budget_mode == "cap" and not b.fits(start_sizes):
            raise BadInput(
                f"esapn_budget=cap: every user and item starts at the smallest candidate size "
                f"{settings.candidate_sizes[0]}, which takes {b.kept_params(start_sizes)} parameters, more than the "
                f"budget of {b.budget_params}; lower sparsity, add a smaller size to esapn_candidate_sizes, or set "
                "esapn_budget=none"
            )
        start = perf_counter()
        ctx.reseed()
        ctx.masked.load(ctx.init_state, start_sizes)
        search = SizeSearch(ctx, settings)
        outcome = search.fit()
        search_s = perf_counter() - start
        sizes, state, valid, retrain_s = outcome.sizes, outcome.state, outcome.valid, 0.0
        if settings.retrain:
            state, valid, retrain_s = ctx.train_from_scratch(sizes)
        kept = b.kept_params(sizes)
        summary = {
            "budget_mode": settings.budget_mode,
            "budget_applied": settings.budget_mode == "cap",
            "candidate_sizes": settings.candidate_sizes,
            "size_histogram": size_histogram(sizes, settings.candidate_sizes, b.n_users),
            "kept_params": kept,
            "realized_sparsity": b.realized_sparsity(kept),
            "cap_hit": search.refused > 0 if settings.budget_mode == "cap" else None,
            "refused_enlargements": search.refused,
            "enlargements": search.enlarged,
            "warm_start": dict(search.warm_started),
            "epochs": outcome.epochs,
            "best_epoch": outcome.best_epoch,
            "retrained": settings.retrain,
            "search_valid": pick(outcome.valid, REPORT_METRICS),
            "per_epoch": outcome.per_epoch,
        }
        return Selection(sizes, state, valid, summary, {"pretrain": 0.0, "search": search_s, "retrain": retrain_s},
                         budget_applied=settings.budget_mode == "cap")
