"""BET end to end on ml-100k with the quick profile: LightGCN, NGCF, NeuMF; determinism; BETTrainer."""
import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

from recbole_bet.export import read_artifact

REPO = Path(__file__).resolve().parents[1]


def _bet(monkeypatch, tmp, model, out, cache):
    from recbole_bet.pipeline import quick_start

    monkeypatch.setattr(sys, "argv", ["run_bet.py"])
    return quick_start(model, "ml-100k", config_file_list=["quick"],
                       config_dict={"method": "bet", "output_dir": str(tmp / out),
                                    "pretrain_cache_dir": str(tmp / cache), "checkpoint_dir": str(tmp / "ckpt")})


def _check_search_report(report, config_t=3, top_k=2):
    search = report["search"]
    assert report["method"] == "bet"
    assert [it["t"] for it in search["iterations"]] == list(range(config_t))
    # the quick profile's one anchor (bet_anchors: [es-users]) first, then the schedule's predicted picks
    assert [it["strategy"] for it in search["iterations"]] == ["anchor", "predicted", "predicted"][:config_t]
    assert search["anchors"] == ["es-users"] and search["iterations"][0]["anchor"] == "es-users"
    for it in search["iterations"]:
        assert it["kept_params"] <= report["budget_params"]
        assert 0 < it["fitness"] and np.isfinite(it["predicted_fitness"]) and 0 <= it["user_share"] <= 1
    assert search["max_candidate_kept_params"] <= report["budget_params"]
    retrained = [r["t"] for r in search["retrained"]]
    if report["config"]["bet_retrain_pick"] == "fittest_and_anchors":  # NeuMF's and NGCF's default: the anchor (t = 0) too
        assert 0 in retrained and len(retrained) == top_k + (0 not in retrained[:top_k])
    else:
        assert len(retrained) == top_k
    chosen = search["retrained"][search["chosen"]]
    assert chosen["valid_quality"] == max(r["valid_quality"] for r in search["retrained"])
    assert report["kept_params"] == chosen["kept_params"] <= report["budget_params"]
    assert set(report["timings_s"]) == {"pretrain", "search", "retrain", "total"}


@pytest.mark.parametrize("model", ["LightGCN", "NGCF", "NeuMF"])
def test_bet_quick_profile(monkeypatch, tmp_path, model):
    report = _bet(monkeypatch, tmp_path, model, "out", "cache")
    _check_search_report(report)
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    assert on_disk["search"]["iterations"] == report["search"]["iterations"]
    from recbole_bet.export import read_artifact  # the chosen action's share of the budget on users, as exported

    meta, arrays = read_artifact(str(tmp_path / "out" / "table.npz"))
    units = {t["entity"]: int(arrays[f"table.{t['name']}.sizes"][1:].sum()) for t in meta["tables"]}
    chosen = report["search"]["retrained"][report["search"]["chosen"]]
    assert chosen["user_share"] == pytest.approx(units["user"] / (units["user"] + units["item"]))
    assert report["tables_per_entity"] == (2 if model == "NeuMF" else 1)


def test_same_seed_same_sizes_with_and_without_cached_pretraining(monkeypatch, tmp_path):
    first = _bet(monkeypatch, tmp_path, "LightGCN", "a", "cache")  # pretrains and caches
    assert list((tmp_path / "cache").glob("*.pt"))
    second = _bet(monkeypatch, tmp_path, "LightGCN", "b", "cache")  # loads the cached model
    assert [i["fitness"] for i in first["search"]["iterations"]] == [i["fitness"] for i in second["search"]["iterations"]]
    _, a = read_artifact(str(tmp_path / "a" / "table.npz"))
    _, b = read_artifact(str(tmp_path / "b" / "table.npz"))
    assert all((a[k] == b[k]).all() for k in a if k.endswith(".sizes"))
    assert first["test"] == second["test"]


def test_bet_trainer_example_from_docs(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the example writes RecBole's log/ and saved/ under the working directory
    monkeypatch.setattr(sys, "argv", ["example"])
    example = runpy.run_path(str(REPO / "docs" / "example_bet_trainer.py"))
    trainer, test_result = example["main"](["quick"])
    b = trainer.context.budget
    assert b.kept_params(trainer.sizes) <= b.budget_params
    assert set(test_result) >= {"recall@20", "ndcg@20"}
    size = trainer.export(str(tmp_path / "table.npz"))
    assert size == (tmp_path / "table.npz").stat().st_size
