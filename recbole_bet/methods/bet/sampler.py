"""Budget-aware table-level action sampler (BET paper, section 3.2).

For each action: w ~ U(0, 1) is the users' share of the budget; the user and the item distributions are
drawn independently from {power law, truncated normal, truncated exponential, log-normal} with their
parameter ~ U(0, beta_max); one draw per entity gives its weight; weights become integer sizes that fill
the share exactly within [d_min, d_max] (``budget.allocate_sorted``); sorted sizes go to entities by
training-frequency rank (the most frequent gets the largest).

Differences from the authors' code (see docs/deviations.md): no rejection loop and no ``max(1, .)`` after
flooring, so a candidate can never exceed the budget; rounding wastes no budget. The paper's own sizing stays
selectable (``mode="paper"``, key ``bet_sampler``): sizes floor(p / sum(p) * share), at least d_min, and any
candidate with a size above d_max (or, as no candidate may, over the budget) is drawn again. ``draw`` chooses
whether each candidate draws its own distributions (``per_candidate``) or one family and parameter per side
serve the whole iteration (``per_iteration``: Algorithm 1 draws them in line 4, before the m candidates of
line 5).
"""
from __future__ import annotations

import numpy as np
from scipy.special import ndtr, ndtri

from recbole_bet.budget import Budget, allocate_sorted, assign_by_rank, split_total

DISTRIBUTIONS = ("powerlaw", "truncnorm", "truncexpon", "lognorm")
DEFAULT_BETA_MAX = {"powerlaw": 20.0, "truncnorm": 20.0, "truncexpon": 5.0, "lognorm": 0.5}
_TINY = 1e-12  # a parameter of exactly 0 makes some distributions degenerate


def sorted_uniforms(rng: np.random.Generator, m: int, n: int) -> np.ndarray:
    """(m, n) order statistics of n uniforms per row, DESCENDING, without sorting.

    U_(k) = S_k / S_{n+1} with S the cumulative sum of n+1 standard exponentials.
    """
    e = rng.standard_exponential((m, n + 1))
    s = np.cumsum(e, axis=1)
    u = s[:, :n] / s[:, n:]
    return u[:, ::-1]


def _quantile(kind: str, beta: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse CDF of each distribution (monotone increasing in u), vectorised; beta has shape (m, 1)."""
    b = np.maximum(beta, _TINY)
    if kind == "powerlaw":  # scipy.stats.powerlaw(a): F(x) = x^a on [0, 1]
        return u ** (1.0 / b)
    if kind == "truncnorm":  # scipy.stats.truncnorm(0, b): standard normal cut to [0, b]
        lo = ndtr(0.0)
        return ndtri(lo + u * (ndtr(b) - lo))
    if kind == "truncexpon":  # scipy.stats.truncexpon(b): exponential cut to [0, b]
        return -np.log1p(-u * (1.0 - np.exp(-b)))
    if kind == "lognorm":  # scipy.stats.lognorm(s): exp(s * Z)
        return np.exp(b * ndtri(u))
    raise ValueError(kind)


SAMPLER_MODES = ("exact", "paper")
DRAWS = ("per_candidate", "per_iteration")
MAX_REJECTION_ROUNDS = 200  # the paper's sampler redraws rejected candidates; give up (an error) after this


def proportional_sizes(weights_desc: np.ndarray, totals: np.ndarray, d_min: int) -> np.ndarray:
    """The paper's sizing: floor(w / sum(w) * total), at least d_min; rows stay sorted descending. Sizes may
    exceed d_max and a row may exceed its total (the caller rejects those)."""
    w = np.asarray(weights_desc, dtype=np.float64)
    share = w / np.maximum(w.sum(axis=1, keepdims=True), 1e-300)
    return np.maximum(np.floor(share * np.asarray(totals, dtype=np.float64)[:, None]), d_min).astype(np.int64)


class ActionSampler:
    """Draws candidate actions that always fit the budget.

    ``user_freq``/``item_freq``: training-split interaction counts (ties broken by id). ``mode``: ``exact``
    (water-filling, never rejects) or ``paper`` (proportional sizes, rejection); ``draw``: distributions per
    candidate or per iteration (module docstring).
    """

    def __init__(self, budget: Budget, user_freq, item_freq, beta_max: dict | None = None, mode: str = "exact",
                 draw: str = "per_candidate"):
        if mode not in SAMPLER_MODES or draw not in DRAWS:
            raise ValueError(f"mode must be one of {SAMPLER_MODES} and draw one of {DRAWS}")
        self.budget = budget
        self.mode, self.draw = mode, draw
        self.rejected = 0  # candidates the paper's sampler drew again, over the sampler's life
        self.beta_max = dict(DEFAULT_BETA_MAX, **(beta_max or {}))
        user_freq = np.asarray(user_freq)
        item_freq = np.asarray(item_freq)
        if len(user_freq) != budget.n_users or len(item_freq) != budget.n_items:
            raise ValueError("frequency vectors do not match the budget's user/item counts")
        # stable argsort of -freq: most frequent first, equal frequencies by ascending id
        self.user_rank = np.argsort(-user_freq, kind="stable")
        self.item_rank = np.argsort(-item_freq, kind="stable")

    def _side(self, rng: np.random.Generator, m: int, n: int, totals: np.ndarray, family=None):
        """Sorted sizes (m, n) of one side; ``family`` = (kind index, beta in [0, 1)) fixes the distribution
        for all m rows (``per_iteration``), else each row draws its own."""
        if family is None:
            kinds = rng.integers(0, len(DISTRIBUTIONS), size=m)
            betas = rng.uniform(0.0, 1.0, size=m)
        else:
            kinds, betas = np.full(m, family[0]), np.full(m, family[1])
        u = sorted_uniforms(rng, m, n)
        # keep u strictly inside (0, 1) so inverse CDFs stay finite
        np.clip(u, 1e-12, 1 - 1e-12, out=u)
        weights = np.empty_like(u)
        for k, kind in enumerate(DISTRIBUTIONS):
            rows = np.nonzero(kinds == k)[0]
            if rows.size:
                beta = (betas[rows] * self.beta_max[kind])[:, None]
                weights[rows] = _quantile(kind, beta, u[rows])
        weights = np.nan_to_num(weights, nan=0.0, posinf=np.finfo(np.float64).max)
        if self.mode == "paper":
            sizes = proportional_sizes(weights, totals, self.budget.d_min)
        else:
            sizes = allocate_sorted(weights, totals, self.budget.d_min, self.budget.d_max)
        info = [{"distribution": DISTRIBUTIONS[k], "beta": float(betas[i] * self.beta_max[DISTRIBUTIONS[k]])}
                for i, k in enumerate(kinds)]
        return sizes, info

    def sample(self, m: int, rng: np.random.Generator) -> np.ndarray:
        """(m, n_users + n_items) int16 sizes; every row fits the budget and [d_min, d_max]."""
        sizes, _ = self.sample_with_info(m, rng)
        return sizes

    def sample_with_info(self, m: int, rng: np.random.Generator):
        b = self.budget
        families = None
        if self.draw == "per_iteration":  # one family and parameter per side for the whole iteration
            families = [(int(rng.integers(0, len(DISTRIBUTIONS))), float(rng.uniform(0.0, 1.0))) for _ in range(2)]
        kept, infos = [], []
        for _ in range(MAX_REJECTION_ROUNDS):
            sizes, info = self._draw(m, rng, families)
            if self.mode == "exact":
                kept, infos = [sizes], info
                break
            ok = (sizes.max(axis=1) <= b.d_max) & (b.kept_params_many(sizes) <= b.budget_params)
            self.rejected += int((~ok).sum())
            kept.append(sizes[ok])
            infos += [i for i, good in zip(info, ok) if good]
            if len(infos) >= m:
                break
        else:
            raise RuntimeError(f"the paper's sampler found {len(infos)} of {m} candidates within d_max and the "
                               f"budget in {MAX_REJECTION_ROUNDS} rounds; use bet_sampler: exact")
        sizes = np.concatenate(kept)[:m].astype(np.int16)
        if not (b.kept_params_many(sizes) <= b.budget_params).all():  # the hard guarantee, checked
            raise RuntimeError("sampler produced a candidate over budget")
        return sizes, infos[:m]

    def _draw(self, m: int, rng: np.random.Generator, families):
        b = self.budget
        w = rng.uniform(0.0, 1.0, size=m)
        user_totals, item_totals = split_total(w, b)
        user_sorted, user_info = self._side(rng, m, b.n_users, user_totals, families and families[0])
        item_sorted, item_info = self._side(rng, m, b.n_items, item_totals, families and families[1])
        sizes = np.concatenate(
            [assign_by_rank(user_sorted, self.user_rank), assign_by_rank(item_sorted, self.item_rank)], axis=1
        )
        info = [{"user_share": float(w[i]), "user": user_info[i], "item": item_info[i]} for i in range(m)]
        return sizes, info
