"""End to end through the real command line: reports of es/mr runs, and bad input answered with exit 2."""

import json
import math
import os

import pytest

from conftest import check_refused, run_cli

TABLES_PER_ENTITY = {"LightGCN": 1, "NGCF": 1, "NeuMF": 2}
SPEC_KEYS = {
    "model", "dataset", "method", "sparsity", "seed", "d_max", "d_min", "n_users", "n_items", "tables_per_entity",
    "full_params", "budget_params", "kept_params", "realized_sparsity", "valid", "test", "search", "timings_s",
    "artifact", "artifact_bytes", "dense_bytes", "config",
}
METRICS = {"recall@5", "ndcg@5", "recall@20", "ndcg@20"}
SPEC_CONFIG_KEYS = {"method", "sparsity", "d_max", "d_min", "output_dir", "bet_iterations", "bet_candidates",
                    "bet_finetune_epochs", "bet_retrain_top_k", "epochs", "seed", "train_batch_size"}
# RecBole's log lines, e.g. "23 Nov 16:26    INFO  budget: ..."


@pytest.mark.parametrize("method", ["es", "mr"])
@pytest.mark.parametrize("model", list(TABLES_PER_ENTITY))
def test_run_writes_spec_report(cli_run, model, method):
    run = cli_run(model, method)
    proc = run.proc
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert f"report: {run.report}" in proc.stdout.splitlines()
    assert f"table:  {run.table}" in proc.stdout.splitlines()
    # report, artifact, and the config `recommend` rebuilds the split from; the checkpoint is gone
    assert sorted(os.listdir(run.out)) == ["report.json", "run_config.json", "sizes.png", "table.npz"]

    r = json.loads(run.report.read_text())
    assert SPEC_KEYS <= set(r)
    tpe = TABLES_PER_ENTITY[model]
    assert (r["model"], r["dataset"], r["method"], r["sparsity"], r["seed"]) == (model, "ml-100k", method, 0.9, 2020)
    assert (r["d_max"], r["d_min"], r["n_users"], r["n_items"], r["tables_per_entity"]) == (128, 1, 943, 1682, tpe)
    n = 943 + 1682
    assert r["full_params"] == 128 * n * tpe
    assert r["budget_params"] == math.floor((1 - 0.9) * 128 * n * tpe)
    assert 0 < r["kept_params"] <= r["budget_params"]
    assert r["kept_params"] % tpe == 0
    assert r["realized_sparsity"] == pytest.approx(1 - r["kept_params"] / r["full_params"], abs=1e-12)
    assert r["realized_sparsity"] >= 0.9 - 1e-12
    if method == "es":  # the largest equal size, the units left over one each to the most frequent (the fill rule)
        size = r["budget_params"] // tpe // n
        assert r["kept_params"] == r["budget_params"] // tpe * tpe > size * n * tpe
    assert r["search"] is None  # es and mr do not search

    for split in ("valid", "test"):
        assert set(r[split]) == METRICS
        assert all(isinstance(v, float) and 0 <= v <= 1 for v in r[split].values())
    assert r["test"]["recall@20"] > 0 and r["test"]["ndcg@20"] > 0  # trained, not random
    assert {"pretrain", "search", "retrain", "total"} <= set(r["timings_s"])
    assert all(isinstance(v, float) and v >= 0 for v in r["timings_s"].values())

    assert r["artifact"] == "table.npz"
    assert r["artifact_bytes"] == os.path.getsize(run.table)
    assert r["dense_bytes"] == 4 * 128 * tpe * n

    c = r["config"]
    assert SPEC_CONFIG_KEYS <= set(c)
    assert (c["method"], c["sparsity"], c["d_max"], c["d_min"], c["seed"]) == (method, 0.9, 128, 1, 2020)
    assert c["output_dir"] == str(run.out)
    # quick.yaml beats the defaults, --epochs=1 on the command line beats quick.yaml
    assert (c["epochs"], c["train_batch_size"], c["bet_iterations"]) == (1, 4096, 3)


LIGHTGCN = ["--model=LightGCN", "--dataset=ml-100k"]
# every other bad input is a row of docs/errors.md, run by test_errors.py


def test_package_run_command_refuses_bad_input(tmp_path):
    out = tmp_path / "out"
    proc = run_cli("run", *LIGHTGCN, "--sparsity=1.5", f"--output_dir={out}", module=True, timeout=300)
    check_refused(proc, out, r"sparsity")


def test_package_usage():
    proc = run_cli(module=True, timeout=120)
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: python -m recbole_bet COMMAND")
    assert "convert" in proc.stdout and "run" in proc.stdout and "grid" in proc.stdout
    assert proc.stderr == ""

    proc = run_cli("frobnicate", module=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: unknown command 'frobnicate'; choose one of convert, run, recommend, grid"]
    assert proc.stdout == ""
