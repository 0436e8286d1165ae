"""The cells of a grid, their arguments for ``python -m recbole_bet run``, and the state of each on disk."""
from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from pathlib import Path

from recbole_bet.grid.load import Grid, MethodSpec, cli_value

CHECKPOINT = "checkpoint.pt"  # recbole_bet.methods.base.CHECKPOINT_FILENAME (not imported: it imports torch)
PARTIAL = "interrupted.json"  # wall seconds of earlier attempts of a cell that will be resumed


def fmt_sparsity(s: float) -> str:
    return format(float(s), "g")


def shown(path, base=None) -> str:
    """A path for messages and tables: relative to ``base`` (default: the current folder) when inside it."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path(base or Path.cwd()).resolve()))
    except ValueError:
        return str(path)


@dataclass
class Cell:
    grid: Grid
    dataset: str
    model: str
    spec: MethodSpec
    sparsity: float
    seed: int
    reuse_search: bool = False  # grid --reuse-search: a finished BET cell may get choose's training (cell_state)

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
        """The output directory as the cell's command (run in the grid's workdir) is given it, and as the
        results CSV keys its row: relative to the workdir when inside it."""
        return shown(self.dir, self.grid.workdir)

    @property
    def report_path(self) -> Path:
        return self.dir / "report.json"

    def run_args(self) -> list:
        """``python -m recbole_bet run``'s arguments (without --resume)."""
        args = [f"--model={self.model}", f"--dataset={self.dataset}", f"--method={self.spec.method}",
                f"--sparsity={fmt_sparsity(self.sparsity)}", f"--seed={self.seed}", f"--output_dir={self.dir_arg}"]
        if self.grid.config_files:
            args.append(f"--config_files={' '.join(self.grid.config_files)}")
        extra = {**self.grid.config, **self.spec.config}  # the method's keys win
        args += [f"--{k}={cli_value(v)}" for k, v in extra.items()]
        return args

    @property
    def reuse_source(self) -> Path | None:
        """The finished cell of ``reuse_from`` (the spec's {grid, label}) with this cell's dataset, model, sparsity
        and seed, in that grid's folder beside this grid's output_root; None without ``reuse_from``."""
        source = self.spec.reuse_from
        if not source:
            return None
        return self.grid.output_root.parent / source["grid"] / self.dataset / self.model / source["label"] / \
            fmt_sparsity(self.sparsity) / f"seed{self.seed}"

    @property
    def parked_dir(self) -> Path:
        """Where ``grid --park`` keeps this cell's checkpoint: under the results folder, which is committed, so an
        interrupted cell resumes on another machine or in a fresh clone (run folders are not committed)."""
        return self.grid.results_dir / "parked" / self.grid.name / self.id

    def log_base(self) -> Path:
        return cell_log_base(self.grid.output_root, self.id)

    def log_err(self) -> Path:
        """The cell's stderr log (it starts with the command)."""
        base = self.log_base()
        return base.parent / f"{base.name}.err"


def cell_log_base(output_root: Path, cell_id: str) -> Path:
    """A cell's logs without their suffix (.err, .out): ``<output_root>/logs/<its id, / as __>``."""
    return Path(output_root) / "logs" / cell_id.replace("/", "__")


def grid_cells(grid: Grid) -> list:
    """Order: dataset, model, seed, sparsity, method (a complete first seed comes first). A method with its own
    ``models`` runs only on those."""
    return [Cell(grid, d, m, spec, s, k) for d in grid.datasets for m in grid.models for k in grid.seeds
            for s in grid.sparsities for spec in grid.methods
            if (spec.models is None or m in spec.models) and (spec.seeds is None or k in spec.seeds)]


def select_cells(cells: list, only: list) -> list:
    if not only:
        return cells
    return [c for c in cells if any(fnmatch.fnmatchcase(c.id, pattern) for pattern in only)]


def cell_state(cell: Cell) -> str:
    """done (report.json exists), reuse (done, but ``--reuse-search`` adds choose's training: ``reusable``), resume
    (interrupted BET run with a checkpoint), rerun (a leftover directory without report: deleted first), parked (no
    run folder, a checkpoint parked by ``--park``), extend (new, and its ``reuse_from`` cell has finished here), new."""
    if cell.report_path.is_file():
        return "reuse" if cell.reuse_search and reusable(cell) else "done"
    if cell.dir.exists():
        if cell.spec.method == "bet" and (cell.dir / CHECKPOINT).is_file():
            return "resume"
        return "rerun"
    if cell.spec.method == "bet" and (cell.parked_dir / CHECKPOINT).is_file():
        return "parked"
    return "extend" if extendable(cell) else "new"


def extendable(cell: Cell) -> bool:
    """Its ``reuse_from`` cell has finished here (a leftover folder of its own is deleted first, then it extends)."""
    return cell.reuse_source is not None and (cell.reuse_source / "report.json").is_file()


def reusable(cell: Cell) -> bool:
    """A finished BET cell that ``run --bet_reuse_run`` can extend with ``bet_retrain_columns: choose``'s training:
    retrained from the pretrained weights with first columns and no choice made, in a grid that does not ask for
    another ``bet_retrain_columns`` (the run refuses a configuration that is not choose: the properties' default
    decides the rest)."""
    if cell.spec.method != "bet":
        return False
    asked = {**cell.grid.config, **cell.spec.config}.get("bet_retrain_columns", "choose")
    search = (load_json(cell.report_path) or {}).get("search") or {}
    return (asked == "choose" and search.get("retrain_init") == "pretrained" and not search.get("columns_choice")
            and search.get("retrain_columns", "prefix") == "prefix" and bool(search.get("retrained")))


def comparable_args(args) -> list:
    return [a for a in args if not a.startswith("--output_dir=")]


def load_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def stale_note(cell: Cell, recorded: list | None) -> str:
    """A finished cell whose recorded arguments (its cell.json's ``args``) differ from what the grid asks now (never
    rerun)."""
    if recorded is None or comparable_args(recorded) == comparable_args(cell.run_args()):
        return ""
    now, then = set(comparable_args(cell.run_args())), set(comparable_args(recorded))
    return (f"ran with other arguments (now {sorted(now - then)}, then {sorted(then - now)}); "
            f"delete {cell.dir} to rerun it")
