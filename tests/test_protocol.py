"""The shared training protocol (Convergence), equal budgets (ES's fill rule), warm/cold controls, bet@1."""
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import QUICK, make_context, run_cli
from recbole_bet.budget import equal_sizes, make_budget, split_equal_sizes
from recbole_bet.export import load_artifact
from recbole_bet.training import Convergence


def conv(**keys):
    config = {"eval_step": 1, "convergence_window": 3, "convergence_tol": 0.0, "warmup_epochs": 0,
              "stopping_step": 2, "epochs": 100, **keys}
    return Convergence(config)


def run_until_stop(c, scores):
    for i, s in enumerate(scores, 1):
        if c.update(s):
            return i
    return None


def test_window_rule_stops_when_the_last_window_gains_nothing():
    # best 0.5 at epoch 3; epochs 4-6 stay below it: the window of 3 after it gained nothing -> stop at 6
    assert run_until_stop(conv(), [0.1, 0.3, 0.5, 0.4, 0.45, 0.49, 0.6]) == 6
    # a plateau that rises again within the window keeps it going
    assert run_until_stop(conv(), [0.1, 0.3, 0.5, 0.5, 0.5, 0.51, 0.5, 0.5, 0.5]) == 9


def test_window_rule_tolerance_and_minimum():
    scores = [0.1, 0.5, 0.501, 0.502, 0.503, 0.5035, 0.504]
    assert run_until_stop(conv(), scores) is None  # every window gains a little
    assert run_until_stop(conv(convergence_tol=0.01), scores) == 5  # under 1% counts as no gain
    assert run_until_stop(conv(convergence_tol=0.01, warmup_epochs=6), scores) == 6  # never before the minimum


def test_patience_rule_matches_recbole_and_the_record_says_so():
    c = conv(convergence_window=0, stopping_step=2)
    assert run_until_stop(c, [0.1, 0.5, 0.4, 0.4, 0.4]) == 5  # three evaluations after the best
    record = c.record()
    assert record["converged"] and record["best_epoch"] == 2 and record["epochs"] == 5
    assert c.warning() is None


def test_cap_while_improving_is_not_converged_and_warns():
    c = conv(epochs=5)
    for s in [0.1, 0.2, 0.3, 0.4, 0.5]:
        c.update(s)
    record = c.record()
    assert not record["converged"] and record["epochs"] == 5 and record["best_epoch"] == 5
    assert "epoch cap" in c.warning() and "raise --epochs" in c.warning()


def test_trainer_stops_on_the_window_and_reports_each_training(tmp_path):
    from recbole_bet.training import train_to_convergence

    ctx = make_context("LightGCN", tmp_path, epochs=40, convergence_window=2, convergence_tol=0.5,
                       warmup_epochs=3)
    record = []
    train_to_convergence(ctx.config, ctx.model, ctx.train_data, ctx.valid_data, verbose=False, record=record,
                         label="probe")
    (r,) = record
    # a 50% tolerance: a window of 2 can hardly gain that much, so it stops soon after the minimum
    assert r["label"] == "probe" and r["converged"] and 3 <= r["epochs"] < 40 and r["rule"] == "window 2, tol 0.5"
    assert 1 <= r["best_epoch"] <= r["epochs"]


def test_es_fill_uses_the_budget_to_the_unit_and_favours_frequent_rows():
    b = make_budget(0.9, 128, 1, 943, 1682, 1)
    freq_u, freq_i = np.arange(943)[::-1], np.arange(1682)
    plain = equal_sizes(b)
    filled = equal_sizes(b, freq_u, freq_i)
    assert b.realized_sparsity(b.kept_params(plain)) > 0.905  # the old rule: 6.25% of the budget unused
    assert b.fits(filled) and b.budget_units - filled.sum() == 0
    assert 0.9 <= b.realized_sparsity(b.kept_params(filled)) <= 0.905
    assert set(np.unique(filled)) == {plain[0], plain[0] + 1}
    users, items = filled[:943], filled[943:]
    assert users[0] == plain[0] + 1 and users[-1] == plain[0]  # user 0 is the most frequent
    assert items[-1] == plain[0] + 1 and items[0] == plain[0]  # the last item is the most frequent


@pytest.mark.parametrize("sparsity", [0.8, 0.9, 0.95])
def test_es_realised_sparsity_within_half_a_percent(sparsity, tmp_path):
    ctx = make_context("NeuMF", tmp_path, sparsity=sparsity)
    from recbole_bet.methods import get_method

    sizes = get_method("es").propose(ctx)
    b = ctx.budget
    assert b.fits(sizes) and sparsity <= b.realized_sparsity(b.kept_params(sizes)) <= sparsity + 0.005


def test_warm_and_cold_controls_and_bet_at_1(tmp_path):
    """es_init=pretrained starts ES from the pretrained columns (one pretraining, cached); sseds_init=scratch
    retrains SSEDS's mask from the initial weights; BET's report lists each retrained action's test metrics."""
    reports = {}
    common = ["--model=LightGCN", "--dataset=ml-100k", f"--config_files={QUICK}", "--epochs=2",
              f"--pretrain_cache_dir={tmp_path / 'cache'}"]
    for name, extra in (("es-warm", ["--method=es", "--es_init=pretrained"]),
                        ("es", ["--method=es"]),
                        ("sseds-cold", ["--method=sseds", "--sseds_init=scratch"]),
                        ("bet", ["--method=bet", "--bet_retrain_top_k=2"])):
        out = tmp_path / name
        proc = run_cli(*common, *extra, f"--output_dir={out}")
        assert proc.returncode == 0, proc.stderr[-2000:]
        reports[name] = json.loads((out / "report.json").read_text())
    warm = reports["es-warm"]
    assert warm["search"] == {"init": "pretrained"}
    assert [t["label"] for t in warm["trainings"]] == ["pretrain", "es retrain from pretrained"]
    assert warm["trainings"][1]["epochs"] == 2 and warm["trainings"][1]["converged"] is False
    assert warm["test"] != reports["es"]["test"]  # another start, another result
    assert reports["es"]["trainings"][0]["label"] == "from scratch"
    cold = reports["sseds-cold"]
    assert cold["search"]["init"] == "scratch" and cold["trainings"][-1]["label"] == "sseds retrain from scratch"
    assert cold["trainings"][0]["cached"] is True  # es-warm's pretraining served SSEDS too
    for name, report in reports.items():  # where the units went: users' share, per-side sizes, pairs' width
        sizes = report["sizes"]
        kept_units = report["kept_params"] // report["tables_per_entity"]
        users_units = sizes["users"]["mean"] * report["n_users"]
        assert abs(users_units - sizes["user_share"] * kept_units) <= 0.01 * kept_units, name
        assert 0 < sizes["pair_shared_mean"] <= sizes["pair_mean"], name
    es_sizes = reports["es"]["sizes"]
    assert es_sizes["users"]["max"] - es_sizes["items"]["min"] <= 1  # equal sizes, the fill rule's one unit
    bet = reports["bet"]
    retrained = bet["search"]["retrained"]
    assert len(retrained) == 2 and all(set(r["test"]) == {"recall@5", "ndcg@5", "recall@20", "ndcg@20"}
                                       for r in retrained)
    assert retrained[bet["search"]["chosen"]]["test"] == bet["test"]
    assert bet["search"]["finetune_batch_size"] >= 128 and bet["search"]["finetune_steps_per_probe"] >= 1


def test_auto_probe_batch_scales_to_the_paper_steps():
    from recbole_bet.methods.bet.method import PAPER_PROBE_STEPS, finetune_batch_size

    config = {"bet_finetune_batch_size": "auto", "train_batch_size": 2048, "bet_finetune_epochs": 10}
    # ml-100k LightGCN: 50,000 training pairs at 2048 -> 25 steps an epoch -> batch ~985, ~51 steps an epoch
    batch = finetune_batch_size(config, 25)
    assert batch == round(25 * 2048 * 10 / PAPER_PROBE_STEPS)
    assert finetune_batch_size(config, 10 ** 6) == 10000 and finetune_batch_size(config, 1) == 128
    assert finetune_batch_size(dict(config, bet_finetune_batch_size=10000), 25) == 10000


def test_calibration_rules_match_the_trainer_rule():
    """benchmarks/convergence.py simulates stopping rules on recorded curves; its window rule must stop where
    the trainers' Convergence stops (with the minimum in epochs), or the calibration would not describe them."""
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("bench_convergence", REPO / "benchmarks" / "convergence.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rng = np.random.default_rng(0)
    for _ in range(20):
        curve = list(np.cumsum(rng.normal(0.001, 0.01, size=300)) + 1.0)
        for window, tol, minimum in ((25, 0.0, 50), (50, 0.002, 30), (10, 0.01, 10)):
            c = conv(convergence_window=window, convergence_tol=tol, warmup_epochs=minimum, epochs=300)
            stop = run_until_stop(c, curve) or 300
            assert bench.stop_epoch(curve, {"kind": "window", "window": window, "tol": tol, "min": minimum}) == stop


def test_bet_levers_paper_sampler_per_iteration_draws_and_warm_retraining(tmp_path):
    """The ablation keys of BET: the paper's sampler, one distribution per side per iteration, and the top
    actions retrained from the pretrained weights; the run stays within budget and says what it used."""
    out = tmp_path / "bet"
    proc = run_cli("--model=LightGCN", "--dataset=ml-100k", f"--config_files={QUICK}", "--epochs=2",
                   "--method=bet", "--sparsity=0.8", "--bet_sampler=paper", "--bet_distribution_draw=per_iteration",
                   "--bet_retrain_init=pretrained", "--bet_retrain_pick=both_sides",
                   f"--pretrain_cache_dir={tmp_path / 'cache'}", f"--output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    search = report["search"]
    assert (search["sampler"], search["distribution_draw"], search["retrain_init"], search["retrain_pick"]) == \
        ("paper", "per_iteration", "pretrained", "both_sides")
    fittest = max(search["iterations"], key=lambda it: (it["fitness"], -it["t"]))
    sides = {it["user_share"] >= 0.5 for it in search["iterations"]}
    retrained_sides = {e["user_share"] >= 0.5 for e in search["retrained"]}
    assert search["retrained"][0]["t"] == fittest["t"] and retrained_sides == sides  # both sides when there are two
    labels = [t["label"] for t in report["trainings"]]
    # then the default bet_retrain_columns: choose's training of the chosen action
    assert labels[0] == "pretrain" and labels[1:] == ["from pretrained"] * len(search["retrained"]) + \
        ["from pretrained, largest entries"]
    assert report["kept_params"] <= report["budget_params"]
    assert search["max_candidate_kept_params"] <= report["budget_params"]
    assert report["config"]["bet_sampler"] == "paper" and report["config"]["bet_retrain_init"] == "pretrained"


def test_successive_halving_trains_the_better_half_on_and_equals_top_k_when_rounds_cover_the_cap(tmp_path):
    """bet_retrain_schedule=halving, in process on three fixed actions: with a first round as long as the cap
    every action trains exactly as in the top-k retraining (same seeds, same result); with a short first round
    the worse actions stop early and the last one left trains to the cap."""
    from types import SimpleNamespace

    from recbole_bet.methods.bet.method import retrain_and_choose, retrain_halving
    from recbole_bet.methods.fixed import MixedRandom

    ctx = make_context("LightGCN", tmp_path, method="bet", epochs=4, stopping_step=10)
    es = equal_sizes(ctx.budget)
    mixed = MixedRandom().propose(ctx)
    top = [SimpleNamespace(sizes=sizes, fitness=f, t=t, kept_params=int(ctx.budget.kept_params(sizes)))
           for t, (sizes, f) in enumerate(((es, 0.9), (mixed, 0.8), (np.minimum(es, mixed), 0.7)))]
    full, full_chosen, _ = retrain_and_choose(top, ctx.train_from_scratch)
    long, long_chosen, _ = retrain_halving(top, ctx, ctx.init_state, first_epochs=4)
    # the same trainings; on 2 threads the narrow (trim_columns) products may round differently between runs
    for a, b in zip(long, full):
        assert a["valid"] == pytest.approx(b["valid"], abs=1e-4)
    assert long_chosen == full_chosen
    assert [e["epochs"] for e in long] == [4, 4, 4]
    short, chosen, (sizes, weights, valid) = retrain_halving(top, ctx, ctx.init_state, first_epochs=1)
    assert sorted(e["epochs"] for e in short) == [1, 2, 4]  # all 1 epoch; the better 2 on to 2; the best to 4
    assert {e["epochs"]: e["round"] for e in short} == {1: 0, 2: 1, 4: 2}
    assert short[chosen]["epochs"] == 4 and np.array_equal(sizes, top[chosen].sizes)
    # the action stopped after one epoch was the worst of the three then (its validation is its best of 1 epoch)
    first = [e for e in short if e["epochs"] == 1][0]
    assert first["valid_quality"] <= max(e["valid_quality"] for e in short)
    labels = [t["label"] for t in ctx.trainings[-3:]]
    assert labels == [f"halving, action {k}" for k in (1, 2, 3)]
    assert ctx.trainings[-3]["columns"] == 16  # equal sizes (12-13) train on 16 columns (trim_columns)
    # element masks (bet_retrain_columns: magnitude passes them): a mask of each row's first columns is the prefix
    as_masks, masks_chosen, (_, _, _) = retrain_halving(
        top, ctx, ctx.init_state, first_epochs=4, keep_of=lambda s: np.arange(128)[None, :] < s[:, None])
    for a, b in zip(as_masks, long):
        assert a["valid"] == pytest.approx(b["valid"], abs=1e-4)
    assert masks_chosen == long_chosen


@settings(max_examples=60, deadline=None)
@given(n_users=st.integers(1, 30), n_items=st.integers(1, 30), sparsity=st.floats(0.05, 0.9),
       share=st.floats(0.0, 1.0), seed=st.integers(0, 1000))
def test_split_equal_sizes_fill_the_budget_with_one_size_a_side(n_users, n_items, sparsity, share, seed):
    b = make_budget(sparsity, 16, 1, n_users, n_items, 1)
    rng = np.random.default_rng(seed)
    freq_u, freq_i = rng.integers(0, 50, n_users), rng.integers(0, 50, n_items)
    sizes = split_equal_sizes(b, share, freq_u, freq_i)
    assert b.fits(sizes) and sizes.sum() == b.budget_units  # to the unit, within [d_min, d_max]
    for side, freq in ((sizes[:n_users], freq_u), (sizes[n_users:], freq_i)):
        assert side.max() - side.min() <= 1  # one size a side, give or take the remainder
        if side.max() > side.min():  # the remainder went to the most frequent rows
            assert freq[side > side.min()].min() >= freq[side == side.min()].max()
    low, high = max(n_users, b.budget_units - 16 * n_items), min(16 * n_users, b.budget_units - n_items)
    assert sizes[:n_users].sum() == min(max(round(share * b.budget_units), low), high)  # the share, clipped


def test_es_user_share_gives_the_users_that_share(tmp_path):
    """--es_user_share=1: items at d_min, the rest of the budget to the users at one size; in the artifact too."""
    out = tmp_path / "run"
    proc = run_cli("--model=LightGCN", "--dataset=ml-100k", "--method=es", f"--config_files={QUICK}", "--epochs=1",
                   "--sparsity=0.9", "--es_user_share=1", f"--output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["kept_params"] == report["budget_params"] and report["config"]["es_user_share"] == 1
    ctx = make_context("LightGCN", tmp_path, method="es")
    load_artifact(str(out / "table.npz"), ctx.model, ctx.masked, "LightGCN", "ml-100k")
    users, items = ctx.masked.sizes[:ctx.budget.n_users], ctx.masked.sizes[ctx.budget.n_users:]
    assert set(np.unique(items)) == {1} and users.max() - users.min() == 1
    assert users.sum() == ctx.budget.budget_units - ctx.budget.n_items


def test_retraining_from_both_sides_of_the_split():
    """bet_retrain_pick=both_sides: ceil(k/2) fittest of the fittest action's side, floor(k/2) of the other,
    a short side's places to the other, fittest first; duplicates count once."""
    from recbole_bet.methods.bet.loop import Member, SearchState

    def member(t, users, items, fitness):  # two users, two items
        sizes = np.array([users, users, items, items])
        return Member(t, "random", sizes, None, fitness, None, int(sizes.sum()), 0.0)

    users_heavy = [member(t, 9 - t, 1, f) for t, f in enumerate((0.99, 0.98, 0.97, 0.96))]
    items_heavy = [member(4 + t, 1, 9 - t, f) for t, f in enumerate((0.90, 0.80))]
    state = SearchState(population=users_heavy[:1] + [users_heavy[0]] + users_heavy[1:] + items_heavy)
    assert [m.t for m in state.top(5)] == [0, 1, 2, 3, 4]
    assert [m.t for m in state.top_both_sides(5, n_users=2)] == [0, 1, 2, 4, 5]
    assert [m.t for m in state.top_both_sides(4, n_users=2)] == [0, 1, 4, 5]
    assert [m.t for m in state.top_both_sides(1, n_users=2)] == [0]
    one_side = SearchState(population=users_heavy)
    assert [m.t for m in one_side.top_both_sides(3, n_users=2)] == [0, 1, 2]
    few_same = SearchState(population=users_heavy[:1] + items_heavy)
    assert [m.t for m in few_same.top_both_sides(3, n_users=2)] == [0, 4, 5]


def test_retraining_the_fittest_and_every_anchor():
    """bet_retrain_pick=fittest_and_anchors: the k fittest distinct actions first, then each anchor not among them
    (earliest first), an anchor whose sizes equal a retrained action's once."""
    from recbole_bet.methods.bet.loop import Member, SearchState

    def member(t, users, items, fitness, anchor=None):  # two users, two items
        sizes = np.array([users, users, items, items])
        return Member(t, "anchor" if anchor else "random", sizes, None, fitness, None, int(sizes.sum()), 0.0, anchor)

    anchors = [member(0, 5, 5, 0.70, "es"), member(1, 9, 1, 0.60, "es-users"), member(2, 1, 9, 0.65, "es-items")]
    sampled = [member(3, 8, 2, 0.90), member(4, 7, 3, 0.80), member(5, 9, 1, 0.75)]
    state = SearchState(population=anchors + sampled)
    assert [m.t for m in state.top(2)] == [3, 4]
    assert [m.t for m in state.top_and_anchors(2)] == [3, 4, 0, 1, 2]
    assert [m.t for m in state.top_and_anchors(4)] == [3, 4, 5, 0, 2]  # es-users' sizes are t=5's: retrained once
    assert [m.t for m in SearchState(population=sampled).top_and_anchors(2)] == [3, 4]  # no anchors: top-k


def test_bet_retrains_its_anchors_when_asked_and_a_fittest_run_can_be_extended(tmp_path):
    """The quick profile probes es-users at t = 0; with one action to retrain, fittest_and_anchors retrains the
    fittest action and the anchor too, and the choice is over both. bet_reuse_run with it on a finished fittest run
    (the same seed and keys) retrains only the anchor that run left out and chooses again: the report is the fresh
    run's. A run that would add nothing is refused."""
    common = ("--model=LightGCN", "--dataset=ml-100k", f"--config_files={QUICK}", "--epochs=2", "--method=bet",
              "--sparsity=0.9", "--bet_retrain_top_k=1", f"--pretrain_cache_dir={tmp_path / 'cache'}")
    runs = {}
    for name, keys in (("fresh", ["--bet_retrain_pick=fittest_and_anchors"]), ("fittest", []),
                       ("reused", ["--bet_retrain_pick=fittest_and_anchors", f"--bet_reuse_run={tmp_path / 'fittest'}"])):
        proc = run_cli(*common, *keys, f"--output_dir={tmp_path / name}")
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs[name] = json.loads((tmp_path / name / "report.json").read_text())
    fresh, fittest, reused = runs["fresh"], runs["fittest"], runs["reused"]
    search = fresh["search"]
    assert search["retrain_pick"] == "fittest_and_anchors"
    fittest_t = max(search["iterations"], key=lambda it: (it["fitness"], -it["t"]))["t"]
    anchor_t = next(it["t"] for it in search["iterations"] if it.get("anchor") == "es-users")
    assert fittest_t != anchor_t  # seed 2020: the anchor is not the fittest, so it is added
    assert [e["t"] for e in search["retrained"]] == [fittest_t, anchor_t]
    assert [e["t"] for e in fittest["search"]["retrained"]] == [fittest_t]
    assert fresh["kept_params"] <= fresh["budget_params"]
    assert reused["search"]["reused_from"] == str(tmp_path / "fittest")
    assert reused["search"]["retrain_pick"] == "fittest_and_anchors"
    for key in ("retrained", "chosen", "columns_choice"):
        assert reused["search"].get(key) == fresh["search"].get(key), key
    timeless = [[{k: v for k, v in it.items() if k != "seconds"} for it in r["search"]["iterations"]]
                for r in (reused, fresh)]
    assert timeless[0] == timeless[1]
    assert (reused["valid"], reused["test"], reused["sizes"]) == (fresh["valid"], fresh["test"], fresh["sizes"])
    labels = {name: [t["label"] for t in r["trainings"]] for name, r in runs.items()}
    # the finished run's trainings, then the anchor's and (it won here) choose's once more on it
    assert search["chosen"] == 1 and labels["reused"] == labels["fittest"] + labels["fresh"][len(labels["fittest"]) - 1:]
    again = run_cli(*common, "--bet_retrain_pick=fittest_and_anchors", f"--bet_reuse_run={tmp_path / 'reused'}",
                    f"--output_dir={tmp_path / 'twice'}")
    assert again.returncode == 2 and "would add nothing" in again.stderr.splitlines()[-1]


def quick_bet_report(tmp_path, *keys, model="LightGCN", epochs=2, config_files=QUICK) -> dict:
    """``run_bet.py --method=bet --sparsity=0.9`` on ml-100k through the CLI (quick profile), the report it wrote."""
    out = tmp_path / "bet"
    proc = run_cli(f"--model={model}", "--dataset=ml-100k", f"--config_files={config_files}", f"--epochs={epochs}",
                   "--method=bet", "--sparsity=0.9", *keys, f"--pretrain_cache_dir={tmp_path / 'cache'}",
                   f"--output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads((out / "report.json").read_text())


def test_bet_tied_sides_and_shared_probe_seed_on_neumf(tmp_path):
    """NeuMF's default (properties/model/NeuMF.yaml) is bet_sides=tied, retrained from scratch, its anchors
    retrained beside the fittest: every candidate splits the budget by one distribution over both sides (GMF uses
    the columns a user and an item both keep), so no probed action puts nearly all of it on one side; the run stays
    within budget and its report says so. With bet_probe_seed=shared through the CLI (quick profile, whose one
    anchor, es-users, stands in for NeuMF's es)."""
    report = quick_bet_report(tmp_path, "--bet_probe_seed=shared", model="NeuMF")
    assert report["search"]["sides"] == "tied" and report["config"]["bet_sides"] == "tied"
    assert report["search"]["retrain_init"] == "scratch"
    assert report["config"]["bet_retrain_pick"] == "fittest_and_anchors"
    assert 0 in [e["t"] for e in report["search"]["retrained"]]  # the anchor, probed at t = 0, was retrained
    assert report["trainings"][-1]["label"].endswith("from scratch"), report["trainings"][-1]
    assert report["search"]["probe_seed"] == "shared"
    sampled = [it for it in report["search"]["iterations"] if "anchor" not in it]  # the quick profile's anchor is one-sided
    assert sampled and all(0.2 < it["user_share"] < 0.5 for it in sampled)
    assert report["kept_params"] <= report["budget_params"]
    assert report["sizes"]["pair_shared_mean"] <= report["sizes"]["pair_mean"]


def test_shared_probe_seed_scores_an_action_the_same_at_every_iteration(tmp_path):
    """bet_probe_seed=shared (common random numbers): the probe of one action gives the same fitness whichever
    iteration draws it, so fitnesses differ by the actions alone; per_iteration (the paper's code) gives each
    iteration its own finetuning draw, and the same action scores differently."""
    from recbole_bet.methods.bet.method import Probe
    from recbole_bet.pretrain import pretrained

    ctx = make_context("LightGCN", tmp_path, method="bet", sparsity=0.9, epochs=2, bet_probe_seed="shared")
    pre_state, _, _ = pretrained(ctx)
    probe = Probe(ctx, pre_state)
    sizes = equal_sizes(ctx.budget, ctx.user_freq, ctx.item_freq)
    shared = [probe(sizes, t) for t in (0, 7)]
    assert shared[0] == shared[1] and shared[0] > 0
    ctx.config["bet_probe_seed"] = "per_iteration"
    own = [probe(sizes, t) for t in (0, 7)]
    assert own[0] == shared[0]  # iteration 0's draw is the one every shared probe uses
    assert own[1] != own[0]


def test_fitness_on_a_subset_of_validation_users(tmp_path):
    """bet_fitness_users=0.25: the probe scores fitness on a fixed quarter of the validation users, against the
    pretrained model on the same users (so fitness stays a ratio near 1, not a quarter of it); the same subset
    every time, and through the CLI (quick profile) the run's reported metrics are still on every user."""
    from recbole_bet.methods.bet.method import Probe
    from recbole_bet.pretrain import pretrained

    ctx = make_context("LightGCN", tmp_path, method="bet", sparsity=0.9, epochs=2, bet_fitness_users=0.25)
    pre_state, _, _ = pretrained(ctx)
    probe = Probe(ctx, pre_state)
    def n_users(loader):
        data = loader._dataset
        return len(np.unique(data.inter_feat[data.uid_field].numpy()))

    assert n_users(probe.fitness_data) == round(0.25 * n_users(ctx.valid_data))
    sizes = equal_sizes(ctx.budget, ctx.user_freq, ctx.item_freq)
    quarter = probe(sizes, 0)
    assert quarter == probe(sizes, 0) and 0.5 < quarter < 1.5
    ctx.config["bet_fitness_users"] = 1.0
    assert Probe(ctx, pre_state)(sizes, 0) != quarter  # other users, another score

    report = quick_bet_report(tmp_path, "--bet_fitness_users=0.25")
    assert report["config"]["bet_fitness_users"] == 0.25
    chosen = report["search"]["retrained"][report["search"]["chosen"]]
    assert report["valid"]["ndcg@20"] == pytest.approx(chosen["valid"]["ndcg@20"])  # chosen on every user
    assert report["kept_params"] <= report["budget_params"]


def test_bet_successive_halving_runs_end_to_end(tmp_path):
    """bet_retrain_schedule=halving through the CLI (quick profile): the top actions' trainings are recorded as
    halving rounds, the chosen one trained longest, and the report says which schedule ran."""
    report = quick_bet_report(tmp_path, "--bet_retrain_schedule=halving", "--bet_halving_epochs=1", epochs=4)
    search = report["search"]
    assert search["retrain_schedule"] == "halving"
    retrained = search["retrained"]
    # the default bet_retrain_columns: choose trains the chosen action once more, after the rounds
    assert [t["label"] for t in report["trainings"][-len(retrained) - 1:]] == \
        [f"halving, action {k}" for k in range(1, len(retrained) + 1)] + ["from pretrained, largest entries"]
    assert retrained[search["chosen"]]["epochs"] == max(e["epochs"] for e in retrained)
    choice = search["columns_choice"]
    assert choice["prefix_valid_quality"] == retrained[search["chosen"]]["valid_quality"]
    kept = choice["magnitude"] if choice["kept"] == "magnitude" else retrained[search["chosen"]]
    assert report["valid"]["ndcg@20"] == pytest.approx(kept["valid"]["ndcg@20"])


def test_the_paper_profile_selects_the_papers_bet(tmp_path):
    """``--config_files="quick paper"``: properties/paper.yaml switches every selectable lever to the paper's
    behaviour, whatever the defaults are, and the report says so."""
    search = quick_bet_report(tmp_path, config_files=f"{QUICK} paper")["search"]
    assert {k: search[k] for k in ("sampler", "distribution_draw", "sides", "retrain_init", "retrain_schedule",
                                   "retrain_pick", "probe_seed", "retrain_columns")} == {
        "sampler": "paper", "distribution_draw": "per_iteration", "sides": "independent", "retrain_init": "scratch",
        "retrain_schedule": "top_k", "retrain_pick": "fittest", "probe_seed": "per_iteration",
        "retrain_columns": "prefix"}
    assert "columns_choice" not in search
    assert search["anchors"] == [] and all(it["strategy"] != "anchor" for it in search["iterations"])
    assert search["finetune_batch_size"] == 10000  # the paper's, not scaled to ml-100k
    assert len(search["retrained"]) == 2 and all("round" not in e for e in search["retrained"])


def test_bet_anchors_through_the_cli(tmp_path):
    """--bet_anchors=es-users,es: the first two iterations probe those sizings (each side one size, the budget
    used), the report names them, and the run stays within budget."""
    report = quick_bet_report(tmp_path, "--bet_anchors=es-users,es")
    search = report["search"]
    assert search["anchors"] == ["es-users", "es"]
    first = search["iterations"][:2]
    assert [it["strategy"] for it in first] == ["anchor", "anchor"]
    assert [it["anchor"] for it in first] == ["es-users", "es"]
    assert all("anchor" not in it for it in search["iterations"][2:])
    assert first[0]["user_share"] > 0.9 > first[1]["user_share"]  # es-users: the items at d_min
    budget = report["budget_params"]
    assert all(budget - 200 < it["kept_params"] <= budget for it in first)
    assert report["kept_params"] <= budget


def test_each_backbones_bet_defaults_and_the_paper_profile():
    """The retraining defaults each backbone's BET was chosen with on validation (docs/reproduction.md "Retraining
    the anchors"): NeuMF and NGCF retrain their anchors beside the fittest, LightGCN the fittest only; the paper
    profile gives the paper's pick on every backbone, whatever the model file says."""
    from recbole_bet.config import make_config
    picks = {model: make_config(model, "ml-100k", config_dict={"method": "bet"})["bet_retrain_pick"]
             for model in ("LightGCN", "NGCF", "NeuMF")}
    assert picks == {"LightGCN": "fittest", "NGCF": "fittest_and_anchors", "NeuMF": "fittest_and_anchors"}
    for model in picks:
        assert make_config(model, "ml-100k", config_file_list=["paper"],
                           config_dict={"method": "bet"})["bet_retrain_pick"] == "fittest"
