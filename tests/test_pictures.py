"""Every run draws sizes.png; BET, ESAPN and RULE draw search.png; BET logs its search to TensorBoard."""
import json
import sys

import numpy as np
import pytest

from conftest import QUICK, run_cli


def _png_ok(path):
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


@pytest.mark.parametrize("method,search", [("es", False), ("sseds", False), ("esapn", True)])
def test_runs_draw_their_pictures(tmp_path, method, search):
    out = tmp_path / method
    proc = run_cli("--model=LightGCN", "--dataset=ml-100k", f"--method={method}", f"--config_files={QUICK}",
                   "--epochs=2", f"--output_dir={out}", f"--pretrain_cache_dir={tmp_path / 'cache'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert _png_ok(out / "sizes.png")
    assert (out / "search.png").exists() == search and report["pictures"] == ["sizes.png"] + (
        ["search.png"] if search else [])
    if search:
        assert _png_ok(out / "search.png")


def test_bet_draws_its_search_and_logs_it_to_tensorboard(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from recbole_bet.pipeline import quick_start

    monkeypatch.chdir(tmp_path)  # RecBole writes log/ and log_tensorboard/ under the working folder
    monkeypatch.setattr(sys, "argv", ["run_bet.py"])
    report = quick_start("LightGCN", "ml-100k", config_file_list=["quick"],
                         config_dict={"method": "bet", "output_dir": str(tmp_path / "out"), "epochs": 1,
                                      "bet_iterations": 4, "pretrain_cache_dir": str(tmp_path / "cache")})
    assert report["pictures"] == ["sizes.png", "search.png"]
    assert _png_ok(tmp_path / "out" / "sizes.png") and _png_ok(tmp_path / "out" / "search.png")
    scalars = {}
    for run in (tmp_path / "log_tensorboard").iterdir():
        events = EventAccumulator(str(run))
        events.Reload()
        for tag in events.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend(e.value for e in events.Scalars(tag))
    fitness = [it["fitness"] for it in report["search"]["iterations"]]
    assert np.allclose(scalars["BET/fitness"], fitness, rtol=1e-6)
    assert np.allclose(scalars["BET/best_fitness"], np.maximum.accumulate(fitness), rtol=1e-6)
    assert len(scalars["BET/kept_params"]) == 4
