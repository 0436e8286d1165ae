"""``bet_reuse_run``: a finished BET run read back so that a run of a configuration that only adds trainings to it
repeats neither its search nor its top-k retrainings. Two things can be added: ``bet_retrain_columns: choose``'s one
training (the chosen action with its rows' largest pretrained entries) to a run that kept first columns, and
``bet_retrain_pick: fittest_and_anchors``'s retrainings of the anchors that a ``fittest`` run did not retrain.

What makes the two runs the same experiment: the pretrained model comes from the cache by the same keys, every
training reseeds from the run's seed (``RunContext.reseed``), so the chosen action's extra training is the one a
fresh ``choose`` run would make. The check is therefore on what shaped the finished run: its recorded configuration
(``run_config.json``) must equal this run's except for the keys below, and its budget must be this run's.
"""
from __future__ import annotations

import json
import os

import numpy as np

from recbole_bet.config import PLACEMENT_KEYS
from recbole_bet.errors import BadInput
from recbole_bet.export import load_artifact
from recbole_bet.masking import plain_state_dict
from recbole_bet.methods.bet.checkpoint import LATER_KEYS_DEFAULTS

# keys that may differ: where and how the runs ran, and what this reuse adds
IGNORED_KEYS = PLACEMENT_KEYS | {"bet_retrain_columns", "bet_retrain_pick", "bet_reuse_run"}


def _read_json(path: str, folder: str) -> dict:
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise BadInput(f"bet_reuse_run={folder}: no {os.path.basename(path)} there; give the output_dir of a "
                       "finished BET run") from None
    except ValueError:
        raise BadInput(f"bet_reuse_run={folder}: {os.path.basename(path)} is damaged") from None


def _comparable(recorded: dict) -> dict:
    values = {k: v for k, v in recorded.items() if k not in IGNORED_KEYS}
    for key, default in LATER_KEYS_DEFAULTS.items():  # recorded before they existed
        values.setdefault(key, default)
    return json.loads(json.dumps(values, sort_keys=True, default=str))


def differences(then: dict, now: dict) -> list:
    """The result-shaping keys whose values differ between two recorded configurations."""
    a, b = _comparable(then), _comparable(now)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def finished_run(ctx, folder: str) -> dict:
    """The finished run in ``folder``, checked against this one: its report, its chosen model's sizes and weights
    loaded from its artifact (exact, the artifact stores float32), and what this run adds (``additions``)."""
    config = ctx.config
    report = _read_json(os.path.join(folder, "report.json"), folder)
    recorded = _read_json(os.path.join(folder, "run_config.json"), folder)
    search = report.get("search") or {}
    if report.get("method") != "bet" or not search.get("retrained"):
        raise BadInput(f"bet_reuse_run={folder}: not a finished BET run (its report has no retrained actions)")
    then_columns, now_columns = search.get("retrain_columns", "prefix"), config["bet_retrain_columns"]
    then_pick, now_pick = search.get("retrain_pick", "fittest"), config["bet_retrain_pick"]
    adds = additions(config, search)
    if now_columns != then_columns and "choose" not in adds:
        raise BadInput(f"bet_reuse_run={folder}: that run retrained with bet_retrain_columns: {then_columns}, this one "
                       f"asks for {now_columns}; only a run that kept first columns (prefix) can be reused for choose")
    if now_pick != then_pick and "anchors" not in adds:
        raise BadInput(f"bet_reuse_run={folder}: that run retrained bet_retrain_pick: {then_pick} "
                       f"(bet_retrain_schedule: {search.get('retrain_schedule', 'top_k')}), this one asks for "
                       f"{now_pick}: only a top_k run of fittest can be extended, to fittest_and_anchors")
    if not adds:
        raise BadInput(f"bet_reuse_run={folder}: this run would add nothing to it (it already retrained with "
                       f"bet_retrain_columns: {then_columns} and bet_retrain_pick: {then_pick}); reuse a run that "
                       "kept first columns (prefix) for choose, or one of fittest for fittest_and_anchors")
    now = json.loads(json.dumps(config.external_config_dict, default=str))
    differ = differences(recorded.get("config") or {}, now)
    if recorded.get("model") != config["model"] or differ:
        shown = ", ".join(differ[:4]) or "model"
        raise BadInput(f"bet_reuse_run={folder}: that run was made with another configuration ({shown} differ); "
                       "reuse a run of the same model, dataset, sparsity, seed and keys")
    if report.get("budget_params") != ctx.budget.budget_params:
        raise BadInput(f"bet_reuse_run={folder}: its budget was {report.get('budget_params')} parameters, this run's "
                       f"is {ctx.budget.budget_params} (a memory_budget counts choose's column index): run it afresh")
    load_artifact(os.path.join(folder, "table.npz"), ctx.model, ctx.masked, config["model"],
                  config["dataset"].split("/")[-1])
    keep = ctx.masked.keep  # the element mask of a model that kept its rows' largest entries, as exported
    return {"report": report, "sizes": np.asarray(ctx.masked.sizes).copy(), "weights": plain_state_dict(ctx.model),
            "keep": None if keep is None else keep.copy(), "adds": adds}


def additions(config, search: dict) -> set:
    """What this run adds to a finished run's ``search``: "choose" (``bet_retrain_columns: choose``'s training, to a
    run that kept first columns and made no choice) and "anchors" (the anchors a ``fittest`` run left out, for
    ``fittest_and_anchors``); an empty set when it would add nothing."""
    adds = set()
    if (config["bet_retrain_columns"] == "choose" and search.get("retrain_columns", "prefix") == "prefix"
            and not search.get("columns_choice")):
        adds.add("choose")
    if config["bet_retrain_pick"] == "fittest_and_anchors" and search.get("retrain_pick", "fittest") == "fittest" \
            and search.get("retrain_schedule", "top_k") == "top_k":
        adds.add("anchors")
    return adds
