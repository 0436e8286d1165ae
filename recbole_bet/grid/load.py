"""Reading a grid file: its axes, the config every cell gets, where outputs go, the resources a cell needs.

Relative paths (``output_root``, ``results_dir``, ``config_files``, ``--output-root``, ``--results-dir``) are
relative to the current folder, where the cells run too: from a checkout's root the committed layout
(``results/runs/<grid name>/...``, ``results/<dataset>.csv``) comes out as before, and an installed package
writes beside the user rather than inside site-packages. ``--grid=NAME`` finds a grid bundled with the
package (``grids/NAME.yaml`` in a checkout, ``recbole_bet/grids/`` once installed).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from recbole_bet.errors import BadInput

METRICS = ("recall@5", "ndcg@5", "recall@20", "ndcg@20")
SHORT = {"recall@5": "R@5", "ndcg@5": "N@5", "recall@20": "R@20", "ndcg@20": "N@20"}
ALIASES = {**{m: m for m in METRICS}, **{v.lower(): k for k, v in SHORT.items()}}
GRID_KEYS = {"name", "datasets", "models", "methods", "sparsities", "seeds", "config_files", "config",
             "output_root", "results_dir", "paper", "paper_source", "resources"}
# keys a grid sets through its axes or by itself: not allowed in `config`
RESERVED = {"model", "dataset", "method", "sparsity", "seed", "output_dir", "resume", "config_files"}
LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
# what one cell asks of a Ray cluster (the local executor runs one cell at a time and ignores it)
RESOURCE_KEYS = ("num_cpus", "num_gpus")
DEFAULT_RESOURCES = {"num_cpus": 1}


class GridError(BadInput):
    """A grid file (or a command-line option) the user must fix: exit status 2."""


@dataclass
class MethodSpec:
    label: str
    method: str
    config: dict = field(default_factory=dict)
    models: list | None = None  # the grid's models this label runs on; None: all of them
    seeds: list | None = None  # the grid's seeds this label runs on; None: all of them
    # BET only: {grid, label} of finished cells (same dataset, model, sparsity, seed) whose search a new cell reuses
    reuse_from: dict | None = None


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
    resources: dict = field(default_factory=lambda: dict(DEFAULT_RESOURCES))
    workdir: Path = field(default_factory=Path.cwd)  # where the cells run and relative paths start


def grids_dir() -> Path:
    """The grids that ship with the package: ``recbole_bet/grids/`` installed, ``grids/`` in a checkout."""
    here = Path(__file__).resolve().parents[1]
    for candidate in (here / "grids", here.parent / "grids"):
        if (candidate / "tiny.yaml").is_file():
            return candidate
    raise FileNotFoundError("recbole-bet's grids/ folder is missing from this installation")


def bundled_grids() -> list:
    try:
        return sorted(p.stem for p in grids_dir().glob("*.yaml"))
    except FileNotFoundError:
        return []


def find_grid(value) -> Path:
    """A grid file by path, or a bundled grid by name (``tiny`` or ``tiny.yaml``)."""
    text = str(value)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if os.sep not in text and bundled_grids():
        bundled = grids_dir() / (text if text.endswith(".yaml") else f"{text}.yaml")
        if bundled.is_file():
            return bundled
    names = ", ".join(bundled_grids()) or "none found"
    raise GridError(f"grid file {text} does not exist; give a path or the name of a bundled grid ({names})")


def _local_path(value, workdir: Path) -> Path:
    path = Path(str(value)).expanduser()
    return (path if path.is_absolute() else workdir / path).resolve()


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


def cli_value(value) -> str:
    """A config value as RecBole's command line reads it back (it eval()s the text)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None or isinstance(value, (int, float)):
        return str(value)
    return repr(value)  # lists and dicts: Python literals


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


def _check_resources(resources, where) -> dict:
    if resources is None:
        return dict(DEFAULT_RESOURCES)
    if not isinstance(resources, dict) or set(resources) - set(RESOURCE_KEYS):
        raise GridError(f"{where}: `resources` is a mapping with {' and/or '.join(RESOURCE_KEYS)}, "
                        f"e.g. {{num_cpus: 1, num_gpus: 1}}; got {resources!r}")
    out = dict(DEFAULT_RESOURCES)
    for key, value in resources.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise GridError(f"{where}: resources {key} must be a number >= 0, got {value!r}")
        out[key] = value
    return out


def _method_spec(entry, path) -> MethodSpec:
    if isinstance(entry, str):
        spec = MethodSpec(entry, entry)
    elif isinstance(entry, dict):
        unknown = set(entry) - {"label", "method", "config", "models", "seeds", "reuse_from"}
        if unknown or "method" not in entry:
            raise GridError(f"{path}: a method mapping needs `method` and may have `label`, `config`, `models`, "
                            f"`seeds` and `reuse_from`; got {entry!r}")
        where = f"{path}: method {entry.get('label', entry['method'])}"
        models = entry.get("models")
        if models is not None and (not isinstance(models, list) or not models
                                   or not all(isinstance(m, str) for m in models)):
            raise GridError(f"{where}: `models` must be a non-empty list of the grid's models, e.g. [NeuMF]")
        seeds = _list(entry, "seeds", int, where) if entry.get("seeds") is not None else None
        spec = MethodSpec(str(entry.get("label", entry["method"])), str(entry["method"]),
                          _check_config(entry.get("config"), where), models, seeds,
                          _reuse_from(entry.get("reuse_from"), entry["method"], where))
    else:
        raise GridError(f"{path}: each method is a name (bet) or a mapping {{label, method, config, models, seeds}}; "
                        f"got {entry!r}")
    if not LABEL.match(spec.label):
        raise GridError(f"{path}: method label {spec.label!r} must be letters, digits, '.', '_', '+' or '-'")
    return spec


def _reuse_from(value, method, where) -> dict | None:
    """``reuse_from: {grid, label}``: the cells of another grid (in the folder beside this grid's output_root) whose
    finished BET runs this label's new cells extend with ``--bet_reuse_run`` instead of searching again."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"grid", "label"} \
            or not all(isinstance(v, str) and LABEL.match(v) for v in value.values()):
        raise GridError(f"{where}: `reuse_from` must be {{grid: NAME, label: LABEL}}, the grid and method label of the "
                        f"finished BET cells to reuse, e.g. {{grid: ml100k-ngcf-neumf-3seeds, label: bet}}; got {value!r}")
    if method != "bet":
        raise GridError(f"{where}: `reuse_from` extends finished BET runs (bet_reuse_run); method {method} has none")
    return dict(value)


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


def load_grid(path, output_root=None, results_dir=None, workdir=None) -> Grid:
    """Read and check a grid file; ``workdir`` (default: the current folder) anchors its relative paths."""
    path = find_grid(path)
    workdir = Path(workdir or Path.cwd()).resolve()
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
    models = _list(raw, "models", str, path)
    for spec in methods:
        outside = [m for m in spec.models or [] if m not in models]
        if outside:
            raise GridError(f"{path}: method {spec.label} names model(s) {', '.join(outside)} that the grid's "
                            f"`models` ({', '.join(models)}) does not list")
    seeds = _list(raw, "seeds", int, path)
    for spec in methods:
        outside = [str(k) for k in spec.seeds or [] if k not in seeds]
        if outside:
            raise GridError(f"{path}: method {spec.label} names seed(s) {', '.join(outside)} that the grid's "
                            f"`seeds` ({', '.join(map(str, seeds))}) does not list")
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
        datasets=_list(raw, "datasets", str, path), models=models, methods=methods,
        sparsities=sparsities, seeds=seeds, config_files=[str(f) for f in files],
        config=_check_config(raw.get("config"), path),
        output_root=_local_path(output_root or raw.get("output_root") or f"results/runs/{name}", workdir),
        results_dir=_local_path(results_dir or raw.get("results_dir") or "results", workdir),
        paper=_norm_paper(raw.get("paper"), path), paper_source=str(raw.get("paper_source") or ""),
        resources=_check_resources(raw.get("resources"), path), workdir=workdir,
    )
