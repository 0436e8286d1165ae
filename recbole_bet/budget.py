"""All budget arithmetic of recbole-bet: nothing else in the package counts parameters.

Sizes are "entity units": one unit is one dimension of one user or item. An entity with size ``d``
keeps ``d * tables_per_entity`` parameters (NeuMF has a GMF and an MLP table per entity).
Size vectors list users first, then items, without RecBole's padding row.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from recbole_bet.errors import BadInput


def budget_params(sparsity: float, d_max: int, n_users: int, n_items: int, tables_per_entity: int) -> int:
    """The SPEC formula, evaluated literally in floating point so that every checker agrees."""
    return int(math.floor((1 - sparsity) * d_max * (n_users + n_items) * tables_per_entity))


@dataclass(frozen=True)
class Budget:
    """A parameter budget for one model's user/item tables."""

    n_users: int
    n_items: int
    d_max: int
    d_min: int
    tables_per_entity: int
    sparsity: float
    params_cap: int | None = None  # set by a memory budget in bytes; otherwise the sparsity decides
    memory_budget: int | None = None  # the bytes asked for, when the budget came from memory_budget
    bytes_per_param: int = 4  # artifact bytes per kept parameter (value, plus column index for element masks)

    @property
    def n_entities(self) -> int:
        return self.n_users + self.n_items

    @property
    def full_params(self) -> int:
        return self.d_max * self.n_entities * self.tables_per_entity

    @property
    def budget_params(self) -> int:
        if self.params_cap is not None:
            return self.params_cap
        return budget_params(self.sparsity, self.d_max, self.n_users, self.n_items, self.tables_per_entity)

    @property
    def dense_bytes(self) -> int:
        """float32 size of the unmasked user/item tables."""
        return BYTES_PER_PARAM * self.full_params

    @property
    def budget_units(self) -> int:
        """Total size (sum over entities) an action may use, capped at every entity at d_max."""
        return min(self.budget_params // self.tables_per_entity, self.d_max * self.n_entities)

    def kept_params(self, sizes) -> int:
        """Parameters an action keeps; ``sizes`` is one size vector (users then items)."""
        return int(np.asarray(sizes, dtype=np.int64).sum()) * self.tables_per_entity

    def kept_params_many(self, sizes: np.ndarray) -> np.ndarray:
        """kept_params of each row of an (m, n) size matrix."""
        return np.asarray(sizes, dtype=np.int64).sum(axis=1) * self.tables_per_entity

    def realized_sparsity(self, kept: int) -> float:
        return 1.0 - kept / self.full_params

    def sizes_in_range(self, sizes) -> bool:
        """Every size within [d_min, d_max] (what a method must respect even where the budget is not applied)."""
        sizes = np.asarray(sizes)
        return int(sizes.min()) >= self.d_min and int(sizes.max()) <= self.d_max

    def fits(self, sizes) -> bool:
        return self.kept_params(sizes) <= self.budget_params and self.sizes_in_range(sizes)

    def growth_granted(self, sizes, increments) -> int:
        """How many growth requests fit: ``increments`` (units, > 0) are requests in priority order on top of
        ``sizes``; the longest prefix whose sum stays within ``budget_units`` is granted. Returns its length."""
        room = self.budget_units - int(np.asarray(sizes, dtype=np.int64).sum())
        return int(np.searchsorted(np.cumsum(np.asarray(increments, dtype=np.int64)), room, side="right"))

    def highest_feasible_sparsity(self) -> float:
        """The largest sparsity (4 decimals, rounded down) at which every row still gets d_min."""
        # start one step above the float estimate (which can land just below the exact edge) and walk down
        s = min(0.9999, (math.floor((1 - self.d_min / self.d_max) * 1e4) + 1) / 1e4)
        while s > 0 and budget_params(s, self.d_max, self.n_users, self.n_items, self.tables_per_entity) < (
            self.d_min * self.n_entities * self.tables_per_entity
        ):
            s = round(s - 1e-4, 4)
        return s

    @property
    def min_params(self) -> int:
        return self.d_min * self.n_entities * self.tables_per_entity

    def check_feasible(self) -> None:
        if self.memory_budget is not None and self.budget_params < self.min_params:
            need = self.memory_budget + self.bytes_per_param * (self.min_params - self.budget_params)
            raise BadInput(
                f"memory_budget {self.memory_budget} bytes leaves room for {max(0, self.budget_params)} parameters, "
                f"fewer than d_min={self.d_min} for each of the {self.n_entities} users and items; the smallest "
                f"feasible memory_budget here is {need} bytes (or lower d_min)"
            )
        if self.budget_params < self.min_params:
            raise BadInput(
                f"sparsity {self.sparsity} leaves {self.budget_params} parameters, fewer than d_min={self.d_min} "
                f"for each of the {self.n_entities} users and items; the highest feasible sparsity here is "
                f"{self.highest_feasible_sparsity()} (or lower d_min)"
            )


BYTES_PER_PARAM = 4  # float32 values in the artifact


def index_bytes(d_max: int) -> int:
    """Bytes of one kept value's column index in an element-masked artifact (uint8 up to 256 columns)."""
    return 1 if d_max <= 256 else 2
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_bytes(value) -> int:
    """``2MB`` -> 2,000,000 (MB = 10^6 bytes, as in the RULE paper); ``512KiB``, ``1.5MB`` and plain
    integers work too."""
    if isinstance(value, bool):
        raise BadInput(f"memory_budget must be a size in bytes such as 2MB, 512KB or 100000, got {value!r}")
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    else:
        text = str(value).strip().upper().replace(" ", "")
        digits = text.rstrip("KMGIB")
        unit = text[len(digits):]
        try:
            number = float(digits)
        except ValueError:
            number = None
        if number is None or unit not in _UNITS:
            raise BadInput(f"memory_budget must be a size in bytes such as 2MB, 512KB or 100000, got {value!r}")
    result = int(number * _UNITS[unit])
    if result <= 0:
        raise BadInput(f"memory_budget must be positive, got {value!r}")
    return result


def make_memory_budget(memory_budget, overhead_bytes: int, d_max, d_min, n_users: int, n_items: int,
                       tables_per_entity: int, element_masks: bool = False) -> Budget:
    """A budget whose exported artifact (sizes index and other weights included) fits ``memory_budget``.

    ``overhead_bytes``: the artifact's size with no kept value (see export.artifact_overhead_bytes);
    every kept parameter adds BYTES_PER_PARAM to it, and its column index with ``element_masks``.
    """
    validate_budget_keys(0.5, d_max, d_min)
    memory = parse_bytes(memory_budget)
    full = d_max * (n_users + n_items) * tables_per_entity
    per_param = BYTES_PER_PARAM + (index_bytes(d_max) if element_masks else 0)
    params = min(full, (memory - overhead_bytes) // per_param)
    budget = Budget(n_users, n_items, d_max, d_min, tables_per_entity, 1 - max(params, 0) / full, params, memory,
                    per_param)
    budget.check_feasible()
    return budget


def validate_budget_keys(sparsity, d_max, d_min) -> None:
    """Check the budget keys alone (before any data is loaded); raises BadInput saying what to change."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise BadInput(f"sparsity must be a number strictly between 0 and 1 (e.g. --sparsity=0.9), got {sparsity!r}")
    if not 0 < sparsity < 1:
        raise BadInput(f"sparsity must be strictly between 0 and 1 (e.g. --sparsity=0.9), got {sparsity}")
    for key, value in (("d_max", d_max), ("d_min", d_min)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadInput(f"{key} must be a positive integer, got {value!r}")
    if d_min > d_max:
        raise BadInput(f"d_min ({d_min}) must not exceed d_max ({d_max})")


def make_budget(sparsity, d_max, d_min, n_users: int, n_items: int, tables_per_entity: int) -> Budget:
    """Validate the budget keys and build a feasible Budget, or raise BadInput saying what to change."""
    validate_budget_keys(sparsity, d_max, d_min)
    budget = Budget(n_users, n_items, d_max, d_min, tables_per_entity, float(sparsity))
    budget.check_feasible()
    return budget


def split_total(weights_user: np.ndarray, budget: Budget) -> tuple[np.ndarray, np.ndarray]:
    """Split the budget between users and items: users get about ``w`` of it (one w per action).

    The share is clipped so both sides can give every entity between d_min and d_max.
    Returns integer unit totals (user_totals, item_totals), each of shape (m,).
    """
    total = budget.budget_units
    lo_u, hi_u = budget.d_min * budget.n_users, budget.d_max * budget.n_users
    lo_i, hi_i = budget.d_min * budget.n_items, budget.d_max * budget.n_items
    low = max(lo_u, total - hi_i)
    high = min(hi_u, total - lo_i)
    user_totals = np.clip(np.rint(np.asarray(weights_user, dtype=np.float64) * total), low, high).astype(np.int64)
    return user_totals, total - user_totals


def allocate_sorted(weights_desc: np.ndarray, totals: np.ndarray, d_min: int, d_max: int) -> np.ndarray:
    """Integer sizes proportional to weights, within [d_min, d_max], summing exactly to each total.

    ``weights_desc``: (m, n) positive weights, each row sorted in descending order.
    ``totals``: (m,) integer totals with n*d_min <= total <= n*d_max.
    Returns (m, n) int16 sizes, each row sorted in descending order.

    The real-valued solution is x = clip(lam * w, d_min, d_max) with lam chosen so that sum(x) = total
    (water-filling: what a capped entity cannot take goes to the others). Because rows are sorted, sum(x)
    for a given lam needs only two binary searches and prefix sums, so lam is found by bisection at
    O(m log n) per step. Rounding: floor every size, then give the r units that flooring lost (r < n) one
    each to the first r entities that are below d_max, in rank order. Every size stays within
    [d_min, d_max], rows stay sorted, and the row sums exactly to its total: no budget is wasted.
    """
    w = np.asarray(weights_desc, dtype=np.float64)
    m, n = w.shape
    # scale each row to max 1 (rows are sorted: column 0) so lam stays in a safe float range
    w = np.maximum(w / np.maximum(w[:, :1], 1e-300), 1e-280)
    totals = np.asarray(totals, dtype=np.int64)
    if np.any(totals < n * d_min) or np.any(totals > n * d_max):
        raise ValueError("allocate_sorted: a total lies outside [n*d_min, n*d_max]")
    prefix = np.cumsum(w, axis=1)  # prefix[:, k-1] = sum of the top k weights
    neg_w = np.negative(w)  # ascending rows, for searchsorted
    rows = np.arange(m)

    def top_sum(k):
        return np.where(k > 0, prefix[rows, np.maximum(k - 1, 0)], 0.0)

    def clamp_pattern(lam):
        # entities with lam*w >= d_max are a prefix of length k_hi; those with lam*w <= d_min start at k_lo
        k_hi = np.fromiter((np.searchsorted(neg_w[r], -d_max / lam[r], side="right") for r in range(m)), np.int64, m)
        k_lo = np.fromiter((np.searchsorted(neg_w[r], -d_min / lam[r], side="left") for r in range(m)), np.int64, m)
        k_lo = np.maximum(k_lo, k_hi)
        middle = top_sum(k_lo) - top_sum(k_hi)
        return d_max * k_hi + d_min * (n - k_lo), middle

    # bracket lam (in log space): at lam_lo every entity sits at d_min, at lam_hi every one at d_max
    log_lo = np.log(d_min * 0.5 / w[:, 0])
    log_hi = np.log(d_max * 2.0 / w[:, -1])
    for _ in range(200):
        log_mid = 0.5 * (log_lo + log_hi)
        mid = np.exp(log_mid)
        fixed, middle = clamp_pattern(mid)
        too_big = fixed + mid * middle > totals
        log_hi = np.where(too_big, log_mid, log_hi)
        log_lo = np.where(too_big, log_lo, log_mid)
        if np.all(log_hi - log_lo < 1e-12):
            break
    lam_lo = np.exp(log_lo)
    fixed, middle = clamp_pattern(lam_lo)  # exact solve on the final clamp pattern
    lam = np.where(middle > 0, (totals - fixed) / np.where(middle > 0, middle, 1.0), lam_lo)
    np.multiply(w, lam[:, None], out=w)
    np.clip(w, d_min, d_max, out=w)
    sizes = np.floor(w, out=w).astype(np.int16)
    give_lost_units(sizes, totals, d_max)
    _repair_totals(sizes, totals, d_min, d_max)
    return sizes


def give_lost_units(sizes: np.ndarray, totals, d_max: int) -> None:
    """In place: the units by which each descending row of floored sizes falls short of its total (fewer than
    the row's entities below d_max) go one each to the first entities below d_max, in rank order. Rows stay
    descending and within d_max; a row at or over its total is left as it is."""
    n = sizes.shape[1]
    lost = np.asarray(totals, dtype=np.int64) - sizes.sum(axis=1, dtype=np.int64)
    start = (sizes >= d_max).sum(axis=1)  # capped entities form a prefix
    lost = np.clip(lost, 0, n - start)
    idx = np.arange(n)
    sizes += ((idx >= start[:, None]) & (idx < (start + lost)[:, None])).astype(sizes.dtype)


def _repair_totals(sizes: np.ndarray, totals: np.ndarray, d_min: int, d_max: int) -> None:
    """Safety net for float corner cases: make each row sum exactly to its total, keeping rows sorted.

    Feasible totals (n*d_min <= total <= n*d_max) can always be met; anything else is a bug, so raise.
    """
    for r in np.nonzero(sizes.sum(axis=1, dtype=np.int64) != totals)[0]:
        row = sizes[r].astype(np.int64)
        need = int(totals[r] - row.sum())
        while need != 0:
            room = np.nonzero(row < d_max)[0] if need > 0 else np.nonzero(row > d_min)[0][::-1]
            if room.size == 0:
                raise RuntimeError("allocate_sorted: total outside the feasible range")
            take = room[: abs(need)]
            row[take] += 1 if need > 0 else -1
            need -= int(np.sign(need)) * take.size
        sizes[r] = np.sort(row)[::-1]


def assign_by_rank(sorted_sizes: np.ndarray, rank_order: np.ndarray) -> np.ndarray:
    """Give the k-th largest size to the entity at ``rank_order[k]`` (most frequent first)."""
    out = np.empty_like(sorted_sizes)
    out[:, rank_order] = sorted_sizes
    return out


def fill_by_frequency(sizes, budget: Budget, freq) -> np.ndarray:
    """Hand the units a selection leaves unused to rows below d_max, one each, in passes until the budget is used
    or every row is at d_max. Users and items are ranked together by frequency (``equal_sizes`` instead splits
    its few leftover units between the sides by their numbers: it never needs a second pass)."""
    sizes = np.array(sizes, dtype=np.int64)
    room = budget.budget_units - int(sizes.sum())
    order = np.argsort(-np.asarray(freq, dtype=np.float64), kind="stable")
    while room > 0:
        can = order[sizes[order] < budget.d_max]
        if can.size == 0:
            break
        take = can[:room]
        sizes[take] += 1
        room -= take.size
    return sizes


def equal_sizes(budget: Budget, user_freq=None, item_freq=None) -> np.ndarray:
    """Every user and item gets the same size: the largest that fits the budget.

    With frequencies (the fill rule, docs/methods.md), the units that flooring leaves over (fewer than one per
    entity) go one each to the most frequent users and items, split between users and items in proportion to
    their numbers, so that the budget is used to the unit: without it ES keeps up to 1/size less than the
    budget (6.25% at d_max 128 and sparsity 0.9)."""
    size = min(budget.d_max, budget.budget_units // budget.n_entities)
    sizes = np.full(budget.n_entities, size, dtype=np.int64)
    if user_freq is None or item_freq is None or size >= budget.d_max:
        return sizes
    rest = budget.budget_units - size * budget.n_entities
    to_users = int(round(rest * budget.n_users / budget.n_entities))
    for offset, freq, extra in ((0, user_freq, to_users), (budget.n_users, item_freq, rest - to_users)):
        order = np.argsort(-np.asarray(freq), kind="stable")[:extra]  # most frequent first; ties: lower id
        sizes[offset + order] += 1
    return sizes


def split_equal_sizes(budget: Budget, user_share: float, user_freq, item_freq) -> np.ndarray:
    """Equal sizes within each side, the users' side holding about ``user_share`` of the budget (clipped so that
    every row of both sides stays within [d_min, d_max], as ``split_total`` does). Each side's total is divided
    equally; its remainder goes one unit each to the side's most frequent rows (ties: lower id), so the budget
    is used to the unit."""
    user_total, item_total = (int(t[0]) for t in split_total(np.array([float(user_share)]), budget))
    sides = []
    for total, n, freq in ((user_total, budget.n_users, user_freq), (item_total, budget.n_items, item_freq)):
        size, rest = divmod(total, n)
        sizes = np.full(n, size, dtype=np.int64)
        sizes[np.argsort(-np.asarray(freq, dtype=np.float64), kind="stable")[:rest]] += 1
        sides.append(sizes)
    return np.concatenate(sides)


ONE_SIZE_PER_SIDE = ("es", "es-users", "es-items")


def one_size_per_side(name: str, budget: Budget, user_freq, item_freq) -> np.ndarray:
    """The sizings that give every row of a side one size: ``es`` (equal sizes, remainder by frequency),
    ``es-users`` (the whole budget the users can hold on the users, the items at d_min) and ``es-items`` (the
    other way round)."""
    if name == "es":
        return equal_sizes(budget, user_freq, item_freq)
    if name in ("es-users", "es-items"):
        return split_equal_sizes(budget, 1.0 if name == "es-users" else 0.0, user_freq, item_freq)
    raise ValueError(f"unknown one-size-per-side sizing {name!r}; known: {', '.join(ONE_SIZE_PER_SIDE)}")


def size_summary(budget: Budget, sizes, pair_users=None, pair_items=None, keep=None) -> dict:
    """Where a selection's units go: the users' share of them, each side's mean / min / max size and, given the
    training pairs (0-based user and item indices), the mean over pairs of the columns both rows keep (min(d_u,
    d_i) for prefix sizes; with an element mask ``keep``, n_entities x d_max, the columns kept by both): what a
    dot product of the two stored vectors, or NeuMF's GMF, can use for the pair. ``pair_mean`` is the mean of
    (d_u + d_i) / 2 beside it."""
    sizes = np.asarray(sizes, dtype=np.int64)
    user, item = sizes[: budget.n_users], sizes[budget.n_users:]
    total = int(sizes.sum())
    out = {"user_share": round(float(user.sum()) / total, 4) if total else 0.0}
    for side, part in (("users", user), ("items", item)):
        out[side] = {"mean": round(float(part.mean()), 3), "min": int(part.min()), "max": int(part.max())}
    if pair_users is None or pair_items is None or not len(pair_users):
        return out
    pair_users, pair_items = np.asarray(pair_users), np.asarray(pair_items)
    if keep is None:
        shared = np.minimum(user[pair_users], item[pair_items]).mean()
    else:
        keep = np.asarray(keep, dtype=bool)
        step = max(1, (1 << 22) // budget.d_max)  # bounded memory on large data
        shared = sum(int((keep[pair_users[i:i + step]] & keep[budget.n_users + pair_items[i:i + step]]).sum())
                     for i in range(0, len(pair_users), step)) / len(pair_users)
    out["pair_shared_mean"] = round(float(shared), 3)
    out["pair_mean"] = round(float((user[pair_users] + item[pair_items]).mean() / 2), 3)
    return out


def keep_top_entries_per_row(scores: np.ndarray, sizes) -> np.ndarray:
    """Element mask (n_entities x d_max, bool): row i keeps its ``sizes[i]`` highest-scoring entries (ties to
    the lower column), so the mask keeps exactly the units of ``sizes``, in the columns that score best."""
    scores = np.asarray(scores, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.int64)
    n, width = scores.shape
    if sizes.shape != (n,) or sizes.min(initial=0) < 0 or sizes.max(initial=0) > width:
        raise ValueError(f"expected {n} sizes in [0, {width}], got shape {sizes.shape}")
    order = np.argsort(-scores, axis=1, kind="stable")
    keep = np.zeros((n, width), dtype=bool)
    np.put_along_axis(keep, order, np.arange(width)[None, :] < sizes[:, None], axis=1)
    return keep


def keep_top_entries(scores: np.ndarray, budget: Budget, min_per_row: int | None = None) -> np.ndarray:
    """Element mask (n_entities x d_max, bool) keeping the highest-scoring entries within the budget.

    Every row keeps its ``min_per_row`` (default ``d_min``, never fewer) best entries, so every user and item
    stays usable; the rest of the budget goes to the best remaining entries of any row. The mask keeps exactly
    ``budget_units`` entries (all of them when the budget covers the full table). Ties break towards lower
    rows and columns. Raises ValueError when the per-row minimum alone exceeds the budget.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n, width = scores.shape
    if (n, width) != (budget.n_entities, budget.d_max):
        raise ValueError(f"expected scores of shape {(budget.n_entities, budget.d_max)}, got {scores.shape}")
    floor = budget.d_min if min_per_row is None else min(width, max(budget.d_min, int(min_per_row)))
    if n * floor > budget.budget_units:
        raise ValueError(f"{floor} entries per row need {n * floor} units, over the budget's {budget.budget_units}")
    order = np.argsort(-scores, axis=1, kind="stable")  # each row's entries, best first
    keep = np.zeros((n, width), dtype=bool)
    rows = np.arange(n)[:, None]
    keep[rows, order[:, :floor]] = True
    extra = budget.budget_units - n * floor
    rest = np.take_along_axis(scores, order[:, floor:], axis=1).ravel()
    if extra >= rest.size:
        return np.ones((n, width), dtype=bool)
    if extra > 0:
        # the best `extra` remaining entries: a stable sort on (-score) keeps the tie order deterministic
        chosen = np.argsort(-rest, kind="stable")[:extra]
        r, c = np.divmod(chosen, width - floor)
        keep[r, order[r, floor + c]] = True
    return keep


def feasible_row_minimums(candidates, budget: Budget) -> list:
    """The per-row minimums among ``candidates`` that a budget can give every row (at least d_min each)."""
    return sorted({max(budget.d_min, int(c)) for c in candidates
                   if budget.n_entities * max(budget.d_min, int(c)) <= budget.budget_units and c <= budget.d_max})


def keep_top_columns(saliency_user: np.ndarray, saliency_item: np.ndarray, budget: Budget) -> np.ndarray:
    """Field-level pruning (SSEDS Eq. 12): one set of kept dimensions for all users, one for all items.

    A user dimension costs ``n_users`` units and an item dimension ``n_items``. Each field first keeps
    its ``d_min`` most salient dimensions; then dimensions are taken in descending saliency while they
    fit, and one that does not fit is skipped (a cheaper, less salient one may still fit). Returns the
    (n_entities x d_max) element mask.
    """
    d = budget.d_max
    sal = np.concatenate([np.asarray(saliency_user, dtype=np.float64), np.asarray(saliency_item, dtype=np.float64)])
    if sal.shape != (2 * d,):
        raise ValueError(f"expected {d} saliencies per field, got {len(saliency_user)} and {len(saliency_item)}")
    cost = np.concatenate([np.full(d, budget.n_users), np.full(d, budget.n_items)])
    chosen = np.zeros(2 * d, dtype=bool)
    for field in (0, 1):
        part = np.argsort(-sal[field * d:(field + 1) * d], kind="stable")[:budget.d_min]
        chosen[field * d + part] = True
    left = budget.budget_units - int(cost[chosen].sum())
    for j in np.argsort(-sal, kind="stable"):
        if not chosen[j] and cost[j] <= left:
            chosen[j] = True
            left -= int(cost[j])
    keep = np.zeros((budget.n_entities, d), dtype=bool)
    keep[: budget.n_users, :] = chosen[:d]
    keep[budget.n_users:, :] = chosen[d:]
    return keep


# ----------------------------------------------------------------------------- RULE's embedding blocks
# A RULE row is N blocks of width d_max / N; a group of entities shares one block selection, so a group
# with n members and k selected blocks uses n * k * width units.

def block_min_count(d_min: int, width: int) -> int:
    """The fewest blocks an entity may keep so that its size is at least d_min."""
    return -(-d_min // width)


def block_units(counts, group_sizes, width: int) -> int:
    """Units used when group g keeps ``counts[g]`` blocks for each of its ``group_sizes[g]`` members."""
    return int(np.dot(np.asarray(counts, dtype=np.int64), np.asarray(group_sizes, dtype=np.int64))) * width


def fit_block_counts(counts, group_sizes, width: int, budget_units: int, min_count: int, rng) -> np.ndarray:
    """Algorithm 1, lines 8-13: while the selection is over budget, take one block from a random group
    that has more than ``min_count``. The result always fits if every group at ``min_count`` does."""
    counts = np.array(counts, dtype=np.int64)
    sizes = np.asarray(group_sizes, dtype=np.int64)
    over = block_units(counts, sizes, width) - budget_units
    while over > 0:
        room = np.nonzero(counts > min_count)[0]
        if room.size == 0:
            raise RuntimeError("fit_block_counts: even the smallest selection is over budget")
        g = room[rng.integers(room.size)]
        counts[g] -= 1
        over -= int(sizes[g]) * width
    return counts


def highest_block_sparsity(budget: Budget, width: int, min_count: int, user_count: int | None = None) -> float:
    """The largest sparsity (4 decimals, rounded down) at which every item keeps ``min_count`` blocks and every
    user ``user_count`` (default ``min_count``)."""
    per_side = (budget.n_users * (min_count if user_count is None else user_count) + budget.n_items * min_count)
    need = per_side * width * budget.tables_per_entity
    s = min(0.9999, (math.floor((1 - need / budget.full_params) * 1e4) + 1) / 1e4)
    while s > 0 and budget_params(s, budget.d_max, budget.n_users, budget.n_items, budget.tables_per_entity) < need:
        s = round(s - 1e-4, 4)
    return s


def check_blocks_feasible(budget: Budget, n_blocks: int, min_count: int, user_count: int | None = None) -> None:
    """RULE keeps whole blocks: refuse a budget that cannot give every item ``min_count`` of them and every user
    ``user_count`` (default ``min_count``), naming the narrower blocks (a larger rule_blocks dividing d_max) or the
    sparsity that would fit."""
    width = budget.d_max // n_blocks

    def need(w, count, users):
        return (budget.n_users * users + budget.n_items * count) * w

    users = min_count if user_count is None else user_count
    need_units = need(width, min_count, users)
    if need_units <= budget.budget_units:
        return
    fixes = []
    for more in range(n_blocks + 1, budget.d_max + 1):
        w = budget.d_max // more
        count = block_min_count(budget.d_min, w)
        users_then = count if user_count is None else max(count, user_count)
        if budget.d_max % more == 0 and need(w, count, users_then) <= budget.budget_units:
            fixes.append(f"rule_blocks={more} ({w}-dimension blocks)")
            break
    where = (f"memory_budget {budget.memory_budget} bytes" if budget.memory_budget is not None
             else f"sparsity {budget.sparsity}")
    if budget.memory_budget is None:
        fixes.append(f"a sparsity of at most {highest_block_sparsity(budget, width, min_count, user_count)}")
    who = (f"each of the {budget.n_entities} users and items {min_count} block(s)" if user_count is None else
           f"the {budget.n_users} users {user_count} block(s) (rule_user_blocks) and the {budget.n_items} items "
           f"{min_count}")
    raise BadInput(
        f"{where} leaves {budget.budget_params} parameters, fewer than the {need_units * budget.tables_per_entity} "
        f"that RULE needs to give {who} of {width} dimensions "
        f"(rule_blocks={n_blocks}, d_max={budget.d_max}); use {' or '.join(fixes) or 'a larger memory_budget'}"
    )
