"""BET's search loop with a synthetic probe: schedule, population bookkeeping, selection, retraining."""
import numpy as np
import torch

from recbole_bet.budget import make_budget, one_size_per_side
from recbole_bet.methods.bet.loop import ANCHOR, NEAREST, PREDICTED, RANDOM, Member, SearchLoop, strategy_for
from recbole_bet.methods.bet.method import retrain_and_choose
from recbole_bet.methods.bet.predictor import PredictorTrainer, build_predictor
from recbole_bet.methods.bet.sampler import ActionSampler
from recbole_bet.training import quality

N_USERS, N_ITEMS = 40, 60


def _loop(probe, selection="schedule", seed=0, predictor="deepsets", anchors=()):
    rng = np.random.default_rng(seed)
    budget = make_budget(0.8, 32, 1, N_USERS, N_ITEMS, 1)
    user_freq, item_freq = rng.integers(0, 50, N_USERS), rng.integers(0, 50, N_ITEMS)
    torch.manual_seed(seed)
    model = build_predictor(predictor, user_freq, item_freq, 32)
    trainer = PredictorTrainer(model, lr=1e-2, generator=torch.Generator().manual_seed(seed))
    anchors = [(name, one_size_per_side(name, budget, user_freq, item_freq)) for name in anchors]
    return SearchLoop(ActionSampler(budget, user_freq, item_freq), model, trainer, probe, 10, seed,
                      selection=selection, anchors=anchors)


def _fitness(sizes, t=0):
    """Synthetic: users' share of the budget is what counts."""
    return float(sizes[:N_USERS].sum() / max(1, sizes.sum()))


def test_strategy_schedule_follows_t_mod_5():
    assert [strategy_for(t) for t in range(10)] == [PREDICTED] * 3 + [RANDOM, NEAREST] + [PREDICTED] * 3 + [RANDOM, NEAREST]
    assert {strategy_for(t, "random") for t in range(10)} == {RANDOM}


def test_population_bookkeeping_and_history():
    probed = []

    def probe(sizes, t):
        probed.append(sizes.copy())
        return _fitness(sizes)

    loop = _loop(probe)
    state = loop.run(7)
    assert [m.t for m in state.population] == list(range(7))
    assert [m.strategy for m in state.population] == [strategy_for(t) for t in range(7)]
    for member, sizes in zip(state.population, probed):  # each member is exactly what was probed
        assert (member.sizes == sizes).all()
        assert member.fitness == _fitness(sizes)
        assert member.kept_params == sizes.sum() <= loop.sampler.budget.budget_params
    assert state.max_candidate_kept_params <= loop.sampler.budget.budget_params
    assert state.best().fitness == max(m.fitness for m in state.population)
    top = state.top(3)
    assert [m.fitness for m in top] == sorted((m.fitness for m in state.population), reverse=True)[:3]


def test_top_k_skips_duplicate_actions():
    sizes = np.ones(N_USERS + N_ITEMS, dtype=np.int64)
    enc = torch.zeros(1, 1)
    loop = _loop(_fitness)
    loop.state.population = [Member(0, PREDICTED, sizes, enc, 0.9, 0, 1, 0), Member(1, RANDOM, sizes, enc, 0.9, 0, 1, 0),
                             Member(2, RANDOM, sizes * 2, enc, 0.5, 0, 2, 0)]
    assert [m.t for m in loop.state.top(2)] == [0, 2]


def test_predicted_strategy_takes_the_argmax_and_nearest_the_closest_embedding():
    loop = _loop(_fitness)
    loop.run(4)  # population to be near
    candidates = loop.sampler.sample(10, loop.rng)
    encoded = loop.predictor.encode(candidates)
    with torch.no_grad():
        predicted = loop.predictor(encoded).numpy()
        index, _ = loop.choose(PREDICTED, encoded)
        assert index == int(np.argmax(predicted))
        index, _ = loop.choose(NEAREST, encoded)
        best = loop.predictor.embed(loop.state.best().encoded)
        distances = ((loop.predictor.embed(encoded) - best) ** 2).sum(1)
        assert index == int(torch.argmin(distances))


def test_same_seed_same_search():
    a = _loop(_fitness, seed=5).run(6)
    b = _loop(_fitness, seed=5).run(6)
    assert all((x.sizes == y.sizes).all() and x.fitness == y.fitness for x, y in zip(a.population, b.population))


def test_guided_search_beats_random_on_a_learnable_fitness():
    """With a fitness the predictor can learn, predicted picks should outscore random picks on average."""
    guided = _loop(_fitness, seed=1).run(30)
    random = _loop(_fitness, selection="random", seed=1).run(30)
    late_guided = np.mean([m.fitness for m in guided.population[15:] if m.strategy == PREDICTED])
    late_random = np.mean([m.fitness for m in random.population[15:]])
    assert late_guided > late_random


def test_size_vector_ablation_runs():
    state = _loop(_fitness, predictor="size_vector").run(5)
    assert len(state.population) == 5


def test_selective_retraining_chooses_by_validation_not_search_fitness():
    enc = torch.zeros(1, 1)
    top = [Member(t, PREDICTED, np.full(5, t + 1), enc, fitness, 0, 5 * (t + 1), 0)
           for t, fitness in enumerate([0.9, 0.8, 0.7])]
    valid_by_size = {1: 0.10, 2: 0.30, 3: 0.20}  # the second-best in search is best after retraining

    def train(sizes):
        v = valid_by_size[int(sizes[0])]
        result = {k: v for k in ("recall@5", "ndcg@5", "recall@10", "ndcg@10", "recall@20", "ndcg@20")}
        return {"w": sizes[0]}, result, 0.0

    entries, chosen, (sizes, weights, valid) = retrain_and_choose(top, train)
    assert chosen == 1 and sizes[0] == 2 and weights == {"w": 2}
    assert [e["fitness"] for e in entries] == [0.9, 0.8, 0.7]
    assert entries[chosen]["valid_quality"] == quality(valid) == 0.30


def test_resumed_search_repeats_the_uninterrupted_one():
    """Restore the population and predictor state after 4 iterations: the rest is identical."""
    full = _loop(_fitness, seed=2)
    full.run(8)
    first = _loop(_fitness, seed=2)
    first.run(4)
    saved_trainer = first.trainer.state_dict()
    saved = [Member(m.t, m.strategy, m.sizes.copy(), None, m.fitness, m.predicted_fitness, m.kept_params, m.seconds)
             for m in first.state.population]
    resumed = _loop(_fitness, seed=2)
    resumed.trainer.load_state_dict(saved_trainer)
    resumed.restore(saved, first.state.max_candidate_kept_params)
    resumed.run(8)
    for a, b in zip(full.state.population, resumed.state.population):
        assert (a.sizes == b.sizes).all() and a.fitness == b.fitness and a.strategy == b.strategy
        assert abs(a.predicted_fitness - b.predicted_fitness) < 1e-6


def test_anchors_take_the_first_iterations_and_leave_the_later_draws_alone():
    """bet_anchors: the named one-size-per-side actions are probed first, as they are; from then on each iteration
    draws the candidates a search without anchors draws (with random selection, the very same actions)."""
    plain = _loop(_fitness, selection="random", seed=3)
    plain.run(6)
    anchored = _loop(_fitness, selection="random", seed=3, anchors=("es-users", "es-items"))
    anchored.run(6)
    population = anchored.state.population
    assert [m.strategy for m in population[:2]] == [ANCHOR, ANCHOR]
    assert [m.anchor for m in population] == ["es-users", "es-items", None, None, None, None]
    users, items = population[0].sizes, population[1].sizes
    assert len(set(users[:N_USERS])) <= 2 and users[N_USERS:].max() == 1  # one size (and the remainder's +1)
    assert len(set(items[N_USERS:])) <= 2 and items[:N_USERS].max() == 1
    assert population[0].fitness == _fitness(users) and population[0].kept_params == users.sum()
    for a, b in zip(plain.state.population[2:], population[2:]):
        assert (a.sizes == b.sizes).all() and a.strategy == b.strategy
    # the synthetic fitness rewards the users' share: the users' anchor tops the population and is retrained first
    assert anchored.state.top(1)[0].anchor == "es-users"


def test_resumed_search_keeps_its_anchors():
    """A search stopped after its anchors resumes with them as members and repeats the uninterrupted search."""
    full = _loop(_fitness, seed=4, anchors=("es",))
    full.run(5)
    first = _loop(_fitness, seed=4, anchors=("es",))
    first.run(2)
    saved = [Member(m.t, m.strategy, m.sizes.copy(), None, m.fitness, m.predicted_fitness, m.kept_params, m.seconds,
                    m.anchor) for m in first.state.population]
    resumed = _loop(_fitness, seed=4, anchors=("es",))
    resumed.trainer.load_state_dict(first.trainer.state_dict())
    resumed.restore(saved, first.state.max_candidate_kept_params)
    resumed.run(5)
    assert [m.anchor for m in resumed.state.population] == ["es", None, None, None, None]
    for a, b in zip(full.state.population, resumed.state.population):
        assert (a.sizes == b.sizes).all() and a.fitness == b.fitness and a.strategy == b.strategy


class _Config(dict):
    """The two ways run_identity reads a RecBole Config."""

    @property
    def final_config_dict(self):
        return self


def test_run_identity_reads_anchors_in_every_spelling_and_old_checkpoints_still_match():
    """A checkpoint written before bet_anchors existed (no key) is the same run as bet_anchors: [] today; the
    command line's "es,es-users" and the YAML list name the same run; other anchors do not."""
    from recbole_bet.methods.bet.method import run_identity

    base = {"method": "bet", "sparsity": 0.9, "bet_sampler": "paper_filled"}
    before = run_identity(_Config(base))
    assert run_identity(_Config(base, bet_anchors=[])) == before
    assert run_identity(_Config(base, bet_anchors="none")) == before
    assert run_identity(_Config(base, bet_anchors="es,es-users")) == run_identity(_Config(base, bet_anchors=["es", "es-users"]))
    assert run_identity(_Config(base, bet_anchors=["es"])) != before
    # choose adds a training after everything a checkpoint holds: a prefix run's checkpoint resumes under it, and
    # before the key existed runs kept first columns
    assert run_identity(_Config(base, bet_retrain_columns="choose", bet_reuse_run=None)) == before
    assert run_identity(_Config(base, bet_retrain_columns="prefix")) == before
    assert run_identity(_Config(base, bet_retrain_columns="magnitude")) != before


def test_anchor_names_from_every_spelling():
    """YAML lists, the command line's strings and none all read as a list of names; a scalar stays a name, so that
    validation rejects it by name."""
    from recbole_bet.config import anchor_names

    spellings = {None: [], "none": [], "[]": [], "es,es-users": ["es", "es-users"],
                 "['es', 'es-users']": ["es", "es-users"], "[es, es-items]": ["es", "es-items"], 5: ["5"]}
    for value, names in spellings.items():
        assert anchor_names({"bet_anchors": value}) == names, value
    assert anchor_names({"bet_anchors": ["es-users"]}) == ["es-users"]
