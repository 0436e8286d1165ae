"""Deployment: memory budgets in bytes, top-k from the artifact, identical reports for the same seed."""
import json
import sys

import numpy as np
import pytest

from conftest import run_cli


def _run_in_process(monkeypatch, tmp_path, model, **config):
    """run() in-process, returning (report, ctx) so the trained masked model is at hand."""
    from recbole_bet.config import make_config
    from recbole_bet.pipeline import prepare, run

    monkeypatch.setattr(sys, "argv", ["run_bet.py"])
    config = make_config(model, "ml-100k", config_file_list=["quick"],
                         config_dict={"epochs": 1, "checkpoint_dir": str(tmp_path / "ckpt"),
                                      "pretrain_cache_dir": str(tmp_path / "cache"), **config})
    ctx = prepare(config)
    return run(config, ctx), ctx


@pytest.mark.parametrize("model,method,memory", [("LightGCN", "es", "60KB"), ("NeuMF", "mr", "300000"),
                                                 ("NGCF", "es", "0.25MB")])
def test_memory_budget_bounds_the_artifact_on_disk(monkeypatch, tmp_path, model, method, memory):
    report, ctx = _run_in_process(monkeypatch, tmp_path, model, method=method, memory_budget=memory,
                                  output_dir=str(tmp_path / "out"))
    bytes_ = {"60KB": 60_000, "300000": 300_000, "0.25MB": 250_000}[memory]
    size = (tmp_path / "out" / "table.npz").stat().st_size
    assert report["memory_budget"] == bytes_
    assert report["artifact_bytes"] == size <= bytes_
    assert report["kept_params"] <= report["budget_params"]
    # the only slack is budget the method left unused plus the fixed header margin
    unused = 4 * (report["budget_params"] - report["kept_params"])
    assert bytes_ - size <= unused + 64 * (2 * report["tables_per_entity"] + 2)
    assert report["sparsity"] == pytest.approx(1 - report["budget_params"] / report["full_params"])


@pytest.mark.parametrize("model", ["LightGCN", "NGCF", "NeuMF"])
def test_recommend_from_artifact_matches_the_masked_model(monkeypatch, tmp_path, model):
    from recbole_bet.recommend import top_k

    out = tmp_path / "out"
    _, ctx = _run_in_process(monkeypatch, tmp_path, model, method="mr", output_dir=str(out))
    dataset = ctx.train_data.dataset
    tokens = ["1", "7", "42", "500", "943"]
    ids = [dataset.field2token_id[dataset.uid_field][t] for t in tokens]
    expected = top_k(ctx.model, dataset, ids, 10)  # the trained masked model, in memory
    proc = run_cli("recommend", f"--output_dir={out}", *[f"--user={t}" for t in tokens], "--topk=10", module=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = dict(line.split("\t") for line in proc.stdout.strip().splitlines())
    for token, row in zip(tokens, expected):
        assert lines[token].split() == list(dataset.id2token(dataset.iid_field, row))
    # training items are never recommended
    history = dataset.inter_matrix(form="csr")
    for uid, row in zip(ids, expected):
        assert not set(row) & set(history.indices[history.indptr[uid]:history.indptr[uid + 1]])


def test_same_seed_and_config_give_identical_reports(tmp_path):
    reports = []
    for name in ("a", "b"):
        proc = run_cli("--model=LightGCN", "--dataset=ml-100k", "--config_files=quick", "--bet_iterations=2",
                       "--bet_retrain_top_k=1", "--epochs=2", f"--output_dir={tmp_path / name}",
                       f"--pretrain_cache_dir={tmp_path / ('cache-' + name)}", f"--checkpoint_dir={tmp_path / 'ckpt'}")
        assert proc.returncode == 0, proc.stderr[-2000:]
        report = json.loads((tmp_path / name / "report.json").read_text())
        report.pop("timings_s")
        report["config"].pop("output_dir")
        for it in report["search"]["iterations"] + report["trainings"]:
            it.pop("seconds")
        reports.append(report)
    assert reports[0] == reports[1]
    a = np.load(tmp_path / "a" / "table.npz", allow_pickle=False)
    b = np.load(tmp_path / "b" / "table.npz", allow_pickle=False)
    assert a.files == b.files
    for key in a.files:  # sizes and metadata exactly; weights up to float32 rounding of threaded CPU kernels
        if key.endswith(".values") or key.startswith("param."):
            assert np.allclose(a[key], b[key], rtol=0, atol=1e-6), key
        else:
            assert np.array_equal(a[key], b[key]), key
