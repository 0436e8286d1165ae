"""The grid harness (python -m recbole_bet grid, local executor): runs cells as subprocesses, resumes, reports
failures, builds tables; works from an installed copy. tests/test_grid_ray.py runs the Ray executor."""
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.stats import ttest_rel

from recbole_bet.grid.cells import cell_state, grid_cells, shown
from recbole_bet.grid.load import GridError, load_grid
from recbole_bet.grid.stats import plotted_labels, significance, variants_against_bet, wins_ties_losses

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "grids" / "tiny.yaml"


def _run(*args, timeout=300, cwd=REPO, env=None):
    return subprocess.run([sys.executable, "-m", "recbole_bet", "grid", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=env)


def _csv_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _status_line(stdout, cell_id):
    lines = [line for line in stdout.splitlines() if line.startswith("[") and cell_id in line]
    assert len(lines) == 1, stdout
    return lines[0]


def test_tiny_grid_runs_resumes_and_survives_a_failing_cell(tmp_path):
    runs, results = tmp_path / "runs", tmp_path / "results"
    first = _run(f"--grid={TINY}", f"--output-root={runs}", f"--results-dir={results}")
    assert first.returncode == 0, first.stdout + first.stderr[-3000:]
    es = runs / "ml-100k" / "LightGCN" / "es" / "0.9" / "seed2020"
    mr = runs / "ml-100k" / "LightGCN" / "mr" / "0.9" / "seed2020"
    for cell in (es, mr):
        report = json.loads((cell / "report.json").read_text())
        assert report["kept_params"] <= report["budget_params"] and report["seed"] == 2020
        info = json.loads((cell / "cell.json").read_text())
        assert info["wall_s"] > 0 and info["wall_s_total"] == info["wall_s"] and info["returncode"] == 0
        assert "--epochs=1" in info["args"] and "--config_files=quick" in info["args"]
    rows = _csv_rows(results / "ml-100k.csv")
    assert sorted(r["method"] for r in rows) == ["es", "mr"]
    assert all(float(r["test_recall@20"]) > 0 and float(r["wall_s"]) > 0 for r in rows)
    md = (results / "ml-100k.md").read_text()
    assert "| method | sparsity | realised | R@5 | N@5 | R@20 | N@20 | valid N@20 | from | conv. | seeds | wall |" in md
    assert all(r["selected_from"] == "1" and r["all_converged"] == "False" for r in rows)  # 1 epoch: the cap
    assert "| es | 0.9 |" in md and "| mr | 0.9 |" in md and "Produced by `python -m recbole_bet grid" in md
    assert "done" in _status_line(first.stdout, "ml-100k/LightGCN/es/0.9/seed2020")

    # a second grid over the same cells, with a method that does not exist between them;
    # mr's report is gone (its directory stays, as if interrupted): only mr runs again
    es_mtime = (es / "report.json").stat().st_mtime_ns
    (mr / "report.json").unlink()
    spec = yaml.safe_load(TINY.read_text())
    spec["methods"] = ["es", {"label": "bogus", "method": "nosuch"}, "mr"]
    spec.update(output_root=str(runs), results_dir=str(results))
    bad = tmp_path / "bad" / "grid.yaml"
    bad.parent.mkdir()
    bad.write_text(yaml.safe_dump(spec))
    second = _run(f"--grid={bad}")
    assert second.returncode == 1, second.stdout + second.stderr[-3000:]
    assert "skipped" in _status_line(second.stdout, "/es/0.9/seed2020")
    assert "FAILED (exit 2)" in _status_line(second.stdout, "/bogus/0.9/seed2020")
    assert "done" in _status_line(second.stdout, "/mr/0.9/seed2020")
    assert "1 cell(s) failed" in second.stderr and "unknown method 'nosuch'" in second.stderr
    assert (es / "report.json").stat().st_mtime_ns == es_mtime  # never rerun
    assert (mr / "report.json").is_file()
    rows = _csv_rows(results / "ml-100k.csv")
    assert sorted(r["method"] for r in rows) == ["es", "mr"]
    assert "| bogus | 0.9 | – |" in (results / "ml-100k.md").read_text()  # asked for, 0/1 finished

    # a fresh clone: the run folders are gone, the committed CSV rows are not; nothing runs again
    shutil.rmtree(runs)
    third = _run(f"--grid={TINY}", f"--output-root={runs}", f"--results-dir={results}")
    assert third.returncode == 0, third.stdout + third.stderr[-3000:]
    assert "2 cell(s) already have a row in" in third.stdout and "nothing to do" in third.stdout
    assert not es.exists() and not mr.exists()
    assert sorted(r["method"] for r in _csv_rows(results / "ml-100k.csv")) == ["es", "mr"]


def test_cell_states_and_dry_run(tmp_path):
    spec = yaml.safe_load(TINY.read_text())
    spec["methods"] = ["es", "bet"]
    spec.update(output_root=str(tmp_path / "runs"))
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(spec))
    g = load_grid(path)
    es, bet = grid_cells(g)
    assert [cell_state(c) for c in (es, bet)] == ["new", "new"]
    es.dir.mkdir(parents=True)
    (es.dir / "checkpoint.pt").write_bytes(b"x")  # es never resumes: the leftover is deleted and rerun
    bet.dir.mkdir(parents=True)
    (bet.dir / "checkpoint.pt").write_bytes(b"x")
    assert [cell_state(c) for c in (es, bet)] == ["rerun", "resume"]
    (bet.dir / "report.json").write_text("{}")
    assert cell_state(bet) == "done"
    dry = _run(f"--grid={path}", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would rerun" in _status_line(dry.stdout, "/es/0.9/") and "skipped" in _status_line(dry.stdout, "/bet/0.9/")
    assert "--method=es --sparsity=0.9 --seed=2020" in dry.stdout and "--config_files=quick --epochs=1" in dry.stdout
    assert "python -m recbole_bet run --model=LightGCN --dataset=ml-100k" in dry.stdout  # no run_bet.py once installed
    # the old script is a thin wrapper over the same command
    wrapped = subprocess.run([sys.executable, "benchmarks/grid.py", f"--grid={path}", "--dry-run"], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    assert wrapped.returncode == 0 and wrapped.stdout == dry.stdout, wrapped.stderr
    assert (es.dir / "checkpoint.pt").exists()  # a dry run touches nothing
    only = _run(f"--grid={path}", "--dry-run", "--only=*/bet/*")
    assert "/es/" not in only.stdout and "1 cell(s)" in only.stdout


def test_a_method_with_its_own_models_runs_only_on_them(tmp_path):
    spec = {**yaml.safe_load(TINY.read_text()), "models": ["LightGCN", "NeuMF"], "output_root": str(tmp_path / "r"),
            "methods": ["es", {"label": "bet-tied", "method": "bet", "config": {"bet_sides": "tied"},
                               "models": ["NeuMF"]}]}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert [c.id for c in grid_cells(load_grid(path))] == [
        "ml-100k/LightGCN/es/0.9/seed2020", "ml-100k/NeuMF/es/0.9/seed2020", "ml-100k/NeuMF/bet-tied/0.9/seed2020"]


def test_a_method_with_its_own_seeds_runs_and_is_counted_only_on_them(tmp_path):
    spec = {**yaml.safe_load(TINY.read_text()), "seeds": [2020, 2021], "output_root": str(tmp_path / "r"),
            "results_dir": str(tmp_path / "results"),
            "methods": ["es", {"label": "es-once", "method": "es", "config": {"es_user_share": 1},
                               "seeds": [2020]}]}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert [c.id for c in grid_cells(load_grid(path))] == [
        "ml-100k/LightGCN/es/0.9/seed2020", "ml-100k/LightGCN/es-once/0.9/seed2020",
        "ml-100k/LightGCN/es/0.9/seed2021"]
    proc = _run(f"--grid={path}", "--tables-only")  # nothing finished: the tables count what each label asks for
    assert proc.returncode == 0, proc.stderr
    assert "0 of 3 cells finished" in (tmp_path / "results" / "ml-100k.md").read_text()


@pytest.mark.parametrize("change,message", [
    ({"methods": [{"label": "a/b", "method": "bet"}]}, "label"),
    ({"config": {"sparsity": 0.5}}, "cannot set sparsity"),
    ({"sparsities": [1.5]}, "strictly between"),
    ({"colour": "red"}, "unknown key"),
    ({"config": {"valid_metric": "a=b"}}, "cannot be passed"),
    ({"resources": {"num_gpu": 1}}, "`resources` is a mapping"),
    ({"resources": {"num_cpus": -1}}, "must be a number >= 0"),
    ({"methods": [{"method": "bet", "models": ["NeuMF"]}]}, "names model(s) NeuMF that the grid's `models`"),
    ({"methods": [{"method": "bet", "models": "LightGCN"}]}, "`models` must be a non-empty list"),
    ({"methods": [{"method": "bet", "seeds": [7]}]}, "names seed(s) 7 that the grid's `seeds` (2020)"),
    ({"methods": [{"method": "bet", "seeds": []}]}, "`seeds` must be a non-empty list"),
])
def test_bad_grid_files_are_refused(tmp_path, change, message):
    spec = {**yaml.safe_load(TINY.read_text()), **change}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(spec))
    proc = _run(f"--grid={path}", "--dry-run")
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_bundled_grid_by_name_and_ray_only_when_chosen(tmp_path, monkeypatch, capsys):
    from recbole_bet.cli import package_main

    monkeypatch.chdir(tmp_path)
    assert package_main(["grid", "--grid=tiny", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "grid tiny: 2 cell(s) -> results/runs/tiny" in out  # a bundled grid, outputs under the current folder
    assert "--output_dir=results/runs/tiny/ml-100k/LightGCN/es/0.9/seed2020" in out
    assert package_main(["grid", "--grid=no-such-grid"]) == 2
    assert "error: grid file no-such-grid does not exist" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed: `import ray` fails
    assert package_main(["grid", "--grid=tiny", "--executor=ray"]) == 2
    err = capsys.readouterr().err
    assert "error: --executor=ray needs Ray" in err and "Traceback" not in err
    assert not (tmp_path / "results" / "runs").exists()


def test_grid_command_from_an_installed_wheel(tmp_path):
    """A wheel built from this checkout, unpacked into a folder of its own: the bundled grid is found and
    every output lands under the current folder (no run_bet.py, no checkout)."""
    src, site, work = tmp_path / "src", tmp_path / "site", tmp_path / "work"
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        (src / name).parent.mkdir(exist_ok=True)
        shutil.copy(REPO / name, src / name)
    for name in ("recbole_bet", "properties", "grids"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "--no-index", str(src), "-w", str(tmp_path / "wheels")],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = (tmp_path / "wheels").glob("recbole_bet-*.whl")
    zipfile.ZipFile(wheel).extractall(site)
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}  # the unpacked wheel only, never this checkout
    where = subprocess.run([sys.executable, "-c", "import recbole_bet.grid.load as m; print(m.grids_dir())"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert where.stdout.strip() == str(site / "recbole_bet" / "grids"), where.stderr
    proc = _run("--grid=tiny", "--only=*/es/*", cwd=work, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    cell = work / "results" / "runs" / "tiny" / "ml-100k" / "LightGCN" / "es" / "0.9" / "seed2020"
    report = json.loads((cell / "report.json").read_text())
    assert report["kept_params"] <= report["budget_params"]
    info = json.loads((cell / "cell.json").read_text())
    assert " -m recbole_bet run --model=LightGCN" in info["command"]
    rows = _csv_rows(work / "results" / "tiny" / "ml-100k.csv")
    assert [(r["method"], r["output_dir"]) for r in rows] == [("es", "results/runs/tiny/ml-100k/LightGCN/es/0.9/seed2020")]
    assert "- `recbole_bet/grids/tiny.yaml` (grid `tiny`)" in (work / "results" / "tiny" / "ml-100k.md").read_text()
    assert (work / "log").is_dir()  # RecBole's own log folder: the cell ran in the current folder


def _fake_report(cell, r20, n20, seconds=10.0, budget_applied=True):
    cell.dir.mkdir(parents=True)
    metrics = {"recall@5": r20 / 2, "ndcg@5": n20 / 2, "recall@20": r20, "ndcg@20": n20}
    (cell.dir / "report.json").write_text(json.dumps({
        "realized_sparsity": cell.sparsity, "kept_params": 100, "budget_params": 100,
        "valid": {**metrics, "ndcg@20": n20 + 0.1},
        "budget_applied": budget_applied,
        "test": metrics, "timings_s": {"pretrain": 1.0, "search": 2.0, "retrain": 3.0, "total": seconds}}))
    (cell.dir / "cell.json").write_text(json.dumps({"wall_s": seconds + 1, "args": cell.run_args()}))


def test_tables_from_finished_cells(tmp_path):
    """--tables-only on hand-written reports: mean ± std, paired t-test against the best baseline, paper column."""
    from scipy.stats import ttest_rel

    spec = {"name": "fake", "datasets": ["toy"], "models": ["LightGCN"], "sparsities": [0.8, 0.9], "seeds": [1, 2, 3],
            "methods": ["es", "mr", "bet", {"label": "bet-random", "method": "bet", "config": {"bet_selection": "random"}},
                        {"label": "esapn-none", "method": "esapn", "config": {"esapn_budget": "none"}}],
            "output_root": str(tmp_path / "runs"), "results_dir": str(tmp_path / "results"),
            "paper_source": "made-up numbers.", "paper": {"toy": {"LightGCN": {"bet": {0.8: {"R@20": 0.5}}}}}}
    path = tmp_path / "grids" / "fake.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(spec))
    g = load_grid(path)
    rng = np.random.default_rng(0)
    values = {}
    for cell in grid_cells(g):
        if cell.sparsity == 0.9 and cell.seed > 1 and cell.spec.label != "es":
            continue  # at 0.9 only seed 1 for mr/bet: no paired test there
        base = {"es": 0.20, "mr": 0.10, "bet": 0.25, "bet-random": 0.40, "esapn-none": 0.9}[cell.spec.label]
        r20 = base + rng.uniform(0, 0.02)
        values[cell.spec.label, cell.sparsity, cell.seed] = r20
        _fake_report(cell, r20, r20 / 2, budget_applied=cell.spec.label != "esapn-none")
    # a sibling grid: the same es cells (counted once) and a bet cell with other settings (shown apart)
    sibling = {**spec, "name": "other", "methods": ["es", {"label": "bet", "method": "bet",
                                                          "config": {"bet_iterations": 20}}], "paper": None,
               "output_root": str(tmp_path / "runs-other")}
    (path.parent / "other.yaml").write_text(yaml.safe_dump(sibling))
    proc = _run(f"--grid={path}", "--tables-only")
    assert proc.returncode == 0, proc.stderr
    assert "shown as bet@other" in proc.stderr
    md = (tmp_path / "results" / "toy.md").read_text()
    rows = _csv_rows(tmp_path / "results" / "toy.csv")
    assert len(rows) == len(values)
    es = [values["es", 0.8, k] for k in (1, 2, 3)]
    assert f"{np.mean(es):.4f} ± {np.std(es, ddof=1):.4f}" in md
    valid = [v / 2 + 0.1 for v in es]  # the validation NDCG@20 column, before from / conv. / seeds
    assert f"| {np.mean(valid):.4f} ± {np.std(valid, ddof=1):.4f} | 1 | – | 3/3 |" in md
    bet = [values["bet", 0.8, k] for k in (1, 2, 3)]
    # the rival is es (best non-BET mean among methods that met the budget), not bet-random or esapn-none
    p = ttest_rel(bet, es).pvalue
    assert f"| 0.8 | es | 3 | {np.mean(bet) - np.mean(es):+.4f} | {p:.4f} |" in md
    assert "| 0.9 | es | 1 |" in md and "n/a" in md
    # a run without a budget is marked, never bold and never the rival, although its numbers are the highest
    assert "| esapn-none ‡ | 0.8 | 0.8000 | 0." in md and "‡ budget not applied" in md
    assert "**0.9" not in md
    assert {r["budget_applied"] for r in rows if r["method"] == "esapn-none"} == {"False"}
    assert "R@20 paper" in md and "0.5000" in md and "Paper columns: made-up numbers." in md and ".." not in md
    assert "| mr | 0.9 | 0.9000 |" in md and "| 1/3 |" in md
    assert "| es | 0.8 | 0.8000 |" in md and "| 3/3 |" in md  # not 3/6: the sibling's es cells are the same
    assert "| bet@other | 0.8 | – |" in md and "| 0/3 |" in md
    # run folders are not in git: with one gone, its row is kept from the CSV the last build wrote
    gone = next(c for c in grid_cells(g) if c.spec.label == "es" and c.sparsity == 0.8 and c.seed == 2)
    shutil.rmtree(gone.dir)
    proc = _run(f"--grid={path}", "--tables-only")
    assert proc.returncode == 0, proc.stderr
    assert _csv_rows(tmp_path / "results" / "toy.csv") == rows
    md2 = (tmp_path / "results" / "toy.md").read_text()
    assert "1 of the finished cells have no run folder here" in md2
    assert f"{np.mean(es):.4f} ± {np.std(es, ddof=1):.4f}" in md2 and f"{p:.4f} |" in md2
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in proc.stdout
    else:
        assert (tmp_path / "results" / "toy.png").stat().st_size > 10_000


def test_the_picture_draws_bet_and_the_other_methods_and_leaves_bets_variants_to_the_tables():
    base = {"es": "es", "bet": "bet", "bet@1": "bet", "bet-warm": "bet", "es-warm": "es", "sseds": "sseds"}
    groups = {(label, 0.9): {"base": method} for label, method in base.items()}
    drawn, hidden = plotted_labels(groups, list(base))
    assert drawn == ["es", "bet", "es-warm", "sseds"] and hidden == ["bet@1", "bet-warm"]
    # a grid of BET's variants alone (no default `bet` row) is drawn whole
    only_variants = {k: v for k, v in groups.items() if k[0] in ("bet-warm", "bet@1")}
    assert plotted_labels(only_variants, ["bet-warm", "bet@1"]) == (["bet-warm", "bet@1"], [])


def test_the_picture_gives_every_method_its_own_colour_and_says_how_many_seeds():
    from recbole_bet.grid.tables import line_styles, seed_count

    import matplotlib

    tab10 = list(matplotlib.colormaps["tab10"].colors)
    others = [f"m{i}" for i in range(13)]  # the LightGCN panel's twelve baselines and more
    styles = line_styles(others, tab10 + ["black"])  # a style cycle that holds black
    assert styles["bet"] == ("black", "o")
    colours = [matplotlib.colors.to_hex(styles[label][0]) for label in others]
    assert len(set(colours)) == 13 and "#000000" not in colours  # no colour repeats, none is BET's
    assert {styles[label][1] for label in others} == {"o"}
    many = line_styles([f"m{i}" for i in range(25)], tab10)
    assert len(set(many.values())) == 26  # past 18 labels a colour repeats, with another marker
    assert seed_count([3, 3, 3]) == "3" and seed_count([2, 3, 2]) == "2-3"


def test_wins_ties_losses():
    # BET vs two baselines over paired seeds: clearly ahead of "a", clearly behind "b" at one sparsity, level at another
    groups = {}
    for label, s, values in (("bet", 0.9, [0.30, 0.31, 0.32]), ("a", 0.9, [0.20, 0.21, 0.215]),
                             ("b", 0.9, [0.40, 0.41, 0.425]), ("bet", 0.8, [0.30, 0.31, 0.32]),
                             ("a", 0.8, [0.31, 0.30, 0.32]), ("b", 0.8, [0.29, 0.33, 0.31])):
        rows = [{"seed": k, "test_recall@20": v} for k, v in enumerate(values)]
        groups[label, s] = {"rows": rows, "seeds": dict(enumerate(rows)), "budget_applied": True}
    groups["bet-x", 0.9] = dict(groups["a", 0.9], base="bet")  # a BET variant is no baseline
    tally = wins_ties_losses(groups, [0.8, 0.9], ["bet", "a", "b", "bet-x"])
    assert "bet-x" not in tally
    assert (tally["a"]["win"], tally["a"]["tie"], tally["a"]["loss"]) == (1, 1, 0)
    assert (tally["b"]["win"], tally["b"]["tie"], tally["b"]["loss"]) == (0, 1, 1)


def test_variants_against_bet_pair_seeds_on_validation_and_test():
    # a BET variant with one seed more than bet: only the paired seeds count; baselines and @1 rows are left out
    groups = {}
    for label, base, valid, test, retrain in (
            ("bet", "bet", [0.30, 0.31, 0.32], [0.28, 0.29, 0.30], [100, 200, 300]),
            ("bet-x", "bet", [0.31, 0.33, 0.33, 0.9], [0.28, 0.28, 0.31, 0.9], [10, 20, 30, 40]),
            ("bet-x@1", "bet", [0.5, 0.5, 0.5], [0.5, 0.5, 0.5], [1, 1, 1]),
            ("es", "es", [0.2, 0.2, 0.2], [0.2, 0.2, 0.2], [None, None, None])):
        rows = [{"seed": k, "valid_ndcg@20": v, "test_recall@20": t, "retrain_s": r}
                for k, (v, t, r) in enumerate(zip(valid, test, retrain))]
        groups[label, 0.9] = {"rows": rows, "seeds": dict(enumerate(rows)), "base": base, "budget_applied": True}
    [entry] = variants_against_bet(groups, [0.9], ["bet", "bet-x", "bet-x@1", "es"])
    assert entry["label"] == "bet-x" and entry["n"] == 3
    assert entry["delta_valid"] == pytest.approx((0.01 + 0.02 + 0.01) / 3)
    assert entry["delta_test"] == pytest.approx(0.0)
    assert entry["p_valid"] == pytest.approx(ttest_rel([0.31, 0.33, 0.33], [0.30, 0.31, 0.32]).pvalue)
    assert (entry["retrain_s"], entry["bet_retrain_s"]) == (pytest.approx(20), pytest.approx(200))


def test_significance_picks_the_best_baseline_and_pairs_its_seeds():
    # the rival is the budgeted non-BET label with the best mean over all its seeds; Δ and p use the paired seeds
    groups = {}
    for label, base, applied, test in (("bet", "bet", True, [0.30, 0.29]),
                                       ("es", "es", True, [0.28, 0.28, 0.50]),
                                       ("full", "full", False, [0.9, 0.9, 0.9]),
                                       ("bet-x", "bet", True, [0.8, 0.8, 0.8])):
        rows = [{"seed": k, "test_recall@20": t, "test_ndcg@20": t / 2} for k, t in enumerate(test)]
        groups[label, 0.9] = {"rows": rows, "seeds": dict(enumerate(rows)), "base": base, "budget_applied": applied,
                              "stats": {m: (sum(r[f"test_{m}"] for r in rows) / len(rows), None)
                                        for m in ("recall@20", "ndcg@20")}}
    [entry] = significance(groups, [0.9], ["bet", "es", "full", "bet-x"])
    assert entry["rival"] == "es" and entry["n"] == 2
    assert entry["delta_recall@20"] == pytest.approx(0.015)  # (0.02 + 0.01) / 2, not 0.295 - 0.3533
    assert entry["recall@20"] == pytest.approx(ttest_rel([0.30, 0.29], [0.28, 0.28]).pvalue)
    assert entry["delta_ndcg@20"] == pytest.approx(0.0075)


def test_bet_at_1_rows_only_where_the_fittest_action_trained_to_the_end(tmp_path):
    """``bet@1`` is the fittest action's full retraining; under successive halving that action may have been stopped
    after a short round, so a halving cell gives no ``@1`` row."""
    from recbole_bet.grid.rows import collect

    spec = {"name": "fake", "datasets": ["toy"], "models": ["LightGCN"], "sparsities": [0.9], "seeds": [1],
            "methods": ["bet", {"label": "bet-halving", "method": "bet",
                                "config": {"bet_retrain_schedule": "halving"}}],
            "output_root": str(tmp_path / "runs"), "results_dir": str(tmp_path / "results")}
    path = tmp_path / "fake.yaml"
    path.write_text(yaml.safe_dump(spec))
    g = load_grid(path)
    for cell in grid_cells(g):
        _fake_report(cell, 0.3, 0.3)
        report = json.loads(cell.report_path.read_text())
        first = {"kept_params": 90, "valid": {"ndcg@20": 0.2}, "test": {"recall@20": 0.25}}
        # fitness 3 > 2 > 1 against validation quality 0.30 < 0.32 > 0.31: Spearman -0.5
        retrained = [dict(first, fitness=f, valid_quality=q) for f, q in ((3, 0.30), (2, 0.32), (1, 0.31))]
        report.update(full_params=1000, search={"retrained": retrained,
                                                "retrain_schedule": "halving" if "halving" in cell.spec.label
                                                else "top_k"},
                      sizes={"user_share": 0.95, "users": {"mean": 33.8}, "items": {"mean": 1.0},
                             "pair_shared_mean": 1.0})
        cell.report_path.write_text(json.dumps(report))
    rows, expected = collect([g], "toy")
    assert sorted(r["method"] for r in rows) == ["bet", "bet-halving", "bet@1"]
    one = next(r for r in rows if r["method"] == "bet@1")
    assert one["test_recall@20"] == 0.25 and one["selected_from"] == 1 and one["realized_sparsity"] == 0.91
    assert ("LightGCN", "bet-halving@1", 0.9) not in expected
    # two cells, both finished: the @1 row is a second row of the bet cell, not a cell of its own
    from recbole_bet.grid.rows import n_asked, n_finished
    assert (n_finished(rows), n_asked(expected)) == (2, 2)
    # the chosen model's sizes and the probe correlation stay in the CSV (run folders are not committed); the @1
    # row has neither (the report describes the chosen action), nor has halving a correlation (unequal rounds)
    bet = next(r for r in rows if r["method"] == "bet")
    assert (bet["user_share"], bet["users_mean_size"], bet["items_mean_size"], bet["pair_shared_mean"]) == (
        0.95, 33.8, 1.0, 1.0)
    assert bet["probe_spearman"] == -0.5 and bet["selected_from"] == 3
    assert one["user_share"] is None and one["probe_spearman"] is None
    assert next(r for r in rows if r["method"] == "bet-halving")["probe_spearman"] is None


def test_a_columns_choice_counts_as_one_more_training_the_model_was_chosen_from(tmp_path):
    """bet_retrain_columns: choose retrains the chosen action once more (its largest entries): the final model is
    chosen among top-k + 1 trainings; bet@1 stays the fittest action's one training."""
    from recbole_bet.grid.rows import collect, n_asked, n_finished

    spec = {"name": "fake", "datasets": ["toy"], "models": ["LightGCN"], "sparsities": [0.9], "seeds": [1],
            "methods": [{"label": "bet-choose", "method": "bet", "config": {"bet_retrain_columns": "choose"}}],
            "output_root": str(tmp_path / "runs"), "results_dir": str(tmp_path / "results")}
    path = tmp_path / "fake.yaml"
    path.write_text(yaml.safe_dump(spec))
    (cell,) = grid_cells(load_grid(path))
    _fake_report(cell, 0.3, 0.3)
    report = json.loads(cell.report_path.read_text())
    first = {"kept_params": 90, "valid": {"ndcg@20": 0.2}, "test": {"recall@20": 0.25}}
    second = {"kept_params": 90, "valid": {"ndcg@20": 0.22}, "test": {"recall@20": 0.24}}
    report.update(full_params=1000, sizes={"user_share": 0.7}, search={
        "retrained": [dict(first, fitness=3, valid_quality=0.2), dict(second, fitness=2, valid_quality=0.22)],
        "chosen": 1, "retrain_schedule": "top_k",
        "columns_choice": {"kept": "magnitude", "prefix_valid_quality": 0.22,
                           "magnitude": {"valid": {"ndcg@20": 0.31}, "valid_quality": 0.31}}})
    cell.report_path.write_text(json.dumps(report))
    rows, expected = collect([load_grid(path)], "toy")
    by_method = {r["method"]: r for r in rows}
    assert by_method["bet-choose"]["selected_from"] == 3 and by_method["bet-choose@1"]["selected_from"] == 1
    # @prefix: the run without the choice, i.e. the best of the top actions with their first columns
    prefix = by_method["bet-choose@prefix"]
    assert (prefix["selected_from"], prefix["valid_ndcg@20"], prefix["test_recall@20"]) == (2, 0.22, 0.24)
    assert prefix["user_share"] == 0.7 and by_method["bet-choose@1"]["user_share"] is None  # same sizes as chosen
    assert prefix["output_dir"].endswith("#@prefix") and n_finished(rows) == n_asked(expected) == 1


def test_the_pretraining_lock_makes_a_second_run_wait(tmp_path):
    """recbole_bet.files.exclusive_lock, which recbole_bet.pretrain holds while it trains: cells of a grid that
    share a pretraining wait for the first instead of training it again (tests/test_grid_ray.py runs two)."""
    from recbole_bet.files import exclusive_lock

    lock = tmp_path / "model.pt.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom recbole_bet.files import exclusive_lock\n"
                               f"with exclusive_lock({str(lock)!r}) as held:\n"
                               "    print(held, flush=True)\n    time.sleep(1.5)\n"],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "True"
    start, waited = time.monotonic(), []
    with exclusive_lock(lock, on_wait=lambda: waited.append(holder.poll())) as held:
        assert held and time.monotonic() - start > 1.0  # not before the holder's block ended
    assert waited == [None]  # told to wait while the holder still ran
    holder.wait()
    with exclusive_lock(tmp_path / "no-such-folder" / "x.lock") as held:  # no lock possible: run unlocked
        assert held is False


def test_an_interrupted_bet_cell_parked_in_the_results_resumes_in_a_fresh_clone(tmp_path):
    from conftest import run_python

    runs, results = tmp_path / "runs", tmp_path / "results"
    spec = yaml.safe_load(TINY.read_text())
    spec.update(name="parking", methods=["bet"], output_root=str(runs), results_dir=str(results))
    spec["config"] = {**spec.get("config", {}), "bet_iterations": 3, "bet_candidates": 4, "bet_retrain_top_k": 1,
                      "pretrain_cache_dir": str(tmp_path / "cache")}
    path = tmp_path / "parking.yaml"
    path.write_text(yaml.safe_dump(spec))
    (cell,) = grid_cells(load_grid(path, workdir=REPO))
    # the cell as the grid runs it, killed at its second checkpoint (the second search iteration)
    killed = run_python("tests/kill_runner.py", "checkpoint", "2", *cell.run_args())
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert cell_state(cell) == "resume"

    parked = _run(f"--grid={path}", "--park")
    assert parked.returncode == 0, parked.stderr[-2000:]
    where = results / "parked" / "parking" / cell.id
    assert "1 interrupted cell(s) parked" in parked.stdout and (where / "checkpoint.pt").is_file()
    assert (where / "checkpoint.pt").read_bytes() == (cell.dir / "checkpoint.pt").read_bytes()
    assert not (runs / "logs").exists()  # parking runs nothing

    shutil.rmtree(runs)  # a fresh clone: the run folder is gone, the parked checkpoint was committed
    assert cell_state(cell) == "parked"
    dry = _run(f"--grid={path}", "--dry-run")
    assert "would resume from the checkpoint parked in" in _status_line(dry.stdout, cell.id)
    resumed = _run(f"--grid={path}")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr[-3000:]
    line = _status_line(resumed.stdout, cell.id)
    assert "done (resumed)" in line and "started over" not in line
    info = json.loads((cell.dir / "cell.json").read_text())
    assert info["resumed"] is True
    report = json.loads((cell.dir / "report.json").read_text())
    assert [it["t"] for it in report["search"]["iterations"]] == [0, 1, 2]
    assert not (results / "parked").exists()  # finished: the parked copy (and its empty folders) are gone
    again = _run(f"--grid={path}", "--park")
    assert again.returncode == 0 and "no interrupted BET cell" in again.stdout


def test_reuse_search_adds_choose_to_finished_bet_cells_and_their_prefix_rows(tmp_path):
    """grid --reuse-search: a finished BET cell that kept first columns, in a grid that now asks for
    bet_retrain_columns: choose (the default), runs once more with --bet_reuse_run on its folder (its search kept);
    cell.json adds both runs' wall time, the tables gain the @prefix row (the run as it was), and a second pass has
    nothing to do. A cell whose run refuses stays as it was."""
    from recbole_bet.grid.cells import reusable

    runs, results = tmp_path / "runs", tmp_path / "results"
    spec = {**yaml.safe_load(TINY.read_text()), "methods": ["es", "bet"], "output_root": str(runs),
            "results_dir": str(results)}
    tiny_config = dict(spec["config"])
    spec["config"] = {**tiny_config, "bet_retrain_columns": "prefix"}  # a cell run before choose was the default
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(spec))
    first = _run(f"--grid={path}", timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr[-3000:]
    es, bet = grid_cells(load_grid(path))
    before = json.loads((bet.dir / "report.json").read_text())
    wall = json.loads((bet.dir / "cell.json").read_text())["wall_s_total"]
    assert not reusable(bet) and not reusable(es)  # the grid still asks for first columns
    # a grid asking for choose with retraining from scratch: the run refuses and the cell stays as it was
    spec["config"] = {**tiny_config, "bet_retrain_init": "scratch"}
    path.write_text(yaml.safe_dump(spec))
    assert reusable(grid_cells(load_grid(path))[1])
    refused = _run(f"--grid={path}", "--reuse-search")
    assert refused.returncode == 1 and "FAILED (exit 2)" in _status_line(refused.stdout, "/bet/0.9/")
    assert "bet_reuse_run adds trainings to a finished BET run" in refused.stderr
    assert json.loads((bet.dir / "report.json").read_text()) == before
    assert json.loads((bet.dir / "cell.json").read_text())["wall_s_total"] == wall
    spec["config"] = tiny_config  # the default, choose
    path.write_text(yaml.safe_dump(spec))
    es, bet = grid_cells(load_grid(path))
    assert reusable(bet) and not reusable(es)
    dry = _run(f"--grid={path}", "--reuse-search", "--dry-run")
    assert "would add choose's training" in _status_line(dry.stdout, "/bet/0.9/") and \
        "skipped" in _status_line(dry.stdout, "/es/0.9/")
    second = _run(f"--grid={path}", "--reuse-search", timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr[-3000:]
    assert "search reused" in _status_line(second.stdout, "/bet/0.9/")
    after = json.loads((bet.dir / "report.json").read_text())
    assert after["search"]["retrained"] == before["search"]["retrained"] and after["search"]["columns_choice"]
    info = json.loads((bet.dir / "cell.json").read_text())
    assert info["args"] == bet.run_args() and "--bet_retrain_columns=prefix" in info["reused"]["args_before"]
    assert info["wall_s_total"] == pytest.approx(wall + info["reused"]["wall_s"], abs=1e-3)
    rows = {r["method"]: r for r in _csv_rows(results / "ml-100k.csv")}
    assert sorted(rows) == ["bet", "bet@1", "bet@prefix", "es"]
    chosen = before["search"]["retrained"][before["search"]["chosen"]]
    assert float(rows["bet@prefix"]["test_recall@20"]) == chosen["test"]["recall@20"]
    assert float(rows["bet@prefix"]["test_recall@20"]) == before["test"]["recall@20"]  # the run as it was
    assert rows["bet"]["selected_from"] == str(len(before["search"]["retrained"]) + 1)
    assert not reusable(bet)
    third = _run(f"--grid={path}", "--reuse-search")
    assert "skipped" in _status_line(third.stdout, "/bet/0.9/") and third.returncode == 0


def test_reuse_from_extends_another_grids_finished_bet_cells(tmp_path):
    """A label with `reuse_from: {grid, label}` runs each new cell with --bet_reuse_run on that grid's finished cell
    of the same dataset, model, sparsity and seed (here: bet_retrain_pick=fittest_and_anchors on a fittest run, which
    adds the es-users anchor the quick profile's search left out of its top 1); cell.json names the source and its
    wall time counts the source's. Without the source on disk the cell would run afresh."""
    runs, results = tmp_path / "runs", tmp_path / "results"
    base = {**yaml.safe_load(TINY.read_text()), "config": {"epochs": 2, "bet_retrain_top_k": 1},
            "output_root": str(runs / "first"), "results_dir": str(results)}
    first = tmp_path / "first.yaml"
    first.write_text(yaml.safe_dump({**base, "name": "first", "methods": ["bet"]}))
    second = tmp_path / "second.yaml"
    second.write_text(yaml.safe_dump({**base, "name": "second", "output_root": str(runs / "second"), "methods": [
        {"label": "bet-anchors", "method": "bet", "config": {"bet_retrain_pick": "fittest_and_anchors"},
         "reuse_from": {"grid": "first", "label": "bet"}}]}))
    (cell,) = grid_cells(load_grid(second))
    assert cell.reuse_source == runs / "first" / "ml-100k" / "LightGCN" / "bet" / "0.9" / "seed2020"
    assert cell_state(cell) == "new"  # no source yet
    done = _run(f"--grid={first}", timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert cell_state(cell) == "extend"
    dry = _run(f"--grid={second}", "--dry-run")
    assert "would extend the finished run in" in _status_line(dry.stdout, cell.id) and "--bet_reuse_run=" in dry.stdout
    cell.dir.mkdir(parents=True)  # what a failed extension leaves: deleted, then the cell extends all the same
    (cell.dir / "stale.txt").write_text("left by a failed attempt")
    assert cell_state(cell) == "rerun"
    dry = _run(f"--grid={second}", "--dry-run")
    assert "would extend the finished run in" in _status_line(dry.stdout, cell.id) and "leftover" in dry.stdout
    assert "--bet_reuse_run=" in dry.stdout
    extended = _run(f"--grid={second}", timeout=600)
    assert extended.returncode == 0, extended.stdout + extended.stderr[-3000:]
    assert "extended" in _status_line(extended.stdout, cell.id) and not (cell.dir / "stale.txt").exists()
    source = json.loads((cell.reuse_source / "report.json").read_text())
    report = json.loads((cell.dir / "report.json").read_text())
    assert report["search"]["reused_from"] == shown(cell.reuse_source, cell.grid.workdir)
    assert [e["t"] for e in report["search"]["retrained"]][:1] == [e["t"] for e in source["search"]["retrained"]]
    assert len(report["search"]["retrained"]) == 2 and report["search"]["retrained"][1]["t"] == 0  # the anchor
    info = json.loads((cell.dir / "cell.json").read_text())
    source_wall = json.loads((cell.reuse_source / "cell.json").read_text())["wall_s_total"]
    assert info["args"] == cell.run_args() and info["reused"]["wall_s_from"] == source_wall
    assert info["wall_s_total"] == pytest.approx(source_wall + info["wall_s"], abs=1e-3)
    assert "skipped" in _status_line(_run(f"--grid={second}").stdout, cell.id)


def test_reuse_from_must_name_a_grid_and_label_of_bet_cells(tmp_path):
    path = tmp_path / "g.yaml"
    for methods, message in (([{"method": "es", "reuse_from": {"grid": "a", "label": "es"}}], "method es has none"),
                             ([{"method": "bet", "reuse_from": "a/bet"}], "must be {grid: NAME, label: LABEL}")):
        path.write_text(yaml.safe_dump({**yaml.safe_load(TINY.read_text()), "methods": methods}))
        with pytest.raises(GridError, match=re.escape(message)):
            load_grid(path)


def test_a_bet_cell_whose_checkpoint_is_refused_starts_over(tmp_path):
    """A damaged checkpoint (the run exits 2 on --resume) is deleted with its folder and the cell runs from scratch;
    cell.json records a fresh attempt, not a resumed one."""
    spec = yaml.safe_load(TINY.read_text())
    spec.update(name="refused", methods=["bet"], output_root=str(tmp_path / "runs"), results_dir=str(tmp_path / "res"))
    spec["config"] = {**spec.get("config", {}), "bet_iterations": 2, "bet_candidates": 4, "bet_retrain_top_k": 1,
                      "epochs": 2}
    path = tmp_path / "refused.yaml"
    path.write_text(yaml.safe_dump(spec))
    (cell,) = grid_cells(load_grid(path, workdir=REPO))
    cell.dir.mkdir(parents=True)
    (cell.dir / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert cell_state(cell) == "resume"
    done = _run(f"--grid={path}", timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    line = _status_line(done.stdout, cell.id)
    assert "resume refused, started over" in line and "done" in line
    info = json.loads((cell.dir / "cell.json").read_text())
    assert info["resumed"] is False and not (cell.dir / "checkpoint.pt").exists()
    assert json.loads((cell.dir / "report.json").read_text())["search"]["iterations"]


def test_adopt_moves_a_screens_finished_cells_to_the_default_label(tmp_path):
    """A screened lever becomes the default without training again: first the default's old cells move to a grid
    of their own (``--adopt=main:bet --as=bet-fittest``), then the screen's cells become ``bet``; the CSV rows keep
    every number, the run folders move with a note in cell.json, and a fresh clone (no run folders) keeps them."""
    grids = tmp_path / "grids"
    grids.mkdir()
    common = {"datasets": ["toy"], "sparsities": [0.9], "seeds": [1, 2], "results_dir": str(tmp_path / "results")}
    specs = {
        "main": {"models": ["LightGCN", "NGCF"], "methods": ["es", "bet"]},
        "screen": {"models": ["NGCF"], "methods": [{"label": "bet-lever", "method": "bet",
                                                    "config": {"bet_retrain_pick": "fittest_and_anchors"}}]},
        "old": {"models": ["NGCF"], "methods": [{"label": "bet-fittest", "method": "bet",
                                                 "config": {"bet_retrain_pick": "fittest"}}]},
    }
    loaded = {}
    for name, spec in specs.items():
        (grids / f"{name}.yaml").write_text(yaml.safe_dump({**common, **spec, "name": name,
                                                            "output_root": str(tmp_path / "runs" / name)}))
        loaded[name] = load_grid(grids / f"{name}.yaml")
    value = {}
    for name in ("main", "screen"):
        for k, cell in enumerate(grid_cells(loaded[name])):
            r20 = 0.2 + 0.01 * k + (0.1 if name == "screen" else 0.0)
            value[name, cell.model, cell.spec.label, cell.seed] = r20
            _fake_report(cell, r20, r20 / 2)
            if cell.spec.method != "bet":
                continue
            report = json.loads(cell.report_path.read_text())
            report.update(full_params=1000, search={"retrained": [
                {"kept_params": 90, "valid": {"ndcg@20": 0.2}, "test": {"recall@20": r20 - 0.05}}]})
            cell.report_path.write_text(json.dumps(report))
    for name in ("main", "screen"):
        assert _run(f"--grid={grids / name}.yaml", "--tables-only").returncode == 0
    csv_path = tmp_path / "results" / "toy.csv"
    before = _csv_rows(csv_path)
    assert len(before) == 4 + 4 + 4 + 2 + 2  # es, bet and bet@1 on two models and seeds; bet-lever and its @1 on one

    refused = _run(f"--grid={grids / 'main'}.yaml", "--adopt=screen:bet-lever", "--as=bet")
    assert refused.returncode == 2 and "already has a row" in refused.stderr
    assert _csv_rows(csv_path) == before
    assert _run(f"--grid={grids / 'main'}.yaml", "--adopt=screen:bet-lever").returncode == 2  # no such label
    dry = _run(f"--grid={grids / 'old'}.yaml", "--adopt=main:bet", "--as=bet-fittest", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("would move") == 2 and "2 cell(s) of main:bet match no cell" in dry.stdout
    assert _csv_rows(csv_path) == before

    out = _run(f"--grid={grids / 'old'}.yaml", "--adopt=main:bet", "--as=bet-fittest")
    assert out.returncode == 0, out.stderr
    assert "main.yaml still lists label bet" in out.stdout
    screen_cell = next(c for c in grid_cells(loaded["screen"]) if c.seed == 1)
    screen_cell.log_err().parent.mkdir(parents=True, exist_ok=True)
    screen_cell.log_err().write_text("its stderr\n")
    out = _run(f"--grid={grids / 'main'}.yaml", "--adopt=screen:bet-lever", "--as=bet")
    assert out.returncode == 0, out.stderr
    assert not screen_cell.log_err().exists()
    assert (tmp_path / "runs" / "main" / "logs" / "toy__NGCF__bet__0.9__seed1.err").read_text() == "its stderr\n"
    assert "screen.yaml still lists label bet-lever" in out.stdout
    after = {(r["model"], r["method"], r["seed"]): r for r in _csv_rows(csv_path)}
    for seed in (1, 2):
        lever, default = after["NGCF", "bet", str(seed)], after["NGCF", "bet-fittest", str(seed)]
        assert float(lever["test_recall@20"]) == value["screen", "NGCF", "bet-lever", seed]
        assert float(default["test_recall@20"]) == value["main", "NGCF", "bet", seed]
        assert (lever["grid"], default["grid"]) == ("main", "old")
        assert lever["output_dir"].endswith(f"main/toy/NGCF/bet/0.9/seed{seed}")
        assert after["NGCF", "bet@1", str(seed)]["output_dir"] == lever["output_dir"] + "#@1"
        assert float(after["NGCF", "bet-fittest@1", str(seed)]["test_recall@20"]) == \
            value["main", "NGCF", "bet", seed] - 0.05
        assert float(after["LightGCN", "bet", str(seed)]["test_recall@20"]) == value["main", "LightGCN", "bet", seed]
        assert ("NGCF", "bet-lever", str(seed)) not in after
    moved = tmp_path / "runs" / "main" / "toy" / "NGCF" / "bet" / "0.9" / "seed1"
    info = json.loads((moved / "cell.json").read_text())
    assert info["relabelled_from"]["grid"] == "screen" and info["relabelled_from"]["label"] == "bet-lever"
    assert not (tmp_path / "runs" / "screen" / "toy" / "NGCF" / "bet-lever" / "0.9" / "seed1").exists()
    # its recorded arguments are the screen's by design: said, not warned about as a stale cell
    line = _status_line(_run(f"--grid={grids / 'main'}.yaml", "--dry-run", "--only=*/NGCF/bet/*/seed1").stdout,
                        "toy/NGCF/bet/0.9/seed1")
    assert "adopted from screen:bet-lever" in line and "WARNING" not in line
    # a cell that ran with other arguments than the grid asks now (and was not adopted) is warned about
    es_cell = next(c for c in grid_cells(loaded["main"]) if (c.model, c.spec.label, c.seed) == ("LightGCN", "es", 1))
    (es_cell.dir / "cell.json").write_text(json.dumps({"args": es_cell.run_args() + ["--es_user_share=1"]}))
    line = _status_line(_run(f"--grid={grids / 'main'}.yaml", "--dry-run", "--only=*/LightGCN/es/*/seed1").stdout,
                        "toy/LightGCN/es/0.9/seed1")
    assert "WARNING: ran with other arguments" in line and "--es_user_share=1" in line

    # once the screen's label is gone, the tables of a clone without run folders keep the adopted rows
    (grids / "screen.yaml").unlink()
    shutil.rmtree(tmp_path / "runs")
    assert _run(f"--grid={grids / 'main'}.yaml", "--tables-only").returncode == 0
    kept = {(r["model"], r["method"], r["seed"]): r for r in _csv_rows(csv_path)}
    assert kept == {k: v for k, v in after.items() if v["grid"] != "screen"}
    md = (tmp_path / "results" / "toy.md").read_text()
    lever = [value["screen", "NGCF", "bet-lever", k] for k in (1, 2)]
    assert f"{np.mean(lever):.4f} ± {np.std(lever, ddof=1):.4f}" in md and "bet-fittest" in md
