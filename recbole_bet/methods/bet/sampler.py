"""Budget-aware table-level action sampler (BET paper, section 3.2).

For each action: w ~ U(0, 1) is the users' share of the budget; the user and the item distributions are
drawn independently from {power law, truncated normal, truncated exponential, log-normal} with their
parameter ~ U(0, beta_max); one draw per entity gives its weight; weights become integer sizes that fill
the share exactly within [d_min, d_max] (``budget.allocate_sorted``); sorted sizes go to entities by
training-frequency rank (the most frequent gets the largest).

Differences from the authors' code (see docs/deviations.md): no rejection loop and no ``max(1, .)`` after
flooring, so a candidate can never exceed the budget; rounding wastes no budget. The paper's own sizing stays
selectable (``mode="paper"``, key ``bet_sampler``): sizes floor(p / sum(p) * share), at least d_min, and any
candidate with a size above d_max (or, as no candidate may, over the budget) is drawn again. ``paper_filled`` is
the paper's sizing and redrawing with the units flooring loses given out as ``exact`` gives them (one each to
the highest-ranked entities below d_max), so that a kept candidate uses its share. ``draw`` chooses
whether each candidate draws its own distributions (``per_candidate``) or one family and parameter per side
serve the whole iteration (``per_iteration``: Algorithm 1 draws them in line 4, before the m candidates of
line 5). ``sides`` (key ``bet_sides``, not in the paper): ``independent`` as above, or ``tied``: one distribution
serves users and items alike and the budget is one pool, so a user and an item at the same frequency quantile
get the same size, with no separate users' share. A dot product of the stored vectors (NeuMF's GMF) can use
only the columns both sides keep, min(d_u, d_i) per pair; tied candidates give training pairs more of those
than equal sizes (benchmarks/pair_width.py, docs/deviations.md).
"""
from __future__ import annotations

import numpy as np
from scipy.special import ndtr, ndtri

from recbole_bet.budget import Budget, allocate_sorted, assign_by_rank, give_lost_units, split_total

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


SAMPLER_MODES = ("exact", "paper", "paper_filled")
DRAWS = ("per_candidate", "per_iteration")
SIDES = ("independent", "tied")
MAX_REJECTION_ROUNDS = 200  # the paper's sampler redraws rejected candidates; give up (an error) after this
MAX_FAMILY_REDRAWS = 20  # per_iteration: families drawn again for an iteration whose family yields no candidate


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
                 draw: str = "per_candidate", sides: str = "independent"):
        if mode not in SAMPLER_MODES or draw not in DRAWS or sides not in SIDES:
            raise ValueError(f"mode must be one of {SAMPLER_MODES}, draw one of {DRAWS} and sides one of {SIDES}")
        self.budget = budget
        self.mode, self.draw, self.sides = mode, draw, sides
        self.rejected = 0  # candidates the paper's sampler drew again, over the sampler's life
        self.beta_max = dict(DEFAULT_BETA_MAX, **(beta_max or {}))
        user_freq = np.asarray(user_freq)
        item_freq = np.asarray(item_freq)
        if len(user_freq) != budget.n_users or len(item_freq) != budget.n_items:
            raise ValueError("frequency vectors do not match the budget's user/item counts")
        # stable argsort of -freq: most frequent first, equal frequencies by ascending id
        self.user_rank = np.argsort(-user_freq, kind="stable")
        self.item_rank = np.argsort(-item_freq, kind="stable")

    def _families(self, rng: np.random.Generator, m: int, family=None):
        """(kinds, betas in [0, 1)) of m rows; ``family`` = (kind index, beta) fixes them for all rows
        (``per_iteration``), else each row draws its own."""
        if family is None:
            return rng.integers(0, len(DISTRIBUTIONS), size=m), rng.uniform(0.0, 1.0, size=m)
        return np.full(m, family[0]), np.full(m, family[1])

    def _weights(self, rng: np.random.Generator, kinds, betas, n: int) -> np.ndarray:
        """(m, n) weights, each row descending: n order statistics through the row's inverse CDF."""
        u = sorted_uniforms(rng, len(kinds), n)
        # keep u strictly inside (0, 1) so inverse CDFs stay finite
        np.clip(u, 1e-12, 1 - 1e-12, out=u)
        weights = np.empty_like(u)
        for k, kind in enumerate(DISTRIBUTIONS):
            rows = np.nonzero(kinds == k)[0]
            if rows.size:
                beta = (betas[rows] * self.beta_max[kind])[:, None]
                weights[rows] = _quantile(kind, beta, u[rows])
        return np.nan_to_num(weights, nan=0.0, posinf=np.finfo(np.float64).max)

    def _sizes(self, weights_desc: np.ndarray, totals: np.ndarray) -> np.ndarray:
        if self.mode == "paper":
            return proportional_sizes(weights_desc, totals, self.budget.d_min)
        if self.mode == "paper_filled":  # the same, without the budget that flooring leaves unused
            sizes = proportional_sizes(weights_desc, totals, self.budget.d_min)
            give_lost_units(sizes, totals, self.budget.d_max)  # never lifts a size above d_max: same redraws
            return sizes
        return allocate_sorted(weights_desc, totals, self.budget.d_min, self.budget.d_max)

    def _info(self, kinds, betas, i: int) -> dict:
        kind = DISTRIBUTIONS[kinds[i]]
        return {"distribution": kind, "beta": float(betas[i] * self.beta_max[kind])}

    def _side(self, rng: np.random.Generator, m: int, n: int, totals: np.ndarray, family=None):
        """Sorted sizes (m, n) of one side and each row's distribution."""
        kinds, betas = self._families(rng, m, family)
        sizes = self._sizes(self._weights(rng, kinds, betas, n), totals)
        return sizes, [self._info(kinds, betas, i) for i in range(m)]

    def _tied(self, rng: np.random.Generator, m: int, family=None):
        """``sides: tied``: one distribution per row for both sides, the whole budget allocated over users and
        items together by weight. Returns each side's sorted sizes and each row's distribution."""
        b = self.budget
        kinds, betas = self._families(rng, m, family)
        weights = np.concatenate([self._weights(rng, kinds, betas, b.n_users),
                                  self._weights(rng, kinds, betas, b.n_items)], axis=1)
        order = np.argsort(-weights, axis=1, kind="stable")  # each side is already descending within itself
        ranked = self._sizes(np.take_along_axis(weights, order, axis=1), np.full(m, b.budget_units))
        sizes = np.empty_like(ranked)
        np.put_along_axis(sizes, order, ranked, axis=1)  # so each side's part stays descending
        return sizes[:, : b.n_users], sizes[:, b.n_users:], [self._info(kinds, betas, i) for i in range(m)]

    def sample(self, m: int, rng: np.random.Generator) -> np.ndarray:
        """(m, n_users + n_items) int16 sizes; every row fits the budget and [d_min, d_max]."""
        sizes, _ = self.sample_with_info(m, rng)
        return sizes

    def sample_with_info(self, m: int, rng: np.random.Generator):
        b = self.budget
        per_iteration = self.draw == "per_iteration"  # one family and parameter per side for the whole iteration
        kept, infos = [], []
        # per_iteration: an iteration whose family gives no candidate within d_max and the budget in all its rounds
        # (a peaked distribution, or one side pushed over its share by d_min) draws the iteration another family
        for _ in range(MAX_FAMILY_REDRAWS + 1 if per_iteration else 1):
            families = ([(int(rng.integers(0, len(DISTRIBUTIONS))), float(rng.uniform(0.0, 1.0))) for _ in range(2)]
                        if per_iteration else None)
            for _ in range(MAX_REJECTION_ROUNDS):
                sizes, info = self._draw(m, rng, families)
                if self.mode == "exact":  # never redraws
                    kept, infos = [sizes], info
                    break
                ok = (sizes.max(axis=1) <= b.d_max) & (b.kept_params_many(sizes) <= b.budget_params)
                self.rejected += int((~ok).sum())
                kept.append(sizes[ok])
                infos += [i for i, good in zip(info, ok) if good]
                if len(infos) >= m:
                    break
            if infos:
                break
        if len(infos) < m:
            raise RuntimeError(f"the paper's sampler found {len(infos)} of {m} candidates within d_max and the "
                               f"budget; use bet_sampler: exact")
        sizes = np.concatenate(kept)[:m].astype(np.int16)
        if not (b.kept_params_many(sizes) <= b.budget_params).all():  # the hard guarantee, checked
            raise RuntimeError("sampler produced a candidate over budget")
        return sizes, infos[:m]

    def _draw(self, m: int, rng: np.random.Generator, families):
        b = self.budget
        if self.sides == "tied":
            user_sorted, item_sorted, tied_info = self._tied(rng, m, families and families[0])
            shares = user_sorted.sum(axis=1) / np.maximum(1, user_sorted.sum(axis=1) + item_sorted.sum(axis=1))
            info = [{"user_share": float(shares[i]), "tied": tied_info[i]} for i in range(m)]
        else:
            w = rng.uniform(0.0, 1.0, size=m)
            user_totals, item_totals = split_total(w, b)
            user_sorted, user_info = self._side(rng, m, b.n_users, user_totals, families and families[0])
            item_sorted, item_info = self._side(rng, m, b.n_items, item_totals, families and families[1])
            info = [{"user_share": float(w[i]), "user": user_info[i], "item": item_info[i]} for i in range(m)]
        sizes = np.concatenate(
            [assign_by_rank(user_sorted, self.user_rank), assign_by_rank(item_sorted, self.item_rank)], axis=1
        )
        return sizes, info
