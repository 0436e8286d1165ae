"""The BET action sampler: always within budget and bounds, frequency-ordered, budget fully used."""
import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from recbole_bet.budget import make_budget
from recbole_bet.errors import BadInput
from recbole_bet.methods.bet.sampler import DISTRIBUTIONS, ActionSampler


def _sampler(n_users, n_items, sparsity, d_min, d_max, seed, tables=1, sides="independent"):
    rng = np.random.default_rng(seed)
    budget = make_budget(sparsity, d_max, d_min, n_users, n_items, tables)
    user_freq = rng.zipf(1.7, n_users).clip(max=10_000)
    item_freq = rng.zipf(1.7, n_items).clip(max=10_000)
    user_freq[rng.random(n_users) < 0.1] = 0  # entities unseen in training exist
    return budget, ActionSampler(budget, user_freq, item_freq, sides=sides), user_freq, item_freq, rng


@settings(max_examples=60, deadline=None)
@example(n_users=1, n_items=1, sparsity=0.125, d_max=2, d_min_frac=0.0, tables=2, seed=0,  # budget_params 7: 6 usable
         sides="independent")
@example(n_users=1, n_items=1, sparsity=0.125, d_max=2, d_min_frac=0.0, tables=2, seed=0, sides="tied")
@given(
    n_users=st.integers(1, 400), n_items=st.integers(1, 400), sparsity=st.floats(0.01, 0.99),
    d_max=st.integers(1, 160), d_min_frac=st.floats(0, 1), tables=st.integers(1, 2), seed=st.integers(0, 2**31),
    sides=st.sampled_from(["independent", "tied"]),
)
def test_candidates_fit_budget_bounds_and_frequency_order(n_users, n_items, sparsity, d_max, d_min_frac, tables, seed,
                                                          sides):
    d_min = 1 + int(d_min_frac * (d_max - 1))
    try:
        budget, sampler, user_freq, item_freq, rng = _sampler(n_users, n_items, sparsity, d_min, d_max, seed, tables,
                                                              sides)
    except BadInput:
        return  # infeasible budgets are refused (tested in test_budget)
    sizes = sampler.sample(12, rng)
    assert sizes.shape == (12, n_users + n_items)
    kept = budget.kept_params_many(sizes)
    assert (kept <= budget.budget_params).all()
    assert sizes.min() >= d_min and sizes.max() <= d_max
    # a more frequent entity never gets a smaller size (within users, within items)
    for part, freq in ((sizes[:, :n_users], user_freq), (sizes[:, n_users:], item_freq)):
        order = np.argsort(-freq, kind="stable")
        by_rank = part[:, order]
        assert (np.diff(by_rank, axis=1) <= 0).all()
    # the budget is used, not wasted, unless every entity is already at d_max; sizes are whole units of
    # `tables` parameters, so an odd budget_params with two tables per entity leaves one parameter unusable
    cap = d_max * (n_users + n_items) * tables
    if budget.budget_params < cap:
        assert (kept >= 0.99 * budget.budget_units * tables).all()
    else:
        assert (sizes == d_max).all()


def test_gowalla_scale_is_exact_and_vectorised():
    budget, sampler, *_ , rng = _sampler(29_858, 40_981, 0.95, 1, 128, 0)
    sizes, info = sampler.sample_with_info(100, rng)
    assert (budget.kept_params_many(sizes) == budget.budget_params).all()  # exact, nothing lost to rounding
    assert {i["user"]["distribution"] for i in info} | {i["item"]["distribution"] for i in info} <= set(DISTRIBUTIONS)
    assert len({i["user"]["distribution"] for i in info}) == len(DISTRIBUTIONS)  # all four are drawn


def test_same_seed_same_candidates_and_ties_by_id():
    budget = make_budget(0.9, 64, 1, 50, 70, 1)
    freq_u, freq_i = np.ones(50), np.ones(70)  # all tied: larger sizes go to smaller ids
    a = ActionSampler(budget, freq_u, freq_i).sample(5, np.random.default_rng(3))
    b = ActionSampler(budget, freq_u, freq_i).sample(5, np.random.default_rng(3))
    assert (a == b).all()
    assert (np.diff(a[:, :50], axis=1) <= 0).all() and (np.diff(a[:, 50:], axis=1) <= 0).all()


def test_beta_max_is_configurable_and_small_parameters_are_finite():
    budget = make_budget(0.8, 32, 1, 100, 100, 1)
    tiny = {"powerlaw": 1e-9, "truncnorm": 1e-9, "truncexpon": 1e-9, "lognorm": 1e-9}
    sampler = ActionSampler(budget, np.arange(100), np.arange(100), beta_max=tiny)
    sizes = sampler.sample(20, np.random.default_rng(0))
    assert (budget.kept_params_many(sizes) == budget.budget_params).all()
    assert sizes.min() >= 1 and sizes.max() <= 32


def test_frequency_vectors_must_match():
    budget = make_budget(0.8, 32, 1, 10, 10, 1)
    with pytest.raises(ValueError):
        ActionSampler(budget, np.ones(9), np.ones(10))


# ------------------------------------------------------------------------- the paper's sizing and draws

def _skewed(sparsity, mode, draw, seed=3, sides="independent"):
    rng = np.random.default_rng(seed)
    budget = make_budget(sparsity, 128, 1, 943, 1682, 1)
    user_freq, item_freq = rng.zipf(1.7, 943).clip(max=500), rng.zipf(1.7, 1682).clip(max=500)
    return (budget, ActionSampler(budget, user_freq, item_freq, mode=mode, draw=draw, sides=sides), user_freq,
            item_freq)


@pytest.mark.parametrize("sparsity", [0.8, 0.9, 0.95])
def test_paper_sizes_are_proportional_floors_and_draws_above_d_max_are_redrawn(sparsity):
    budget, sampler, user_freq, _ = _skewed(sparsity, "paper", "per_candidate")
    sizes, info = sampler.sample_with_info(60, np.random.default_rng(1))
    assert sizes.shape == (60, budget.n_entities) and len(info) == 60
    assert sizes.max() <= 128 and sizes.min() >= 1
    assert (budget.kept_params_many(sizes) <= budget.budget_params).all()
    # flooring wastes budget: the paper's sizes never fill it exactly, the exact sampler always does
    exact = ActionSampler(budget, user_freq, np.ones(budget.n_items), mode="exact").sample(60, np.random.default_rng(1))
    assert (budget.kept_params_many(exact) == budget.budget_params).all()
    assert (budget.kept_params_many(sizes) < budget.budget_params).all()
    if sparsity == 0.8:  # about 4 draws in 10 put an entity above 128 at 0.8 and are drawn again
        assert 0.2 < sampler.rejected / (sampler.rejected + 60) < 0.7


@pytest.mark.parametrize("sparsity", [0.8, 0.95])
def test_paper_filled_is_the_papers_sizing_with_the_floors_losses_given_out(sparsity):
    """paper_filled: on the same weights, the paper's proportional floors plus at most one unit per entity, so that
    a side meets its total exactly; kept candidates use the budget exactly, within d_max, descending by frequency.
    A draw whose one side the d_min floor pushed over its total was let through by the paper only because
    flooring wasted budget on the other side: filled, it is over the budget and is drawn again."""
    budget, paper, _, _ = _skewed(sparsity, "paper", "per_iteration")
    _, filled, user_freq, item_freq = _skewed(sparsity, "paper_filled", "per_iteration")
    weights = -np.sort(-np.random.default_rng(0).lognormal(0, 0.5, size=(30, budget.n_users)), axis=1)
    totals = np.full(30, budget.budget_units // 3)
    a, b = paper._sizes(weights, totals), filled._sizes(weights, totals)
    extra = b - a
    assert extra.min() == 0 and extra.max() == 1 and (a.sum(axis=1) < totals).all()
    assert (b.sum(axis=1) == totals).all() and (np.diff(b, axis=1) <= 0).all()
    sizes, _ = filled.sample_with_info(40, np.random.default_rng(2))
    paper.sample_with_info(40, np.random.default_rng(2))
    assert filled.rejected >= paper.rejected
    assert (budget.kept_params_many(sizes) == budget.budget_params).all()
    assert sizes.max() <= 128 and sizes.min() >= 1
    for side, freq in ((slice(0, budget.n_users), user_freq), (slice(budget.n_users, None), item_freq)):
        order = np.argsort(-freq, kind="stable")
        assert (np.diff(sizes[:, side][:, order].astype(int), axis=1) <= 0).all()


def test_an_iteration_whose_family_yields_no_candidate_draws_another():
    """per_iteration with the paper's sizing: if the iteration's family gives no candidate within d_max and the
    budget in MAX_REJECTION_ROUNDS rounds, the iteration draws another family instead of failing (a ml-100k
    LightGCN search at 0.9 with paper_filled hit such a family)."""
    from recbole_bet.methods.bet import sampler as sampler_module

    budget, sampler, _, _ = _skewed(0.9, "paper_filled", "per_iteration")
    real_draw, seen = sampler._draw, []

    def draw(m, rng, families):
        sizes, info = real_draw(m, rng, families)
        seen.append(tuple(families[0]))
        if len(set(seen)) == 1:  # every draw of the first family is over d_max
            sizes = sizes.copy()
            sizes[:, 0] = budget.d_max + 1
        return sizes, info

    sampler._draw = draw
    sizes = sampler.sample(10, np.random.default_rng(0))
    assert len(sizes) == 10 and sizes.max() <= budget.d_max
    assert seen.count(seen[0]) == sampler_module.MAX_REJECTION_ROUNDS and len(set(seen)) == 2
    sampler._draw = lambda m, rng, families: (np.full((m, budget.n_entities), budget.d_max + 1), [{}] * m)
    with pytest.raises(RuntimeError, match="use bet_sampler: exact"):
        sampler.sample(10, np.random.default_rng(0))


def test_per_iteration_draws_share_one_family_per_side():
    budget, sampler, _, _ = _skewed(0.9, "exact", "per_iteration")
    for seed in range(5):
        _, info = sampler.sample_with_info(20, np.random.default_rng(seed))
        for side in ("user", "item"):
            assert len({(i[side]["distribution"], i[side]["beta"]) for i in info}) == 1
        assert len({i["user_share"] for i in info}) == 20  # each candidate still splits the budget its own way
    budget, sampler, _, _ = _skewed(0.9, "exact", "per_candidate")
    _, info = sampler.sample_with_info(20, np.random.default_rng(0))
    assert len({(i["user"]["distribution"], i["user"]["beta"]) for i in info}) > 1


def test_unknown_mode_is_refused():
    budget = make_budget(0.5, 8, 1, 3, 3, 1)
    with pytest.raises(ValueError, match="mode"):
        ActionSampler(budget, np.ones(3), np.ones(3), mode="fast")


def test_tied_sides_draw_one_distribution_and_give_pairs_more_shared_columns():
    """bet_sides=tied: one distribution per candidate for users and items and one budget pool (a user and an item
    at the same frequency quantile get about the same size); over pairs drawn by frequency, a pair shares more
    columns than under the independent sampler's users' share (what a dot product, NeuMF's GMF, can use)."""
    from recbole_bet.budget import size_summary

    shared = {}
    for sides in ("independent", "tied"):
        budget, sampler, user_freq, item_freq = _skewed(0.9, "exact", "per_candidate", sides=sides)
        sizes, info = sampler.sample_with_info(40, np.random.default_rng(0))
        assert (budget.kept_params_many(sizes) == budget.budget_params).all()
        pair_rng = np.random.default_rng(1)  # training pairs, each side drawn by its frequency
        users = pair_rng.choice(budget.n_users, 5000, p=user_freq / user_freq.sum())
        items = pair_rng.choice(budget.n_items, 5000, p=item_freq / item_freq.sum())
        shared[sides] = np.mean([size_summary(budget, row, users, items)["pair_shared_mean"] for row in sizes])
        if sides == "tied":
            assert all("tied" in i and "user" not in i for i in info)
            # one distribution, one pool: the users' share follows the sides' counts, not a drawn share
            shares = [i["user_share"] for i in info]
            assert 0.2 < np.median(shares) < 0.5
    assert shared["tied"] > 1.2 * shared["independent"]
    _, sampler, _, _ = _skewed(0.9, "exact", "per_iteration", sides="tied")
    _, info = sampler.sample_with_info(10, np.random.default_rng(0))
    assert len({(i["tied"]["distribution"], i["tied"]["beta"]) for i in info}) == 1
