"""The run: config -> data -> stock model with masked tables -> method -> test -> artifact and report."""
from __future__ import annotations

import json
import logging
import os
import shutil
from logging import getLogger
from time import perf_counter

import numpy as np
from recbole.data import create_dataset, data_preparation
from recbole.utils import get_local_time, init_logger, init_seed

from recbole_bet.budget import make_budget, size_summary
from recbole_bet.config import make_config
from recbole_bet.context import RunContext, context_from, training_pairs
from recbole_bet.errors import BadInput
from recbole_bet.export import artifact_meta, save_artifact
from recbole_bet.files import atomic_write
from recbole_bet.methods import get_method
from recbole_bet.methods.base import CHECKPOINT_FILENAME
from recbole_bet.models import build_model
from recbole_bet.plots import plot_sizes
from recbole_bet.recommend import save_run_config
from recbole_bet.training import REPORT_METRICS, pick

# the SPEC keys echoed in the report's "config", plus the training keys that shape a result
REPORT_CONFIG_KEYS = (
    "method", "sparsity", "memory_budget", "d_max", "d_min", "output_dir", "seed", "epochs", "train_batch_size",
    "learning_rate", "stopping_step", "valid_metric", "eval_args", "embedding_size", "dataset_sample",
)


def prepare(config) -> RunContext:
    """Load and split the data, build the model with masks and the budget; raises BadInput on bad input."""
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = build_model(config, train_data.dataset)
    return context_from(config, model, train_data, valid_data, test_data, dataset)


def default_output_dir(config) -> str:
    budget = config["sparsity"] if config["memory_budget"] is None else f"mem{config['memory_budget']}"
    if isinstance(budget, (list, tuple)):  # a RULE sparsity list
        budget = "-".join(str(s) for s in budget)
    return os.path.join("saved", f"{config['model']}-{config['dataset']}-{config['method']}-{budget}-{get_local_time()}")


def check_writable(path: str) -> None:
    """Fail before hours of work, not after: the nearest existing ancestor must be writable."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
        shown = os.path.relpath(probe) if probe.startswith(os.getcwd() + os.sep) else probe
        raise BadInput(f"output_dir {path} cannot be written ({shown} is not a writable folder); choose another")


def _write_json_atomic(path: str, obj: dict) -> None:
    with atomic_write(path, "w") as fh:
        json.dump(obj, fh, indent=2)
        fh.write("\n")


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def build_report(ctx: RunContext, selection, valid: dict, test: dict, timings: dict) -> dict:
    b, config = ctx.budget, ctx.config
    kept = b.kept_params(selection.sizes)
    report = {
        "model": config["model"], "dataset": config["dataset"], "method": config["method"],
        "sparsity": b.sparsity, "seed": config["seed"], "d_max": b.d_max, "d_min": b.d_min,
        "n_users": b.n_users, "n_items": b.n_items, "tables_per_entity": b.tables_per_entity,
        "full_params": b.full_params, "budget_params": b.budget_params, "kept_params": kept,
        "realized_sparsity": b.realized_sparsity(kept),
        # false where the method's settings ignore the budget (esapn_budget=none): kept_params may exceed it
        "budget_applied": bool(selection.budget_applied),
        # where the kept units went: users' share, per-side sizes, the pairs' usable width (docs/config.md)
        "sizes": size_summary(b, selection.sizes, *training_pairs(ctx.train_data.dataset), keep=selection.keep),
        "valid": pick(valid), "test": pick(test),
        "search": selection.search,
        # every training to convergence of this run: epochs, best epoch, whether it converged or hit the cap
        "trainings": ctx.trainings,
        "timings_s": timings,
        "artifact": "table.npz", "artifact_bytes": None,
        "dense_bytes": b.dense_bytes,
        "config": {},
    }
    own = ("bet_", f"{config['method']}_")  # BET's keys, and the run's method's own keys
    keys = list(REPORT_CONFIG_KEYS) + sorted(k for k in config.final_config_dict if k.startswith(own))
    report["config"] = {k: _jsonable(config[k]) for k in keys if k in config.final_config_dict}
    return report


def run(config, ctx: RunContext | None = None) -> dict:
    """Run the configured method and write report.json and table.npz; returns the report.

    The output directory exists while a run is under way (search checkpoints live there). Bad input
    found before or during the run removes a directory this run created; an interrupted run leaves it
    for ``--resume``.
    """
    if isinstance(config["sparsity"], (list, tuple)):
        return run_sparsity_list(config, ctx)
    total_start = perf_counter()
    logger = getLogger()
    resume = config["resume"]
    if resume:
        if not os.path.isdir(resume):
            raise BadInput(f"--resume={resume}: no such output directory of an interrupted run")
        if os.path.isfile(os.path.join(resume, "report.json")) and not os.path.isfile(
                os.path.join(resume, CHECKPOINT_FILENAME)):
            raise BadInput(f"the run in {resume} already finished: see {os.path.join(resume, 'report.json')}")
        config["output_dir"] = resume
    output_dir = config["output_dir"] or default_output_dir(config)
    config["output_dir"] = output_dir
    check_writable(output_dir)
    ctx = ctx or prepare(config)
    method = get_method(config["method"])
    ctx.checkpoint_path = os.path.join(output_dir, CHECKPOINT_FILENAME)
    ctx.resume = bool(resume) and method.resumable
    b = ctx.budget
    logger.info(
        f"budget: {b.budget_params} of {b.full_params} parameters (sparsity {b.sparsity}) for "
        f"{b.n_users} users and {b.n_items} items, sizes in [{b.d_min}, {b.d_max}], method {config['method']}"
    )
    created = not os.path.exists(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    try:
        selection = method.select(ctx)
    except BadInput:
        if created:
            shutil.rmtree(output_dir, ignore_errors=True)
        raise
    if selection.budget_applied and not b.fits(selection.sizes):  # a method bug must never produce a report over budget
        raise RuntimeError(f"method {config['method']} returned sizes outside the budget")
    if not b.sizes_in_range(selection.sizes):
        raise RuntimeError(f"method {config['method']} returned sizes outside [d_min, d_max]")
    if selection.keep is not None and not np.array_equal(selection.keep.sum(axis=1), selection.sizes):
        raise RuntimeError(f"method {config['method']} returned sizes that do not count its element mask")
    ctx.masked.load(selection.state, selection.sizes, selection.keep)
    valid = ctx.evaluate(ctx.valid_data)
    test = ctx.evaluate(ctx.test_data)
    timings = {k: float(selection.timings.get(k, 0.0)) for k in ("pretrain", "search", "retrain")}
    timings["total"] = perf_counter() - total_start
    report = build_report(ctx, selection, valid, test, timings)
    meta = dict(artifact_meta(config, b), tables_per_entity=b.tables_per_entity)
    report["artifact_bytes"] = save_artifact(os.path.join(output_dir, "table.npz"), ctx.model, ctx.masked, meta)
    if b.memory_budget is not None:
        report["memory_budget"] = b.memory_budget
        if selection.budget_applied and report["artifact_bytes"] > b.memory_budget:  # exact up to its margin
            raise RuntimeError(f"artifact is {report['artifact_bytes']} bytes, over memory_budget {b.memory_budget}")
    save_run_config(output_dir, config)
    report["pictures"] = write_pictures(method, ctx, selection, report, output_dir)
    _write_json_atomic(os.path.join(output_dir, "report.json"), report)
    if os.path.exists(ctx.checkpoint_path):  # finished: the report and artifact supersede it
        os.remove(ctx.checkpoint_path)
    kept = (f"kept {report['kept_params']} <= budget {report['budget_params']} parameters" if selection.budget_applied
            else f"kept {report['kept_params']} parameters, realised sparsity {report['realized_sparsity']:.4f} "
                 f"(budget {report['budget_params']} not applied by this method's settings)")
    logger.info(f"test {', '.join(f'{k} {v:.4f}' for k, v in report['test'].items())}; {kept}")
    return report


def write_pictures(method, ctx: RunContext, selection, report: dict, output_dir: str) -> list:
    """sizes.png for every run, search.png where the method has a trajectory; the names written. A picture
    that cannot be drawn (matplotlib missing or failing) costs a warning, never the run."""
    b = ctx.budget
    title = (f"{report['model']} on {report['dataset']}, {report['method']}, sparsity {b.sparsity:g}, seed "
             f"{report['seed']}: kept {report['kept_params']} of {b.full_params} parameters")
    written = []
    try:
        plot_sizes(os.path.join(output_dir, "sizes.png"), selection.sizes, ctx.user_freq, ctx.item_freq, b, title)
        written.append("sizes.png")
        if method.plot_search(os.path.join(output_dir, "search.png"), selection.search, title, b):
            written.append("search.png")
    except Exception as exc:  # pictures are a convenience: the report and artifact are already final
        getLogger().warning(f"could not draw the run's pictures in {output_dir}: {type(exc).__name__}: {exc}")
    return written


def member_dir(output_dir: str, sparsity: float) -> str:
    return os.path.join(output_dir, f"sparsity-{sparsity}")


def run_sparsity_list(config, ctx: RunContext | None = None) -> dict:
    """RULE with ``sparsity`` a list: one context, one training and one set of estimator pairs (both cached,
    so every budget after the first reuses them), one search per budget. Each budget gets the report and
    artifact of a single run in ``<output_dir>/sparsity-<s>/``; ``<output_dir>/reports.json`` lists them.
    Every budget is checked before anything is trained. Returns {"config": {"output_dir"}, "reports": [...]}."""
    sparsities = [float(s) for s in config["sparsity"]]
    if config["resume"]:
        raise BadInput("--resume is for BET runs; run the sparsity list again (RULE reuses its cached training)")
    output_dir = config["output_dir"] or default_output_dir(config)
    check_writable(output_dir)
    config["sparsity"] = sparsities[0]
    try:
        ctx = ctx or prepare(config)
        budgets = {s: make_budget(s, config["d_max"], config["d_min"], ctx.masked.n_users, ctx.masked.n_items,
                                  ctx.budget.tables_per_entity) for s in sparsities}
        get_method(config["method"]).check_budgets(ctx, list(budgets.values()))
    finally:
        config["sparsity"] = sparsities
    created = not os.path.exists(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    reports, listing = [], []
    try:
        for s in sparsities:
            config["sparsity"], config["output_dir"] = s, member_dir(output_dir, s)
            ctx.budget = budgets[s]
            report = run(config, ctx)
            reports.append(report)
            listing.append({"sparsity": s, "report": os.path.relpath(member_dir(output_dir, s), output_dir) +
                            "/report.json", "table": os.path.relpath(member_dir(output_dir, s), output_dir) +
                            "/table.npz", "budget_params": report["budget_params"],
                            "kept_params": report["kept_params"], "test": report["test"],
                            "timings_s": report["timings_s"]})
    except BadInput:
        if created:
            shutil.rmtree(output_dir, ignore_errors=True)
        raise
    finally:
        config["sparsity"], config["output_dir"] = sparsities, output_dir
    _write_json_atomic(os.path.join(output_dir, "reports.json"),
                       {"method": config["method"], "sparsities": sparsities, "reports": listing})
    return {"config": {"output_dir": output_dir}, "reports": reports}


def quick_start(model: str, dataset: str, config_file_list=None, config_dict=None) -> dict:
    """Programmatic entry point, as RecBole's ``run_recbole``: returns the report dict."""
    config = make_config(model, dataset, config_file_list, config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logging.getLogger().info(f"recbole-bet: {model} on {dataset}, method {config['method']}")
    try:
        return run(config)
    except KeyError as exc:  # a key a model needs but the config lacks
        raise BadInput(f"missing config key {exc}; add it to a --config_files YAML or as --KEY=VALUE") from None


__all__ = ["quick_start", "run", "prepare", "RunContext", "REPORT_METRICS"]
