"""The grid's Ray executor on a real Ray on this machine (one start for the module, two CPUs, no cluster): the
local executor's rows, failed and killed cells reported while the others finish, one pretraining for cells
that share it, and a grid resumed after an interrupted Ray run."""
import csv
import json
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import yaml

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # ray 2.6 imports pkg_resources
    ray = pytest.importorskip("ray")

from recbole_bet.grid.command import main as grid_main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "grids" / "tiny.yaml"
# what a row is: sizes and metrics (timings and folders differ between any two runs)
SAME = ["dataset", "model", "method", "base_method", "sparsity", "seed", "realized_sparsity", "kept_params",
        "budget_params", "budget_applied", "selected_from", "all_converged", "max_epochs", "grid"] + \
       [f"{s}_{m}" for s in ("valid", "test") for m in ("recall@5", "ndcg@5", "recall@20", "ndcg@20")]


@pytest.fixture(scope="module")
def ray_address():
    """One Ray for the module; its workers inherit this environment (one thread each, as the local runs)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
        try:
            yield ray.get_runtime_context().gcs_address
        finally:
            ray.shutdown()


def _grid_file(tmp_path, folder="grids", **changes) -> Path:
    spec = {**yaml.safe_load(TINY.read_text()), "output_root": str(tmp_path / "runs"),
            "results_dir": str(tmp_path / "results"), **changes}
    path = tmp_path / folder / "g.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec))
    return path


def _rows(path) -> list:
    with open(path, newline="") as fh:
        return [{k: r[k] for k in SAME} for r in csv.DictReader(fh)]


def _line(stdout, cell_id) -> str:
    lines = [line for line in stdout.splitlines() if line.startswith("[") and cell_id in line]
    assert len(lines) == 1, stdout
    return lines[0]


def _driver(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "recbole_bet", "grid", *map(str, args)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _cell_process(cell_dir: Path, timeout: float = 240) -> tuple:
    """(pid, parent pid) of the running cell that writes to ``cell_dir``: its parent is the Ray worker."""
    deadline = time.time() + timeout
    needle = f"--output_dir={cell_dir.resolve()}".encode()
    while time.time() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                if needle in argv and b"recbole_bet" in argv:
                    stat = (entry / "stat").read_text()
                    return int(entry.name), int(stat.rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
        time.sleep(0.2)
    raise AssertionError(f"no process writes to {cell_dir} within {timeout} s")


def _gone(pid: int, timeout: float = 60) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.2)
    return False


def test_ray_gives_the_local_executors_rows(ray_address, tmp_path, capsys):
    local = subprocess.run([sys.executable, "-m", "recbole_bet", "grid", "--grid=tiny",
                            f"--output-root={tmp_path / 'local' / 'runs'}", f"--results-dir={tmp_path / 'local'}"],
                           cwd=REPO, capture_output=True, text=True, timeout=600,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert local.returncode == 0, local.stdout + local.stderr[-3000:]
    # in this process: Ray is connected already, so the executor uses it and leaves it running
    code = grid_main(["--grid=tiny", "--executor=ray", f"--output-root={tmp_path / 'ray' / 'runs'}",
                      f"--results-dir={tmp_path / 'ray'}"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert ray.is_initialized()
    assert "ray: 2 cell(s) to run, each asking {'num_cpus': 1}; the cluster has 2 CPU(s)" in out
    assert "done" in _line(out, "/es/0.9/seed2020") and "done" in _line(out, "/mr/0.9/seed2020")
    rows = _rows(tmp_path / "ray" / "ml-100k.csv")
    assert [r["method"] for r in rows] == ["es", "mr"] and float(rows[0]["test_recall@20"]) > 0
    assert rows == _rows(tmp_path / "local" / "ml-100k.csv")  # sizes and metrics, digit for digit

    def layout(root):
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    assert layout(tmp_path / "ray" / "runs") == layout(tmp_path / "local" / "runs")
    info = json.loads((tmp_path / "ray" / "runs" / "ml-100k" / "LightGCN" / "es" / "0.9" / "seed2020" /
                       "cell.json").read_text())
    assert info["extra_args"] == ["--gpu_id="]  # no GPU asked for: the cell is told to use none


def test_failed_cells_are_listed_and_a_shared_pretraining_runs_once(ray_address, tmp_path, capsys):
    # two SSEDS cells that share a pretraining start together on the two CPUs; a method that does not exist fails
    path = _grid_file(tmp_path, methods=["sseds", {"label": "sseds-2", "method": "sseds",
                                                   "config": {"sseds_saliency_batches": 2}},
                                         {"label": "bogus", "method": "nosuch"}],
                      config={"epochs": 1, "pretrain_cache_dir": str(tmp_path / "pretrain")})
    code = grid_main([f"--grid={path}", "--executor=ray"])
    captured = capsys.readouterr()
    assert code == 1, captured.out + captured.err
    assert "done" in _line(captured.out, "/sseds/0.9/") and "done" in _line(captured.out, "/sseds-2/0.9/")
    assert "FAILED (exit 2)" in _line(captured.out, "/bogus/0.9/")
    assert "1 cell(s) failed" in captured.err and "unknown method 'nosuch'" in captured.err
    assert "ml-100k__LightGCN__bogus__0.9__seed2020.err" in captured.err  # where its whole log is
    rows = _rows(tmp_path / "results" / "ml-100k.csv")
    assert sorted(r["method"] for r in rows) == ["sseds", "sseds-2"]
    logs = {label: "".join(p.read_text() for p in (tmp_path / "runs" / "logs").glob(f"*__{label}__*"))
            for label in ("sseds", "sseds-2")}
    trained = [label for label, text in logs.items() if "pretraining the full-width model" in text]
    loaded = [label for label, text in logs.items() if "pretrained model loaded from cache" in text]
    assert len(trained) == 1 and len(loaded) == 1 and trained != loaded, logs
    assert len(list((tmp_path / "pretrain").glob("*.pt"))) == 1


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds the cell's process in /proc (Linux)")
def test_a_killed_cell_is_reported_and_an_interrupted_run_resumes(ray_address, tmp_path):
    # two CPUs a cell: one cell at a time, es then mr
    path = _grid_file(tmp_path, resources={"num_cpus": 2})
    runs = tmp_path / "runs" / "ml-100k" / "LightGCN"
    args = [f"--grid={path}", "--executor=ray", f"--ray_address={ray_address}"]

    # 1. es finishes; mr's Ray worker is killed (as by the out-of-memory killer): mr is reported, es kept
    driver = _driver(*args)
    cell, worker = _cell_process(runs / "mr" / "0.9" / "seed2020")
    assert (runs / "es" / "0.9" / "seed2020" / "report.json").is_file()
    os.kill(worker, signal.SIGKILL)
    out, err = driver.communicate(timeout=300)
    assert driver.returncode == 1, out + err
    assert "done" in _line(out, "/es/0.9/") and "FAILED (Ray worker died)" in _line(out, "/mr/0.9/")
    assert "1 cell(s) failed" in err and "--- ml-100k/LightGCN/mr/0.9/seed2020 (Ray worker died" in err
    assert _gone(cell)  # the cell died with its worker rather than run on unseen
    es_report = (runs / "es" / "0.9" / "seed2020" / "report.json").stat().st_mtime_ns

    # 2. the grid again, interrupted (Ctrl-C) while mr runs: mr's subprocess is stopped too. Here mr trains
    # 500 epochs with no early stop, so that on a loaded machine it cannot finish before the Ctrl-C lands
    long_mr = {"label": "mr", "method": "mr", "config": {"epochs": 500, "convergence_window": 1000}}
    slow = _grid_file(tmp_path, folder="slow", resources={"num_cpus": 2}, methods=["es", long_mr])
    driver = _driver(f"--grid={slow}", "--executor=ray", f"--ray_address={ray_address}")
    cell, _ = _cell_process(runs / "mr" / "0.9" / "seed2020")
    driver.send_signal(signal.SIGINT)
    out, err = driver.communicate(timeout=300)
    assert driver.returncode == 130, out + err
    assert "skipped" in _line(out, "/es/0.9/") and "interrupted: run the same command again" in err
    assert _gone(cell) and not (runs / "mr" / "0.9" / "seed2020" / "report.json").exists()

    # 3. and the first grid again: es is not rerun, mr (its interrupted folder deleted) runs again and finishes
    driver = _driver(*args)
    out, err = driver.communicate(timeout=300)
    assert driver.returncode == 0, out + err
    assert "skipped" in _line(out, "/es/0.9/") and "done" in _line(out, "/mr/0.9/")
    assert (runs / "es" / "0.9" / "seed2020" / "report.json").stat().st_mtime_ns == es_report
    assert sorted(r["method"] for r in _rows(tmp_path / "results" / "ml-100k.csv")) == ["es", "mr"]
