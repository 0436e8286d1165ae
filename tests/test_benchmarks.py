"""The benchmark scripts run and write what docs/performance.md cites (no timing is asserted)."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_mask_overhead_writes_its_tables(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/mask_overhead.py", "--models=NeuMF", "--repeats=1",
                           f"--out={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ratios = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(ratios) == {"NeuMF"} and set(ratios["NeuMF"]) == {"stock_adam", "fused_adam"}
    details = json.loads((tmp_path / "mask_overhead-ml-100k.json").read_text())
    neumf = details["epochs"]["NeuMF"]
    assert set(neumf["masking_modes"].values()) == {"lookup"}  # NeuMF reads its tables through the modules
    assert neumf["sizes"] == "mixed" and neumf["batch_size"] > 0
    for opt in ("stock_adam", "fused_adam"):
        assert neumf[opt]["stock_epoch_s"] > 0 and neumf[opt]["masked_epoch_s"] > 0
        assert len(neumf[opt]["all_s"]["stock"]) == 1
    assert all(v > 0 for v in details["sqrt"].values() if isinstance(v, float))
    assert set(details["adam_step"]) == {f"{k}_{g}_ms" for k in ("foreach", "single", "fused")
                                         for g in ("dense", "90pct_zero")}
    table = (tmp_path / "mask_overhead-ml-100k.md").read_text()
    assert "| NeuMF | mixed |" in table and "fused adam" in table and "python benchmarks/mask_overhead.py" in table


def test_small_data_speed_writes_its_tables(tmp_path):
    """The NeuMF block sizes score alike (the table's NDCG column and max abs diff), and the tables are written."""
    proc = subprocess.run([sys.executable, "benchmarks/small_data_speed.py", "--repeats=1", "--catalogue_items=3000",
                           "--trim_epochs=2",
                           f"--out={tmp_path / 'speed'}"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads((tmp_path / "speed.json").read_text())
    assert len(set(out["neumf_validation"]["valid_ndcg@20"].values())) == 1
    assert all(diff < 1e-4 for diff in out["large_catalogue"]["max_abs_diff"].values())
    table = (tmp_path / "speed.md").read_text()
    assert "| 2^18 |" in table and "mode around forward" in table and "3,000-item catalogue" in table
    for arm in out["trimmed_trainings"].values():  # the trimmed training reaches the full-width weights
        assert arm["columns"] < 128 and arm["max_abs_weight_diff"] < 1e-4
        assert abs(arm["full_valid_ndcg@20"] - arm["trimmed_valid_ndcg@20"]) < 1e-4


def test_pair_width_writes_its_table(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/pair_width.py", "--sparsities=0.9", "--candidates=20",
                           f"--out={tmp_path / 'pairs'}"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads((tmp_path / "pairs.json").read_text())["rows"][0]
    c = row["candidates_pair_shared"]
    assert 1 <= c["10"] <= c["50"] <= c["90"] <= c["100"] <= 128 and 12 <= row["es_pair_shared_mean"] <= 13
    assert "| tied | 0.9 |" in (tmp_path / "pairs.md").read_text()


def test_cell_cost_times_the_narrow_models_and_writes_its_tables(tmp_path):
    out = tmp_path / "cost"
    proc = subprocess.run([sys.executable, "benchmarks/cell_cost.py", "--dataset=ml-100k", "--repeats=1",
                           f"--out={out}"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    entry = json.loads((tmp_path / "cost.json").read_text())["entries"][0]
    trimmed = entry["measured"]["trimmed"]
    assert sorted(trimmed, key=int) == ["16", "32", "64"] and all(t["epoch_s"] > 0 for t in trimmed.values())
    assert entry["cells_min"]["es@0.9"] < entry["cells_min"]["mr@0.9"]  # ES on 16 columns, MR at full width
    assert "`trim_columns`" in (tmp_path / "cost.md").read_text()


def test_probe_correlation_groups_cells_and_ranks_fitness_against_retrained_quality(tmp_path):
    """Per cell: Spearman of search fitness against retrained validation quality; per group: mean and range."""
    def write(label, seed, fitness, quality, batch):
        folder = tmp_path / "runs" / "ml-100k" / "LightGCN" / label / "0.9" / f"seed{seed}"
        folder.mkdir(parents=True)
        report = {"method": "bet", "dataset": "ml-100k", "model": "LightGCN", "sparsity": 0.9, "seed": seed,
                  "search": {"finetune_batch_size": batch, "finetune_steps_per_probe": 520,
                             "retrained": [{"fitness": f, "valid_quality": q} for f, q in zip(fitness, quality)]}}
        (folder / "report.json").write_text(json.dumps(report))

    write("bet", 2020, [5, 4, 3, 2, 1], [0.30, 0.29, 0.28, 0.27, 0.26], 985)  # same order: +1
    write("bet", 2021, [5, 4, 3, 2, 1], [0.26, 0.27, 0.28, 0.29, 0.30], 985)  # reversed: -1
    write("bet-b10000", 2020, [5, 4, 3, 2, 1], [0.30, 0.29, 0.28, 0.26, 0.27], 10000)  # one swap: +0.9
    es = tmp_path / "runs" / "ml-100k" / "LightGCN" / "es" / "0.9" / "seed2020"  # not a search: skipped
    es.mkdir(parents=True)
    (es / "report.json").write_text(json.dumps({"method": "es", "search": None}))
    # a results CSV: a cell whose run folder is gone (kept) and one read from its report above (not counted twice)
    results = tmp_path / "ml-100k.csv"
    head = "dataset,model,method,sparsity,seed,selected_from,probe_spearman,output_dir\n"
    results.write_text(head + "ml-100k,LightGCN,bet,0.9,2022,5,0.3,x\nml-100k,LightGCN,bet,0.9,2020,5,-0.2,y\n"
                       "ml-100k,LightGCN,es,0.9,2022,1,,z\n")
    out = tmp_path / "corr.md"
    proc = subprocess.run([sys.executable, "benchmarks/probe_correlation.py", str(tmp_path / "runs"), str(results),
                           f"--out={out}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ml-100k")]
    assert rows == [
        "| ml-100k | LightGCN | bet | – | – | 1 | +0.300 | – | 0.9/s2022: +0.30 |",
        "| ml-100k | LightGCN | bet | 985 | 520 | 2 | +0.000 | 0.0400 | 0.9/s2020: +1.00, 0.9/s2021: -1.00 |",
        "| ml-100k | LightGCN | bet-b10000 | 10000 | 520 | 1 | +0.900 | 0.0400 | 0.9/s2020: +0.90 |",
    ]


def test_probe_actions_probes_then_retrains_with_first_or_largest_columns(tmp_path):
    """One action probed, then retrained twice: with its first columns and with each row's largest pretrained
    entries; a retraining alone keeps the action's earlier probe, and both commands are listed."""
    extra = tmp_path / "extra.yaml"
    extra.write_text(f"pretrain_cache_dir: {tmp_path / 'pretrain'}\ncheckpoint_dir: {tmp_path / 'ckpt'}\n")
    out = tmp_path / "probe"
    base = [sys.executable, "benchmarks/probe_actions.py", "--model=LightGCN", "--dataset=ml-100k", "--sparsity=0.9",
            "--seed=2020", "--actions=es-users", f"--config_files=quick {extra}", f"--out={out}"]
    for more in (["--probe-seeds=0"], ["--probe-seeds=", "--retrain"],
                 ["--probe-seeds=", "--retrain", "--columns=magnitude"]):
        proc = subprocess.run(base + more, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
    entries = {e["action"]: e for e in json.loads((tmp_path / "probe.json").read_text())}
    assert set(entries) == {"es-users", "es-users+magnitude"}
    first, largest = entries["es-users"], entries["es-users+magnitude"]
    assert first["probe_seeds"] == [0] and len(first["fitness"]) == 1 and first["fitness"][0] > 0
    assert first["retrained"]["columns"] == "prefix" and largest["retrained"]["columns"] == "magnitude"
    assert largest["fitness"] == [] and largest["kept_units"] == first["kept_units"]
    assert largest["columns"] == "magnitude" and largest["pair_shared_mean"] != first["pair_shared_mean"]
    for e in (first, largest):
        assert 0 < e["retrained"]["valid"]["ndcg@20"] < 1 and 0 < e["retrained"]["test"]["recall@20"] < 1
    assert len(first["commands"]) == 2  # the probe's and the retraining's
    table = (tmp_path / "probe.md").read_text()
    assert "| es-users+magnitude |" in table and "--columns=magnitude" in table
    # an unsupported combination is refused with one line, not trained
    proc = subprocess.run(base + ["--probe-seeds=0", "--retrain", "--columns=magnitude"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "--columns=magnitude retrains warm only" in proc.stderr


def test_columns_choice_pairs_each_choose_cell_with_its_first_columns_model(tmp_path):
    """Per cell both trainings of the chosen action and the one kept; per group the kept model's gain over the
    first-columns model, paired over seeds; a cell without a choice (a run keeping first columns) is not read."""
    def write(label, seed, prefix, largest, kept, cell="gowalla-u1000"):
        folder = tmp_path / "runs" / cell / "LightGCN" / label / "0.9" / f"seed{seed}"
        folder.mkdir(parents=True)
        final = largest if kept == "magnitude" else prefix
        search = {"chosen": 0, "retrained": [{"valid": {"ndcg@20": prefix[0]}, "test": {"recall@20": prefix[1]}}]}
        if kept:
            search["columns_choice"] = {"kept": kept, "magnitude": {"valid": {"ndcg@20": largest[0]},
                                                                    "test": {"recall@20": largest[1]}}}
        report = {"method": "bet", "dataset": cell, "model": "LightGCN", "sparsity": 0.9, "seed": seed,
                  "valid": {"ndcg@20": final[0]}, "test": {"recall@20": final[1]}, "search": search}
        (folder / "report.json").write_text(json.dumps(report))

    write("bet-choose", 2020, (0.060, 0.070), (0.070, 0.080), "magnitude")
    write("bet-choose", 2021, (0.062, 0.068), (0.068, 0.077), "magnitude")
    write("bet-choose", 2022, (0.064, 0.071), (0.063, 0.075), "prefix")
    write("bet", 2020, (0.060, 0.070), None, None)  # the default: no choice made, not read
    out = tmp_path / "choice"
    proc = subprocess.run([sys.executable, "benchmarks/columns_choice.py", str(tmp_path / "runs"), f"--out={out}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "3 choose cell(s) read" in proc.stdout
    table = (tmp_path / "choice.md").read_text()
    assert "| gowalla-u1000 | LightGCN | bet-choose | 0.9 | 2022 | 0.0640 / 0.0630 | 0.0710 / 0.0750 | prefix |" in table
    group = next(line for line in table.splitlines() if line.startswith("| gowalla-u1000 | LightGCN | bet-choose | 0.9 | 3 |"))
    cells = [c.strip() for c in group.strip("|").split("|")]
    # kept - first columns: valid +0.010, +0.006, 0 (prefix kept); test +0.010, +0.009, 0
    assert cells[5] == "2/3" and cells[6] == "+0.0053" and cells[8] == "+0.0063"
    assert float(cells[7]) < 1 and float(cells[9]) < 1
    # a later run keeps the cells it read before, though their folders are gone
    import shutil
    shutil.rmtree(tmp_path / "runs" / "gowalla-u1000" / "LightGCN" / "bet-choose" / "0.9" / "seed2022")
    subprocess.run([sys.executable, "benchmarks/columns_choice.py", str(tmp_path / "runs"), f"--out={out}"],
                   cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    assert "| 2022 |" in (tmp_path / "choice.md").read_text()


def test_best_on_validation_keeps_the_row_validation_prefers_and_tests_it_against_the_baseline(tmp_path):
    """Per seed the row with the highest validation NDCG@20 (ties: the first row), its test Recall@20 paired
    against the baseline's; seeds some row lacks are not read."""
    head = "dataset,model,method,sparsity,seed,valid_ndcg@20,test_recall@20\n"
    rows = [("bet", 2020, 0.30, 0.28), ("bet", 2021, 0.31, 0.29), ("bet", 2022, 0.32, 0.30), ("bet", 2023, 0.5, 0.5),
            ("es-users-warm", 2020, 0.31, 0.27), ("es-users-warm", 2021, 0.31, 0.25), ("es-users-warm", 2022, 0.30, 0.26),
            ("es", 2020, 0.29, 0.20), ("es", 2021, 0.28, 0.21), ("es", 2022, 0.27, 0.23), ("es", 2023, 0.1, 0.1)]
    path = tmp_path / "grid.csv"
    path.write_text(head + "".join(f"ml-100k,LightGCN,{m},0.9,{k},{v},{t}\n" for m, k, v, t in rows)
                    + "ml-100k,NGCF,bet,0.9,2020,0.9,0.9\n")
    out = tmp_path / "best"
    proc = subprocess.run([sys.executable, "benchmarks/best_on_validation.py", str(path), "--model=LightGCN",
                           "--rows", "bet", "es-users-warm", "--against=es", f"--out={out}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(l for l in (tmp_path / "best.md").read_text().splitlines() if l.startswith("| 0.9 |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    # kept: es-users-warm on 2020 (0.31 > 0.30), bet on 2021 (a tie: the first row) and 2022; 2023 has no es-users-warm
    assert cells[1:4] == ["3", "es-users-warm, bet, bet", "1"]
    assert cells[4] == "0.2867" and cells[5] == "0.2900"  # (0.27 + 0.29 + 0.30) / 3, bet's (0.28 + 0.29 + 0.30) / 3
    assert cells[6] == "+0.0733" and cells[8] == "+0.0767"  # against es's 0.20, 0.21, 0.23
    assert float(cells[7]) < 0.05 and float(cells[9]) < 0.01
    missing = subprocess.run([sys.executable, "benchmarks/best_on_validation.py", str(path), "--model=NeuMF",
                              "--rows", "bet", "--against=es"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "no seed has every row" in missing.stderr
