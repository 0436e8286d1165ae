"""Reproduction harness: run a grid datasets x models x methods x sparsities x seeds, then build tables.

    python benchmarks/grid.py --grid=benchmarks/grids/ml100k-lightgcn.yaml [--only=GLOB,...] [--dry-run]
    python benchmarks/grid.py --grid=benchmarks/grids/ml100k-lightgcn.yaml --tables-only

Every cell is one ``python run_bet.py ...`` subprocess (run from the repository root) writing to
``<output_root>/<dataset>/<model>/<label>/<sparsity>/seed<seed>/``. A cell whose report.json exists is
never rerun; an interrupted BET cell (checkpoint.pt, no report.json) continues with ``--resume``; any
other leftover directory is deleted and the cell runs again. A failing cell does not stop the grid: the
failures are listed at the end (with the tail of their stderr) and the exit status is 1.

Tables: ``<results_dir>/<dataset>.csv``, ``.md`` and ``.png`` (default results_dir ``results``), built
from every grid YAML in the same folder as --grid that lists the dataset and writes its tables to the same
results_dir. A listed cell whose run folder is gone keeps its row from the <dataset>.csv already there (run
folders are not in git; the CSV is). See docs/reproduction.md.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import fnmatch
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
METRICS = ("recall@5", "ndcg@5", "recall@20", "ndcg@20")
SHORT = {"recall@5": "R@5", "ndcg@5": "N@5", "recall@20": "R@20", "ndcg@20": "N@20"}
ALIASES = {**{m: m for m in METRICS}, **{v.lower(): k for k, v in SHORT.items()}}
TIMINGS = ("pretrain", "search", "retrain", "total")
GRID_KEYS = {"name", "datasets", "models", "methods", "sparsities", "seeds", "config_files", "config",
             "output_root", "results_dir", "paper", "paper_source"}
# keys a grid sets through its axes or by itself: not allowed in `config`
RESERVED = {"model", "dataset", "method", "sparsity", "seed", "output_dir", "resume", "config_files"}
LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
CHECKPOINT = "checkpoint.pt"  # recbole_bet.methods.base.CHECKPOINT_FILENAME (not imported: keep this script light)


class GridError(Exception):
    """A grid file (or a command-line option) the user must fix: exit status 2."""


# ----------------------------------------------------------------------------------------- grid files

@dataclass
class MethodSpec:
    label: str
    method: str
    config: dict = field(default_factory=dict)


@dataclass
class Grid:
    name: str
    path: Path
    datasets: list
    models: list
    methods: list  # MethodSpec
    sparsities: list
    seeds: list
    config_files: list
    config: dict
    output_root: Path
    results_dir: Path
    paper: dict  # dataset -> model -> label -> sparsity -> metric -> value
    paper_source: str = ""


def _repo_path(value) -> Path:
    """Paths inside a grid YAML are relative to the repository root (where run_bet.py runs)."""
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else REPO / path


def _list(raw: dict, key: str, kind, path) -> list:
    value = raw.get(key)
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise GridError(f"{path}: `{key}` must be a non-empty list")
    try:
        out = [kind(v) for v in value]
    except (TypeError, ValueError):
        raise GridError(f"{path}: `{key}` has a value that is not a {kind.__name__}: {value!r}") from None
    if len(set(out)) != len(out):
        raise GridError(f"{path}: `{key}` lists a value twice: {value!r}")
    return out


def _check_config(config, where) -> dict:
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise GridError(f"{where}: `config` must be a mapping of config keys to values")
    bad = sorted(RESERVED & set(config))
    if bad:
        raise GridError(f"{where}: `config` cannot set {', '.join(bad)} (the grid's axes and paths set them)")
    for key, value in config.items():
        if "=" in cli_value(value) or not LABEL.match(str(key)):
            # RecBole ignores (with only a warning) a command-line argument with a second '='
            raise GridError(f"{where}: config {key}: {value!r} cannot be passed as --{key}=VALUE; "
                            "put it in a YAML file listed in config_files instead")
    return dict(config)


def _method_spec(entry, path) -> MethodSpec:
    if isinstance(entry, str):
        spec = MethodSpec(entry, entry)
    elif isinstance(entry, dict):
        unknown = set(entry) - {"label", "method", "config"}
        if unknown or "method" not in entry:
            raise GridError(f"{path}: a method mapping needs `method` and may have `label` and `config`; got {entry!r}")
        spec = MethodSpec(str(entry.get("label", entry["method"])), str(entry["method"]),
                          _check_config(entry.get("config"), f"{path}: method {entry.get('label', entry['method'])}"))
    else:
        raise GridError(f"{path}: each method is a name (bet) or a mapping {{label, method, config}}; got {entry!r}")
    if not LABEL.match(spec.label):
        raise GridError(f"{path}: method label {spec.label!r} must be letters, digits, '.', '_', '+' or '-'")
    return spec


def _norm_paper(paper, path) -> dict:
    if paper is None:
        return {}
    out = {}
    try:
        for dataset, models in paper.items():
            for model, labels in models.items():
                for label, sparsities in labels.items():
                    for sparsity, metrics in sparsities.items():
                        for metric, value in metrics.items():
                            key = ALIASES.get(str(metric).lower())
                            if key is None:
                                raise GridError(f"{path}: paper metric {metric!r} is not one of {', '.join(METRICS)}")
                            (out.setdefault(str(dataset), {}).setdefault(str(model), {})
                             .setdefault(str(label), {}).setdefault(float(sparsity), {}))[key] = float(value)
    except (AttributeError, TypeError, ValueError):
        raise GridError(f"{path}: `paper` must be dataset -> model -> method label -> sparsity -> metric -> number")
    return out


def load_grid(path, output_root=None, results_dir=None) -> Grid:
    path = Path(path)
    if not path.is_file():
        raise GridError(f"grid file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise GridError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise GridError(f"{path}: a grid file is a mapping (name, datasets, models, methods, ...)")
    unknown = sorted(set(raw) - GRID_KEYS)
    if unknown:
        raise GridError(f"{path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(GRID_KEYS))}")
    name = str(raw.get("name") or path.stem)
    if not LABEL.match(name):
        raise GridError(f"{path}: name {name!r} must be letters, digits, '.', '_', '+' or '-'")
    methods = [_method_spec(m, path) for m in (raw.get("methods") or [])]
    if not methods:
        raise GridError(f"{path}: `methods` must be a non-empty list")
    labels = [m.label for m in methods]
    if len(set(labels)) != len(labels):
        raise GridError(f"{path}: two methods share a label ({labels}); give each mapping its own `label`")
    sparsities = _list(raw, "sparsities", float, path)
    if any(not 0 < s < 1 for s in sparsities):
        raise GridError(f"{path}: sparsities must lie strictly between 0 and 1, got {sparsities}")
    files = raw.get("config_files") or []
    if isinstance(files, str):
        files = files.split()
    if not isinstance(files, list):
        raise GridError(f"{path}: `config_files` must be a list such as [quick] or []")
    return Grid(
        name=name, path=path.resolve(),
        datasets=_list(raw, "datasets", str, path), models=_list(raw, "models", str, path), methods=methods,
        sparsities=sparsities, seeds=_list(raw, "seeds", int, path), config_files=[str(f) for f in files],
        config=_check_config(raw.get("config"), path),
        output_root=Path(output_root).resolve() if output_root else _repo_path(raw.get("output_root") or
                                                                              f"results/runs/{name}"),
        results_dir=Path(results_dir).resolve() if results_dir else _repo_path(raw.get("results_dir") or "results"),
        paper=_norm_paper(raw.get("paper"), path), paper_source=str(raw.get("paper_source") or ""),
    )


# ---------------------------------------------------------------------------------------------- cells

def fmt_sparsity(s: float) -> str:
    return format(float(s), "g")


def cli_value(value) -> str:
    """A config value as RecBole's command line reads it back (it eval()s the text)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None or isinstance(value, (int, float)):
        return str(value)
    return repr(value)  # lists and dicts: Python literals


@dataclass
class Cell:
    grid: Grid
    dataset: str
    model: str
    spec: MethodSpec
    sparsity: float
    seed: int

    @property
    def id(self) -> str:
        return f"{self.dataset}/{self.model}/{self.spec.label}/{fmt_sparsity(self.sparsity)}/seed{self.seed}"

    @property
    def key(self) -> tuple:
        return self.dataset, self.model, self.spec.label, float(self.sparsity), self.seed

    @property
    def dir(self) -> Path:
        return self.grid.output_root / self.dataset / self.model / self.spec.label / fmt_sparsity(self.sparsity) / \
            f"seed{self.seed}"

    @property
    def dir_arg(self) -> str:
        """The output directory as run_bet.py (cwd: the repository root) is given it: relative inside the repo."""
        try:
            return str(self.dir.relative_to(REPO))
        except ValueError:
            return str(self.dir)

    @property
    def report_path(self) -> Path:
        return self.dir / "report.json"

    def run_args(self) -> list:
        """run_bet.py's arguments (without --resume)."""
        args = [f"--model={self.model}", f"--dataset={self.dataset}", f"--method={self.spec.method}",
                f"--sparsity={fmt_sparsity(self.sparsity)}", f"--seed={self.seed}", f"--output_dir={self.dir_arg}"]
        if self.grid.config_files:
            args.append(f"--config_files={' '.join(self.grid.config_files)}")
        extra = {**self.grid.config, **self.spec.config}  # the method's keys win
        args += [f"--{k}={cli_value(v)}" for k, v in extra.items()]
        return args

    def log_base(self) -> Path:
        return self.grid.output_root / "logs" / self.id.replace("/", "__")


def grid_cells(grid: Grid) -> list:
    """Order: dataset, model, seed, sparsity, method (a complete first seed comes first)."""
    return [Cell(grid, d, m, spec, s, k) for d in grid.datasets for m in grid.models for k in grid.seeds
            for s in grid.sparsities for spec in grid.methods]


def cell_state(cell: Cell) -> str:
    """done (report.json exists), resume (interrupted BET run with a checkpoint), rerun (a leftover
    directory without report: deleted first), new."""
    if cell.report_path.is_file():
        return "done"
    if cell.dir.exists():
        if cell.spec.method == "bet" and (cell.dir / CHECKPOINT).is_file():
            return "resume"
        return "rerun"
    return "new"


def _comparable_args(args) -> list:
    return [a for a in args if not a.startswith("--output_dir=")]


def stale_note(cell: Cell) -> str:
    """A finished cell whose recorded arguments differ from what the grid asks now (never rerun)."""
    path = cell.dir / "cell.json"
    try:
        recorded = json.loads(path.read_text()).get("args")
    except (OSError, ValueError):
        return ""
    if recorded is None or _comparable_args(recorded) == _comparable_args(cell.run_args()):
        return ""
    now, then = set(_comparable_args(cell.run_args())), set(_comparable_args(recorded))
    return (f"ran with other arguments (now {sorted(now - then)}, then {sorted(then - now)}); "
            f"delete {cell.dir} to rerun it")


@dataclass
class Outcome:
    status: str  # done, failed, interrupted
    seconds: float
    returncode: int | None = None
    resumed: bool = False
    stderr_tail: str = ""
    log: Path | None = None


def shown(path) -> str:
    """A path for messages: relative to the current folder when inside it, else absolute."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = ANSI.sub("", path.read_text(errors="replace"))
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


PARTIAL = "interrupted.json"  # wall seconds of earlier attempts of a cell that will be resumed


def _add_partial(cell: Cell, seconds: float) -> None:
    """An attempt ended without a report but left its directory (resumable): remember its wall time."""
    if cell.dir.is_dir():
        path = cell.dir / PARTIAL
        before = (_load_json(path) or {}).get("wall_s", 0.0)
        path.write_text(json.dumps({"wall_s": round(before + seconds, 3)}) + "\n")


def _launch(cell: Cell, args: list) -> tuple:
    base = cell.log_base()
    base.parent.mkdir(parents=True, exist_ok=True)
    out, err = base.parent / f"{base.name}.out", base.parent / f"{base.name}.err"
    command = [sys.executable, "run_bet.py", *args]
    start = time.perf_counter()
    with open(out, "w") as fo, open(err, "w") as fe:
        fe.write(f"# {shlex.join(command)}\n")
        fe.flush()
        proc = subprocess.Popen(command, cwd=REPO, stdout=fo, stderr=fe, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            code = proc.wait()
        except BaseException:  # Ctrl-C or SIGTERM: stop the cell too (its checkpoints are atomic: resumable)
            if proc.poll() is None:
                proc.terminate()  # SIGTERM: a Ctrl-C reached it already, but a background job ignores SIGINT
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            _add_partial(cell, time.perf_counter() - start)
            raise
    return code, time.perf_counter() - start, err


def _safe_rmtree(cell: Cell) -> None:
    root, target = cell.grid.output_root.resolve(), cell.dir.resolve()
    if root not in target.parents:  # never delete anything outside the grid's own output_root
        raise RuntimeError(f"refusing to delete {target}: not inside {root}")
    shutil.rmtree(target)


def run_cell(cell: Cell) -> Outcome:
    """Run one cell to its report. wall_s in cell.json is this attempt's subprocess time; wall_s_total adds
    the attempts it resumed (recorded in interrupted.json when they stopped)."""
    state = cell_state(cell)
    args = cell.run_args()
    started = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    resumed, earlier = False, 0.0
    if state == "rerun":
        _safe_rmtree(cell)
    if state == "resume":
        earlier = (_load_json(cell.dir / PARTIAL) or {}).get("wall_s", 0.0)
        code, seconds, err = _launch(cell, args + [f"--resume={cell.dir_arg}"])
        resumed = code == 0
        if code == 2:  # refused (damaged checkpoint or another configuration): start the cell afresh
            print("(resume refused, starting over) ", end="", flush=True)
            _safe_rmtree(cell)
            earlier = 0.0
            code, more, err = _launch(cell, args)
            seconds += more
    else:
        code, seconds, err = _launch(cell, args)
    if code != 0 or not cell.report_path.is_file():
        _add_partial(cell, seconds)  # a BET cell that crashed after a checkpoint resumes next time
        return Outcome("failed", seconds, code, resumed, _tail(err), err)
    record = {"cell": cell.id, "grid": cell.grid.name, "label": cell.spec.label, "method": cell.spec.method,
              "args": args, "command": shlex.join([sys.executable, "run_bet.py", *args]),
              "resumed": resumed, "started": started,
              "finished": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
              "wall_s": round(seconds, 3), "wall_s_total": round(earlier + seconds, 3), "returncode": code}
    (cell.dir / "cell.json").write_text(json.dumps(record, indent=2) + "\n")
    if (cell.dir / PARTIAL).exists():
        (cell.dir / PARTIAL).unlink()
    return Outcome("done", seconds, code, resumed, log=err)


def select_cells(cells: list, only: list) -> list:
    if not only:
        return cells
    return [c for c in cells if any(fnmatch.fnmatchcase(c.id, pattern) for pattern in only)]


def run_grid(cells: list, dry_run: bool) -> list:
    """Run (or, dry, describe) the cells in order; returns the failed (cell, outcome) pairs."""
    n, width = len(cells), len(str(len(cells)))
    failures, counts = [], {}
    for i, cell in enumerate(cells, 1):
        state = cell_state(cell)
        print(f"[{i:>{width}}/{n}] {cell.id:<44} ", end="", flush=True)
        if state == "done":
            note = stale_note(cell)
            print("skipped (report.json exists)" + (f"; WARNING: {note}" if note else ""), flush=True)
            counts["skipped"] = counts.get("skipped", 0) + 1
            continue
        if dry_run:
            what = {"new": "would run", "rerun": "would rerun (leftover directory without report.json is deleted)",
                    "resume": "would resume (--resume, interrupted BET run)"}[state]
            print(what)
            print(f"      python run_bet.py {shlex.join(cell.run_args())}", flush=True)
            counts[state] = counts.get(state, 0) + 1
            continue
        try:
            outcome = run_cell(cell)
        except Exception as exc:  # the harness's own trouble with this cell (e.g. a directory it cannot delete)
            outcome = Outcome("failed", 0.0, None, stderr_tail=f"grid.py: {type(exc).__name__}: {exc}")
        label = "done (resumed)" if outcome.resumed else outcome.status
        if outcome.status == "failed":
            label = "FAILED (grid.py error)" if outcome.returncode is None else f"FAILED (exit {outcome.returncode})"
            failures.append((cell, outcome))
        print(f"{label} {outcome.seconds:.1f} s", flush=True)
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    print(f"{n} cell(s){' (dry run)' if dry_run else ''}: {summary or 'nothing to do'}")
    return failures


# --------------------------------------------------------------------------------------------- tables

def merge_set(grid: Grid) -> list:
    """The grid plus every sibling YAML (same folder) that writes its tables to the same results_dir."""
    grids = [grid]
    for path in sorted(grid.path.parent.glob("*.yaml")):
        if path.resolve() == grid.path:
            continue
        try:
            other = load_grid(path)
        except GridError as exc:
            print(f"warning: ignoring {path} for the tables: {exc}", file=sys.stderr)
            continue
        if other.results_dir.resolve() == grid.results_dir.resolve():
            grids.append(other)
    return grids


def _load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _typed(row: dict) -> dict:
    """A row read back from a results CSV, with the types collect() gives its own rows."""
    out = {}
    for k in CSV_COLUMNS:
        v = row.get(k, "")
        if v == "" or v is None:
            out[k] = None
        elif k in ("budget_applied", "resumed", "all_converged"):
            out[k] = v == "True"
        elif k in ("seed", "kept_params", "budget_params", "selected_from", "max_epochs"):
            out[k] = int(float(v))
        elif k in ("dataset", "model", "method", "base_method", "grid", "output_dir"):
            out[k] = v
        else:
            out[k] = float(v)
    return out


def previous_rows(path: Path) -> dict:
    """Rows of an earlier <dataset>.csv by output_dir: the durable record of cells whose run folders are gone
    (results/runs is not in git, so a fresh clone or a cleaned disk has none of them)."""
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        return {r["output_dir"]: _typed(r) for r in csv.DictReader(fh) if r.get("output_dir")}


def collect(grids: list, dataset: str, previous: dict | None = None) -> tuple:
    """(rows, expected) for one dataset: a row per finished cell; expected[(model, label, sparsity)] =
    {"n": cells the grids ask for, "base": the method}. A cell listed by two grids with the same arguments
    counts once (the copy that finished); with other arguments the later grid's label becomes ``label@grid``.
    A cell without a report but with a row in ``previous`` (the earlier CSV, by output folder) keeps that row,
    marked ``carried``."""
    previous = previous or {}
    chosen = {}  # (dataset, model, label, sparsity, seed) -> (cell, label), in grid order
    for grid in grids:
        if dataset not in grid.datasets:
            continue
        for cell in grid_cells(grid):
            if cell.dataset != dataset:
                continue
            key, label = cell.key, cell.spec.label
            if key in chosen:
                other = chosen[key][0]
                if _comparable_args(other.run_args()) == _comparable_args(cell.run_args()):
                    if not other.report_path.is_file() and cell.report_path.is_file():
                        chosen[key] = (cell, label)
                    continue
                label = f"{label}@{grid.name}"
                key = (*key[:2], label, *key[3:])
                print(f"warning: {cell.id} is in grids {other.grid.name} and {grid.name} with different "
                      f"settings; the second is shown as {label}", file=sys.stderr)
            chosen[key] = (cell, label)
    rows, expected = [], {}
    for cell, label in chosen.values():
        group = expected.setdefault((cell.model, label, float(cell.sparsity)), {"n": 0, "base": cell.spec.method})
        group["n"] += 1
        report = _load_json(cell.report_path)
        if report is None:
            kept = previous.get(cell.dir_arg)
            if kept is not None and kept["method"] == label and kept["seed"] == cell.seed:
                rows.append({**kept, "carried": True})
                one = previous.get(f"{cell.dir_arg}#@1")
                if one is not None:
                    rows.append({**one, "carried": True})
                    expected.setdefault((cell.model, f"{label}@1", float(cell.sparsity)),
                                        {"n": 0, "base": cell.spec.method})["n"] += 1
            continue
        info = _load_json(cell.dir / "cell.json") or {}
        timings = report.get("timings_s") or {}
        row = {"dataset": dataset, "model": cell.model, "method": label, "base_method": cell.spec.method,
               "sparsity": float(cell.sparsity), "seed": cell.seed, "grid": cell.grid.name,
               "realized_sparsity": report.get("realized_sparsity"), "kept_params": report.get("kept_params"),
               "budget_params": report.get("budget_params"),
               # false for a method run as published without a budget (esapn_budget=none)
               "budget_applied": report.get("budget_applied", True)}
        for split in ("valid", "test"):
            for m in METRICS:
                row[f"{split}_{m}"] = (report.get(split) or {}).get(m)
        for t in TIMINGS:
            row[f"{t}_s"] = timings.get(t)
        row["wall_s"] = info.get("wall_s_total", info.get("wall_s"))
        row["resumed"] = info.get("resumed")
        row["output_dir"] = cell.dir_arg
        retrained = (report.get("search") or {}).get("retrained") if cell.spec.method == "bet" else None
        # the final model was chosen (on validation) among this many trainings: BET's top-k, one elsewhere
        row["selected_from"] = len(retrained) if retrained else 1
        trainings = report.get("trainings") or []
        row["all_converged"] = all(t.get("converged", False) for t in trainings) if trainings else None
        row["max_epochs"] = max((t.get("epochs") or 0 for t in trainings), default=None) if trainings else None
        rows.append(row)
        if retrained and "test" in retrained[0]:  # bet@1: the fittest action retrained once, no extra cost
            first = retrained[0]
            one = dict(row, method=f"{label}@1", selected_from=1, output_dir=f"{cell.dir_arg}#@1",
                       realized_sparsity=1 - first["kept_params"] / report["full_params"],
                       kept_params=first["kept_params"])
            for split in ("valid", "test"):
                for m in METRICS:
                    one[f"{split}_{m}"] = first[split].get(m)
            rows.append(one)
            group1 = expected.setdefault((cell.model, f"{label}@1", float(cell.sparsity)),
                                         {"n": 0, "base": cell.spec.method})
            group1["n"] += 1
    return rows, expected


CSV_COLUMNS = (["dataset", "model", "method", "base_method", "sparsity", "seed", "realized_sparsity", "kept_params",
                "budget_params", "budget_applied"] + [f"{s}_{m}" for s in ("valid", "test") for m in METRICS]
               + [f"{t}_s" for t in TIMINGS] + ["wall_s", "resumed", "selected_from", "all_converged", "max_epochs",
                                                "grid", "output_dir"])


def _n_asked(expected: dict) -> int:
    return sum(g["n"] for g in expected.values())


def _mean_std(values):
    import numpy as np

    values = [v for v in values if v is not None]
    if not values:
        return None, None
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) >= 2 else None)


def _fmt_ms(mean, std, digits=4) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _fmt_wall(seconds) -> str:
    if seconds is None:
        return "–"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _p_value(a: dict, b: dict) -> tuple:
    """Paired t-test over the seeds both have: (p, n) or (None, n)."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None, len(seeds)
    from scipy.stats import ttest_rel

    p = float(ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue)
    return (None if math.isnan(p) else p), len(seeds)


def summarize(rows: list, expected: dict, model: str) -> tuple:
    """(groups, sparsities, labels): groups[(label, sparsity)] = per-seed values and summaries."""
    labels, sparsities, groups = [], [], {}
    for (m, label, s), asked in expected.items():  # grid order
        if m != model:
            continue
        if label not in labels:
            labels.append(label)
        if s not in sparsities:
            sparsities.append(s)
        groups[label, s] = {"expected": asked["n"], "rows": [], "base": asked["base"]}
    for row in rows:
        if row["model"] == model:
            groups[row["method"], row["sparsity"]]["rows"].append(row)
    for g in groups.values():
        g["seeds"] = {r["seed"]: r for r in g["rows"]}
        g["stats"] = {m: _mean_std([r[f"test_{m}"] for r in g["rows"]]) for m in METRICS}
        g["realized"] = _mean_std([r["realized_sparsity"] for r in g["rows"]])[0]
        g["budget_applied"] = all(r["budget_applied"] for r in g["rows"])
        froms = sorted({r.get("selected_from") or 1 for r in g["rows"]})
        g["selected_from"] = "/".join(str(f) for f in froms) if froms else "–"
        conv = [r.get("all_converged") for r in g["rows"] if r.get("all_converged") is not None]
        g["converged"] = f"{sum(conv)}/{len(conv)}" if conv else "–"
        walls = [r["wall_s"] if r["wall_s"] is not None else r["total_s"] for r in g["rows"]]
        g["wall"] = sum(w for w in walls if w is not None) if g["rows"] else None
    return groups, sorted(sparsities), labels


def significance(groups: dict, sparsities: list, labels: list) -> list:
    """Per sparsity: BET (label ``bet``) against the non-BET method with the best mean test Recall@20 among
    those that met the budget (a method run without one keeps more parameters: no fair rival)."""
    out = []
    for s in sparsities:
        bet = groups.get(("bet", s))
        if bet is None or not bet["rows"]:
            continue
        rivals = [(groups[l, s]["stats"]["recall@20"][0], l) for l in labels
                  if (l, s) in groups and groups[l, s]["rows"] and groups[l, s]["base"] != "bet"
                  and groups[l, s]["budget_applied"]]
        if not rivals:
            out.append({"sparsity": s, "rival": None})
            continue
        _, rival = max(rivals)
        entry = {"sparsity": s, "rival": rival}
        for m in ("recall@20", "ndcg@20"):
            a = {k: r[f"test_{m}"] for k, r in bet["seeds"].items()}
            b = {k: r[f"test_{m}"] for k, r in groups[rival, s]["seeds"].items()}
            entry[m], entry["n"] = _p_value(a, b)
            entry[f"delta_{m}"] = bet["stats"][m][0] - groups[rival, s]["stats"][m][0]
        out.append(entry)
    return out


def wins_ties_losses(groups: dict, sparsities: list, labels: list, metric: str = "recall@20") -> dict:
    """BET (label ``bet``) against every other label that met the budget: per rival, the count of sparsities
    where BET wins / ties / loses (paired t-test on ``metric``, p < 0.05), with (sparsity, Δ, p) each."""
    out = {}
    for rival in labels:
        if rival == "bet":
            continue
        for s in sparsities:
            bet, other = groups.get(("bet", s)), groups.get((rival, s))
            if not bet or not other or not bet["rows"] or not other["rows"] or not other["budget_applied"]:
                continue
            a = {k: r[f"test_{metric}"] for k, r in bet["seeds"].items()}
            b = {k: r[f"test_{metric}"] for k, r in other["seeds"].items()}
            p, n = _p_value(a, b)
            if n < 2:
                continue
            seeds = sorted(set(a) & set(b))
            delta = sum(a[k] - b[k] for k in seeds) / len(seeds)
            outcome = "tie" if p is None or p >= 0.05 else ("win" if delta > 0 else "loss")
            t = out.setdefault(rival, {"win": 0, "tie": 0, "loss": 0, "detail": []})
            t[outcome] += 1
            t["detail"].append((s, delta, p))
    return out


def _paper_for(grids: list, dataset: str) -> tuple:
    paper, sources = {}, []
    for g in grids:
        for model, labels in g.paper.get(dataset, {}).items():
            for label, by_s in labels.items():
                for s, metrics in by_s.items():
                    paper.setdefault(model, {}).setdefault(label, {}).setdefault(s, {}).update(metrics)
        if g.paper.get(dataset) and g.paper_source and g.paper_source not in sources:
            sources.append(g.paper_source)
    return paper, sources


def _repo_rel(path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def write_markdown(path: Path, dataset: str, grids: list, rows: list, expected: dict, command: str) -> None:
    models = list(dict.fromkeys(m for (m, _, _) in expected))
    paper, sources = _paper_for(grids, dataset)
    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    used = [g for g in grids if dataset in g.datasets]
    lines = [f"# {dataset}: results", "",
             f"Produced by `{command}` on {now}.", "",
             "Test metrics of finished cells, `mean ± std` over seeds (std with ddof=1; a bare mean means one "
             "seed). *realised* is the mean realised sparsity (1 - kept / full parameters). *from* is how many "
             "trainings each final model was chosen from on validation (BET: its top-k retrainings; `bet@1` is the "
             "first of them, the fittest action, at no extra cost). *conv.* is how many cells had every training "
             "end by the convergence test rather than the epoch cap. *seeds* is finished / "
             "asked for by the grids. *wall* is the summed wall time of the cells' `run_bet.py` subprocesses "
             "(`cell.json`; the report's `timings_s.total` where that is missing). The best mean per sparsity "
             "and metric is in bold.", "",
             "Grids merged (every grid YAML in the same folder writing tables to the same place):", ""]
    for g in used:
        files = ", ".join(g.config_files) if g.config_files else "none (paper defaults)"
        extra = ", ".join(f"{k}={v}" for k, v in g.config.items()) or "none"
        lines.append(f"- `{_repo_rel(g.path)}` (grid `{g.name}`): config_files {files}; config {extra}; "
                     f"outputs `{_repo_rel(g.output_root)}`")
    lines.append("")
    for model in models:
        groups, sparsities, labels = summarize(rows, expected, model)
        has_paper = bool(paper.get(model))
        lines += [f"## {model}", ""]
        head = ["method", "sparsity", "realised"]
        for m in METRICS:
            head.append(SHORT[m])
            if has_paper:
                head.append(f"{SHORT[m]} paper")
        head += ["from", "conv.", "seeds", "wall"]
        lines += ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["--:"] * (len(head) - 2)) + "|"]
        for s in sparsities:
            best = {}
            for m in METRICS:
                means = [groups[l, s]["stats"][m][0] for l in labels
                         if (l, s) in groups and groups[l, s]["budget_applied"]]
                means = [v for v in means if v is not None]
                best[m] = max(means) if means else None
            for label in labels:
                if (label, s) not in groups:
                    continue
                g = groups[label, s]
                shown_label = label if g["budget_applied"] else f"{label} ‡"
                cells = [shown_label, f"{s:g}", "–" if g["realized"] is None else f"{g['realized']:.4f}"]
                for m in METRICS:
                    mean, std = g["stats"][m]
                    text = _fmt_ms(mean, std)
                    if mean is not None and best[m] is not None and mean == best[m] and len(labels) > 1 \
                            and g["budget_applied"]:
                        text = f"**{text}**"
                    cells.append(text)
                    if has_paper:
                        value = paper.get(model, {}).get(label, {}).get(s, {}).get(m)
                        cells.append("–" if value is None else f"{value:.4f}")
                cells += [g["selected_from"], g["converged"], f"{len(g['rows'])}/{g['expected']}",
                          _fmt_wall(g["wall"])]
                lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        if any(not g["budget_applied"] for g in groups.values() if g["rows"]):
            lines += ["‡ budget not applied (the method as published cannot target one): *realised* is the "
                      "sparsity it reached, the sparsity column only places it; it is never bold and never the rival in "
                      "the t-test.", ""]
        sig = significance(groups, sparsities, labels)
        if sig:
            lines += ["Paired t-test over seeds (`scipy.stats.ttest_rel`, two-sided, test metrics): BET (label `bet`) "
                      "against the non-BET method that met the budget with the best mean test Recall@20 at that "
                      "sparsity. "
                      "Δ = BET mean - that method's mean.", "",
                      "| sparsity | BET vs | paired seeds | Δ R@20 | p (R@20) | Δ N@20 | p (N@20) |",
                      "|---|---|--:|--:|--:|--:|--:|"]
            for e in sig:
                if e["rival"] is None:
                    lines.append(f"| {e['sparsity']:g} | (no baseline finished) | – | – | n/a | – | n/a |")
                    continue
                ps = {m: ("n/a" if e[m] is None else f"{e[m]:.4f}") for m in ("recall@20", "ndcg@20")}
                lines.append(f"| {e['sparsity']:g} | {e['rival']} | {e['n']} | {e['delta_recall@20']:+.4f} | "
                             f"{ps['recall@20']} | {e['delta_ndcg@20']:+.4f} | {ps['ndcg@20']} |")
            lines.append("")
            if any(e["rival"] is None or e["recall@20"] is None or e["ndcg@20"] is None for e in sig):
                lines += ["n/a: fewer than 2 seeds finished for both methods (or all paired differences equal).", ""]
        tally = wins_ties_losses(groups, sparsities, labels)
        if tally:
            lines += ["BET (label `bet`) against each baseline over the sparsities where both have paired seeds: "
                      "a win or a loss is a paired t-test on test Recall@20 with p < 0.05 in that direction, "
                      "anything else a tie.", "",
                      "| baseline | wins | ties | losses | sparsities (Δ R@20, p) |", "|---|--:|--:|--:|---|"]
            for rival, t in tally.items():
                detail = "; ".join(f"{s:g}: {d:+.4f}, {'n/a' if p is None else f'{p:.3f}'}"
                                   for s, d, p in t["detail"])
                lines.append(f"| {rival} | {t['win']} | {t['tie']} | {t['loss']} | {detail} |")
            lines.append("")
    if sources:
        lines += ["Paper columns: " + "; ".join(sources) + ".", ""]
    carried = sum(1 for r in rows if r.get("carried"))
    if carried:
        lines += [f"{carried} of the finished cells have no run folder here: their rows are kept from the previous "
                  f"`{dataset}.csv` (delete a row there to drop it).", ""]
    missing = _n_asked(expected) - len(rows)
    lines += [f"{len(rows)} of {_n_asked(expected)} cells finished" + (f"; {missing} missing or failed." if missing
                                                                           else "."), ""]
    path.write_text("\n".join(lines))


def write_csv(path: Path, rows: list) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_COLUMNS})


def write_plot(path: Path, dataset: str, grids: list, rows: list, expected: dict) -> bool:
    try:
        import matplotlib
    except ImportError:
        print(f"note: matplotlib is not installed, so {path.name} was not drawn; install it with "
              "`pip install matplotlib` (a dependency of recbole-bet) and rerun with --tables-only")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(m for (m, _, _) in expected))
    paper, _ = _paper_for(grids, dataset)
    fig, axes = plt.subplots(len(models), 2, figsize=(12, 3.9 * len(models)), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for r, model in enumerate(models):
        groups, sparsities, labels = summarize(rows, expected, model)
        for c, metric in enumerate(("recall@20", "ndcg@20")):
            ax = axes[r][c]
            for i, label in enumerate(labels):
                color = colors[i % len(colors)]
                xs = [s for s in sparsities if (label, s) in groups and groups[label, s]["stats"][metric][0] is not None]
                if xs:
                    means = [groups[label, s]["stats"][metric][0] for s in xs]
                    stds = [groups[label, s]["stats"][metric][1] or 0.0 for s in xs]
                    n = max(len(groups[label, s]["rows"]) for s in xs)
                    ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, color=color,
                                label=f"{label} (n={n})")
                ref = paper.get(model, {}).get(label, {})
                px = sorted(s for s in ref if metric in ref[s])
                if px:
                    ax.plot(px, [ref[s][metric] for s in px], linestyle="--", marker="x", color=color, alpha=0.7,
                            label=f"{label} (paper)")
            ax.set_title(f"{dataset} · {model} · test {SHORT[metric]}")
            ax.set_xlabel("sparsity")
            ax.set_ylabel(SHORT[metric].replace("R@", "Recall@").replace("N@", "NDCG@"))
            if sparsities:
                ax.set_xticks(sparsities)
                ax.set_xticklabels([f"{s:g}" for s in sparsities])
            ax.grid(alpha=0.3)
            if c == 1 and ax.has_data():  # one legend per model, outside the plots: ours first, then the paper's
                handles, names = ax.get_legend_handles_labels()
                order = sorted(range(len(names)), key=lambda i: names[i].endswith("(paper)"))
                ax.legend([handles[i] for i in order], [names[i] for i in order], fontsize=8, loc="upper left",
                          bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.suptitle(f"{dataset}: mean over seeds, error bars = std over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


def build_tables(grid: Grid, command: str) -> list:
    """Write <results_dir>/<dataset>.csv/.md/.png for every dataset of the grid; returns the paths."""
    grids = merge_set(grid)
    grid.results_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for dataset in grid.datasets:
        base = grid.results_dir / dataset
        rows, expected = collect(grids, dataset, previous_rows(base.with_suffix(".csv")))
        write_csv(base.with_suffix(".csv"), rows)
        write_markdown(base.with_suffix(".md"), dataset, grids, rows, expected, command)
        written += [base.with_suffix(".csv"), base.with_suffix(".md")]
        if write_plot(base.with_suffix(".png"), dataset, grids, rows, expected):
            written.append(base.with_suffix(".png"))
        print(f"tables for {dataset}: {len(rows)} of {_n_asked(expected)} cells finished -> "
              f"{', '.join(shown(p) for p in written if p.stem == dataset)}")
    return written


# ----------------------------------------------------------------------------------------------- main

def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="benchmarks/grid.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", required=True, help="grid YAML, e.g. benchmarks/grids/ml100k-lightgcn.yaml")
    parser.add_argument("--only", action="append", default=[],
                        help="run only cells whose id DATASET/MODEL/LABEL/SPARSITY/seedSEED matches one of these "
                             "comma-separated globs, e.g. --only='*/bet/*' (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="list the cells and what would happen; run nothing")
    parser.add_argument("--tables-only", action="store_true", help="build the tables from finished cells; run nothing")
    parser.add_argument("--output-root", default=None, help="override the grid's output_root")
    parser.add_argument("--results-dir", default=None, help="override the grid's results_dir (default results)")
    args = parser.parse_args(argv)
    command = "python benchmarks/grid.py " + shlex.join(argv)
    try:
        grid = load_grid(args.grid, args.output_root, args.results_dir)
    except GridError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    only = [p.strip() for group in args.only for p in group.split(",") if p.strip()]
    failures = []
    if not args.tables_only:
        cells = select_cells(grid_cells(grid), only)
        if only and not cells:
            print(f"error: --only {only} matches none of the grid's cells, e.g. {grid_cells(grid)[0].id}",
                  file=sys.stderr)
            return 2
        print(f"grid {grid.name}: {len(cells)} cell(s) -> {shown(grid.output_root)}")

        def _term(signum, frame):
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, _term)
        try:
            failures = run_grid(cells, args.dry_run)
        except KeyboardInterrupt:
            print("\ninterrupted: run the same command again to continue (finished cells are skipped, an "
                  "interrupted BET cell resumes from its checkpoint)", file=sys.stderr)
            return 130
        if args.dry_run:
            return 0
    build_tables(grid, command)
    if failures:
        print(f"\n{len(failures)} cell(s) failed:", file=sys.stderr)
        for cell, outcome in failures:
            print(f"\n--- {cell.id} (exit {outcome.returncode}, {outcome.seconds:.1f} s); full stderr: "
                  f"{shown(outcome.log) if outcome.log else '?'}", file=sys.stderr)
            print("\n".join("    " + line for line in outcome.stderr_tail.splitlines()), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
