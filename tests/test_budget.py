"""Property-based tests of the budget arithmetic (recbole_bet.budget) and the es/mr size proposals."""

import math
from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from recbole_bet.budget import Budget, allocate_sorted, budget_params, equal_sizes, make_budget
from recbole_bet.errors import BadInput
from recbole_bet.methods.fixed import MixedRandom

PROPS = settings(max_examples=60, deadline=None, derandomize=True)

counts = st.integers(1, 5000)
sparsities = st.floats(min_value=0.0, max_value=1.0, exclude_min=True, exclude_max=True, allow_subnormal=False)


@st.composite
def budget_args(draw):
    d_max = draw(st.integers(1, 256))
    return dict(
        sparsity=draw(sparsities), d_max=d_max, d_min=draw(st.integers(1, d_max)),
        n_users=draw(counts), n_items=draw(counts), tables_per_entity=draw(st.integers(1, 3)),
    )


def spec_budget(sparsity, d_max, n_users, n_items, tables_per_entity):
    """SPEC: floor((1 - sparsity) * d_max * (n_users + n_items) * tables_per_entity)."""
    return math.floor((1 - sparsity) * d_max * (n_users + n_items) * tables_per_entity)


def check_sizes(budget: Budget, sizes):
    sizes = np.asarray(sizes)
    assert sizes.shape == (budget.n_users + budget.n_items,)
    assert np.issubdtype(sizes.dtype, np.integer)
    kept = budget.kept_params(sizes)
    assert kept == int(sizes.astype(np.int64).sum()) * budget.tables_per_entity
    assert kept <= budget.budget_params
    assert sizes.min() >= budget.d_min and sizes.max() <= budget.d_max
    assert budget.fits(sizes)


@PROPS
@given(budget_args(), st.integers(0, 2**31 - 1))
@example(dict(sparsity=0.9, d_max=128, d_min=1, n_users=943, n_items=1682, tables_per_entity=1), 2020)
@example(dict(sparsity=0.5, d_max=2, d_min=1, n_users=1, n_items=1, tables_per_entity=1), 0)  # exactly d_min
@example(dict(sparsity=0.5000001, d_max=2, d_min=1, n_users=1, n_items=1, tables_per_entity=1), 0)
@example(dict(sparsity=1e-9, d_max=256, d_min=256, n_users=5000, n_items=5000, tables_per_entity=3), 1)
def test_make_budget_feasible_or_bad_input(args, seed):
    expected = spec_budget(args["sparsity"], args["d_max"], args["n_users"], args["n_items"],
                           args["tables_per_entity"])
    n = args["n_users"] + args["n_items"]
    # the float formula is within one parameter of the exact one
    exact = Fraction(1) - Fraction(args["sparsity"])
    assert abs(expected - math.floor(exact * args["d_max"] * n * args["tables_per_entity"])) <= 1
    infeasible = expected < args["d_min"] * n * args["tables_per_entity"]
    if infeasible:
        with pytest.raises(BadInput, match="highest feasible sparsity"):
            make_budget(**args)
        return
    b = make_budget(**args)
    assert b.budget_params == expected == budget_params(args["sparsity"], args["d_max"], args["n_users"],
                                                        args["n_items"], args["tables_per_entity"])
    assert b.full_params == args["d_max"] * n * args["tables_per_entity"]
    assert b.budget_params <= b.full_params

    es = equal_sizes(b)
    check_sizes(b, es)
    assert len(set(es.tolist())) == 1
    # the largest equal size that fits: one more unit each would break the budget or d_max
    assert es[0] == b.d_max or (es[0] + 1) * n * b.tables_per_entity > b.budget_params

    ctx = SimpleNamespace(budget=b, config={"seed": seed})
    mr = MixedRandom().propose(ctx)
    check_sizes(b, mr)
    np.testing.assert_array_equal(mr, MixedRandom().propose(ctx))  # seeded: reproducible


@PROPS
@given(st.integers(1, 256), st.integers(1, 256), counts, counts, st.integers(1, 3))
@example(1, 128, 943, 1682, 1)  # the CLI's 0.999 case
@example(1, 5, 10, 10, 1)
@example(3, 10, 7, 13, 2)
@example(1, 3, 1, 1, 1)
@example(87, 200, 1, 1, 1)  # 1 - 87/200 = 0.565 is 0.56499.. in floats
def test_highest_feasible_sparsity_is_the_edge(d_min, d_max, n_users, n_items, tpe):
    assume(d_min < d_max)
    b = Budget(n_users, n_items, d_max, d_min, tpe, 0.99)
    s = b.highest_feasible_sparsity()
    assert 0 < s < 1
    assert s == round(s, 4)
    make_budget(s, d_max, d_min, n_users, n_items, tpe)  # feasible
    above = round(s + 1e-4, 4)
    assert above < 1
    with pytest.raises(BadInput):
        make_budget(above, d_max, d_min, n_users, n_items, tpe)


@pytest.mark.parametrize("sparsity,d_min,d_max,n_users,n_items,tpe", [
    (0.999, 1, 128, 943, 1682, 1),
    (0.999, 1, 128, 943, 1682, 2),
    (0.99, 2, 64, 100, 50, 3),
])
def test_error_names_a_feasible_sparsity(sparsity, d_min, d_max, n_users, n_items, tpe):
    with pytest.raises(BadInput) as info:
        make_budget(sparsity, d_max, d_min, n_users, n_items, tpe)
    named = Budget(n_users, n_items, d_max, d_min, tpe, sparsity).highest_feasible_sparsity()
    message = str(info.value)
    assert f"highest feasible sparsity here is {named}" in message
    assert f"d_min={d_min}" in message
    b = make_budget(named, d_max, d_min, n_users, n_items, tpe)
    assert b.budget_params >= d_min * (n_users + n_items) * tpe
    for above in (round(named + 1e-4, 4), named + 1e-3):
        with pytest.raises(BadInput):
            make_budget(above, d_max, d_min, n_users, n_items, tpe)


extreme = st.sampled_from([1e-200, 1e-100, 1e-10, 1.0, 1e10, 1e100, 1e200])
ordinary = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False)


@st.composite
def allocation_problems(draw):
    d_max = draw(st.integers(1, 256))
    d_min = draw(st.integers(1, d_max))
    m = draw(st.integers(1, 4))
    n = draw(st.integers(1, 300))
    weight = st.one_of(extreme, ordinary)
    rows = []
    for _ in range(m):
        if draw(st.booleans()):
            rows.append(draw(st.lists(weight, min_size=n, max_size=n)))
        else:  # many equal weights: one value, or two values
            a, b = draw(weight), draw(weight)
            k = draw(st.integers(0, n))
            rows.append([a] * k + [b] * (n - k))
    weights = -np.sort(-np.asarray(rows, dtype=np.float64), axis=1)
    totals = np.asarray([draw(st.integers(n * d_min, n * d_max)) for _ in range(m)], dtype=np.int64)
    return weights, totals, d_min, d_max


@settings(max_examples=150, deadline=None, derandomize=True)
@given(allocation_problems())
@example((np.full((1, 5), 1e-200), np.array([5 * 100]), 1, 256))
@example((np.full((2, 7), 1e200), np.array([7, 7 * 256]), 1, 256))
@example((np.array([[1e200, 1e-200, 1e-200]]), np.array([300]), 1, 256))
@example((np.array([[1e200, 1e200, 1e-200]]), np.array([3]), 1, 1))
def test_allocate_sorted_exact_bounded_sorted(problem):
    weights, totals, d_min, d_max = problem
    sizes = allocate_sorted(weights, totals, d_min, d_max)
    assert sizes.shape == weights.shape
    np.testing.assert_array_equal(sizes.astype(np.int64).sum(axis=1), totals)
    assert sizes.min() >= d_min and sizes.max() <= d_max
    assert np.all(np.diff(sizes.astype(np.int64), axis=1) <= 0), "rows must stay sorted descending"


def test_allocate_sorted_is_proportional_when_unconstrained():
    w = np.array([[8.0, 4.0, 2.0, 2.0]])
    np.testing.assert_array_equal(allocate_sorted(w, np.array([32]), 1, 64), [[16, 8, 4, 4]])
    np.testing.assert_array_equal(allocate_sorted(w, np.array([40]), 1, 16), [[16, 12, 6, 6]])  # water-filling


def test_allocate_sorted_rejects_unreachable_totals():
    with pytest.raises(ValueError):
        allocate_sorted(np.ones((1, 3)), np.array([2]), 1, 4)
    with pytest.raises(ValueError):
        allocate_sorted(np.ones((1, 3)), np.array([13]), 1, 4)


@pytest.mark.parametrize("sparsity,d_max,d_min", [
    (0, 128, 1), (1, 128, 1), (-0.5, 128, 1), (1.5, 128, 1), ("abc", 128, 1), ("0.5", 128, 1),
    (True, 128, 1), (False, 128, 1), (None, 128, 1), (float("nan"), 128, 1),
    (0.9, 8, 9), (0.9, 0, 1), (0.9, 0, 0), (0.9, 128, 0), (0.9, -1, 1), (0.9, 128.0, 1), (0.9, True, 1),
    (0.9, 128, 1.5),
])
def test_bad_budget_keys(sparsity, d_max, d_min):
    with pytest.raises(BadInput):
        make_budget(sparsity, d_max, d_min, 10, 10, 1)


@pytest.mark.parametrize("text,expected", [("2MB", 2_000_000), ("512KB", 512_000), ("1.5MB", 1_500_000),
                                           ("64KiB", 65_536), ("100000", 100_000), (100000, 100_000),
                                           ("3 mb", 3_000_000), ("1GB", 10**9)])
def test_parse_bytes_units(text, expected):
    from recbole_bet.budget import parse_bytes

    assert parse_bytes(text) == expected


@pytest.mark.parametrize("bad", ["lots", "2XB", "-5MB", "0", True, "MB"])
def test_parse_bytes_refuses_nonsense(bad):
    from recbole_bet.budget import parse_bytes

    with pytest.raises(BadInput):
        parse_bytes(bad)


def test_memory_budget_turns_bytes_into_parameters():
    from recbole_bet.budget import make_memory_budget

    b = make_memory_budget("100KB", overhead_bytes=20_000, d_max=64, d_min=1, n_users=100, n_items=200,
                           tables_per_entity=2)
    assert b.budget_params == (100_000 - 20_000) // 4 and b.memory_budget == 100_000
    assert b.sparsity == pytest.approx(1 - b.budget_params / b.full_params)
    with pytest.raises(BadInput, match="smallest feasible memory_budget here is 22400 bytes"):
        make_memory_budget(20_500, overhead_bytes=20_000, d_max=64, d_min=1, n_users=100, n_items=200,
                           tables_per_entity=2)


def test_size_summary_counts_the_columns_each_training_pair_shares():
    """Prefix sizes share min(d_u, d_i) columns per pair; element masks share the columns both rows keep."""
    from recbole_bet.budget import size_summary

    b = make_budget(0.5, 4, 1, 2, 2, 1)
    sizes = np.array([3, 1, 2, 4])  # users 3, 1; items 2, 4
    users, items = np.array([0, 0, 1]), np.array([0, 1, 1])
    summary = size_summary(b, sizes, users, items)
    assert summary["user_share"] == 0.4
    assert summary["users"] == {"mean": 2.0, "min": 1, "max": 3} and summary["items"]["max"] == 4
    assert summary["pair_shared_mean"] == 2.0  # (min(3,2) + min(3,4) + min(1,4)) / 3
    assert summary["pair_mean"] == round((2.5 + 3.5 + 2.5) / 3, 3)
    keep = np.arange(4)[None, :] < sizes[:, None]
    assert size_summary(b, sizes, users, items, keep=keep)["pair_shared_mean"] == 2.0
    keep[3] = [False, False, True, True]  # item 1 keeps its last two columns: shares 1 with user 0, 0 with user 1
    assert size_summary(b, sizes, users, items, keep=keep)["pair_shared_mean"] == 1.0
    assert "pair_shared_mean" not in size_summary(b, sizes)
