"""RecBole ``Config`` with recbole-bet's YAML layers, and validation of recbole-bet's keys.

Layers, later wins: RecBole's defaults < properties/overall.yaml < properties/model/<MODEL>.yaml <
properties/dataset/<DATASET>.yaml < the dataset's own <data_path>/<DATASET>/<DATASET>.yaml (written by
``convert --sample_users``) < the user's --config_files < config_dict < --key=value.
"""
from __future__ import annotations

import os
from pathlib import Path

import yaml
from recbole.config import Config
from recbole.utils import ModelType

from recbole_bet import compat
from recbole_bet.budget import ONE_SIZE_PER_SIDE, parse_bytes, validate_budget_keys
from recbole_bet.errors import BadInput
from recbole_bet.methods import METHODS
from recbole_bet.models import configure_width

RULE_GROUPINGS = ("random", "popularity")
ESAPN_BUDGET_MODES = ("cap", "none")
# each method's own keys start with its prefix; none of them shapes pretraining or the shared training keys
METHOD_KEY_PREFIXES = ("bet_", "es_", "pep_", "sseds_", "esapn_", "rule_", "magprune_", "ciess_", "optembed_")
DEFAULT_SPARSITY = 0.9  # SPEC; overall.yaml leaves sparsity empty so that memory_budget can replace it


def anchor_names(config) -> list:
    """``bet_anchors`` as a list of names: a YAML list, a comma-separated string (``--bet_anchors=es,es-users``),
    or none (``[]``, ``none``, empty)."""
    value = config["bet_anchors"]
    if isinstance(value, str):  # from the command line: "es,es-users" or "[es, es-users]"
        value = [name.strip(" '\"") for name in value.strip().strip("[]").split(",")]
        value = [name for name in value if name and name.lower() != "none"]
    if value is None:
        return []
    return [str(name) for name in (value if isinstance(value, (list, tuple)) else [value])]  # a scalar: checked as a name


def properties_dir() -> Path:
    """``properties/`` of a checkout, or the copy installed inside the package."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "properties", here.parent / "properties"):
        if (candidate / "overall.yaml").is_file():
            return candidate
    raise FileNotFoundError("recbole-bet's properties/ folder is missing from this installation")


def config_files_for(model: str, dataset: str, extra=None, dataset_yaml: str | None = None) -> list[str]:
    props = properties_dir()
    files = [props / "overall.yaml", props / "model" / f"{model}.yaml", props / "dataset" / f"{dataset}.yaml"]
    found = [str(f) for f in files if f.is_file()] + ([dataset_yaml] if dataset_yaml else [])
    for f in extra or []:
        # a bare profile name ("quick") means properties/<name>.yaml, also for installed packages
        bundled = props / (f if f.endswith(".yaml") else f"{f}.yaml")
        if not os.path.isfile(f) and os.sep not in f and bundled.is_file():
            f = str(bundled)
        if not os.path.isfile(f):
            raise BadInput(f"config file {f} does not exist; check --config_files")
        found.append(f)
    return found


_MODEL_PACKAGES = ("general_recommender", "context_aware_recommender", "sequential_recommender",
                   "knowledge_aware_recommender")


def check_model_name(model: str) -> None:
    """RecBole's own lookup tracebacks on an unknown name (it imports exlib_recommender, which needs
    lightgbm/xgboost) and on a wrongly cased one (``lightgcn``): refuse those with a clear message."""
    import importlib
    import importlib.util

    for package in _MODEL_PACKAGES:
        path = f"recbole.model.{package}.{str(model).lower()}"
        try:
            found = importlib.util.find_spec(path) is not None and hasattr(importlib.import_module(path), model)
        except (ImportError, ValueError):
            found = False
        if found:
            model_type = getattr(getattr(importlib.import_module(path), model), "type", None)
            if package != "general_recommender":
                raise BadInput(_not_general(model, model_type))
            return
    raise BadInput(f"unknown model {model!r}; use a RecBole general recommender such as LightGCN, NGCF, NeuMF or BPR")


def _not_general(model: str, model_type) -> str:
    kind = getattr(model_type, "name", "other").lower()
    return (f"model {model} is a {kind} recommender, not a general one with user/item embedding tables to "
            "compress; use a RecBole general recommender such as LightGCN, NGCF, NeuMF or BPR")


def make_config(model: str, dataset: str, config_file_list=None, config_dict=None) -> Config:
    """Build and validate the effective configuration; raises BadInput on anything a user must fix."""
    compat.apply()
    if not model or not dataset:
        raise BadInput("both --model and --dataset are required, e.g. --model=LightGCN --dataset=ml-100k")
    check_model_name(model)
    files = config_files_for(model, dataset, config_file_list)
    config = _build(model, dataset, files, config_dict)
    # the dataset folder's own properties (a converted sample's): where it is depends on data_path, which
    # any layer may set, so it is looked for once the layers are merged, and the config built again with it
    own = os.path.join(config["data_path"], f"{dataset}.yaml")
    if os.path.isfile(own):
        config = _build(model, dataset, config_files_for(model, dataset, config_file_list, own), config_dict)
    if config["MODEL_TYPE"] != ModelType.GENERAL:
        raise BadInput(_not_general(model, config["MODEL_TYPE"]))
    validate(config)
    configure_width(config, config["d_max"])
    return config


def _build(model: str, dataset: str, files: list, config_dict) -> Config:
    try:
        return Config(model=model, dataset=dataset, config_file_list=files, config_dict=config_dict or {})
    except ValueError as exc:
        if "is not the name of an existing model" in str(exc):
            raise BadInput(
                f"unknown model {model!r}; use a RecBole general recommender such as LightGCN, NGCF, NeuMF or BPR"
            ) from None
        raise BadInput(f"bad configuration: {exc}") from None
    except SyntaxError as exc:
        raise BadInput(f"bad command line: {exc}") from None


# what recbole-bet's methods read from RecBole's evaluation: BET's fitness (Eq. 13) and the report
NEEDED_METRICS = ("Recall", "NDCG")
NEEDED_TOPK = (5, 10, 20)


def adopt_recbole_config(config, model) -> None:
    """Make a plain RecBole ``Config`` (built without ``make_config``) usable by recbole-bet, in place.

    recbole-bet's own keys that the config lacks take their defaults from ``properties/overall.yaml`` and
    ``properties/model/<MODEL>.yaml`` (RecBole's keys, and any key the user set, are left alone); ``d_max``
    defaults to the width of the model's user/item tables; Recall and NDCG at 5, 10 and 20 are added to the
    metrics if missing (BET's fitness needs them). Then the keys are validated as ``make_config`` does.
    A config from ``make_config`` passes through unchanged."""
    from recbole_bet.masking import find_tables

    loader = Config._build_yaml_loader(None)
    props = properties_dir()
    defaults = {}
    for path in (props / "overall.yaml", props / "model" / f"{config['model']}.yaml"):
        if path.is_file():
            with open(path) as fh:
                defaults.update(yaml.load(fh, Loader=loader) or {})
    user_keys = set(config.final_config_dict)
    for key, value in defaults.items():
        if key not in config.final_config_dict and key != "d_max":  # d_max: the tables' own width, below
            config[key] = value
    tables = find_tables(model, model.n_users, model.n_items)
    widths = sorted({t.module.embedding_dim for t in tables})
    if config.final_config_dict.get("d_max") is None:
        if len(widths) != 1:
            raise BadInput(f"the user/item tables of {config['model']} have different widths {widths}; "
                           "recbole-bet needs one width, d_max")
        config["d_max"] = widths[0]
    elif widths != [config["d_max"]]:
        shown = widths[0] if len(widths) == 1 else widths
        raise BadInput(f"d_max={config['d_max']} but the user/item tables of {config['model']} are {shown} wide; "
                       f"leave d_max unset to compress the tables as built, or build the model with its width key "
                       f"(e.g. embedding_size) set to {config['d_max']}")
    if "esapn_candidate_sizes" not in user_keys and config["d_max"] != defaults.get("d_max"):
        # the paper's sizes are for d_max 128: scale the default ladder to the tables' width
        scale = config["d_max"] / defaults["d_max"]
        config["esapn_candidate_sizes"] = sorted({max(1, int(d * scale)) for d in defaults["esapn_candidate_sizes"]})
    metrics = list(config["metrics"] or [])
    lower = {m.lower() for m in metrics}
    config["metrics"] = metrics + [m for m in NEEDED_METRICS if m.lower() not in lower]
    topk = config["topk"]
    topk = [topk] if isinstance(topk, int) else list(topk or [])
    config["topk"] = sorted(set(topk) | set(NEEDED_TOPK))
    validate(config)


def _positive_int(config, key, minimum=1):
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise BadInput(f"{key} must be an integer >= {minimum}, got {value!r} (e.g. --{key}={max(minimum, 1)})")


def validate(config) -> None:
    """Check recbole-bet's own keys; feasibility of the budget is checked once the data is loaded."""
    if config["memory_budget"] is not None:
        if config["sparsity"] is not None:
            raise BadInput("give either sparsity or memory_budget, not both (e.g. --memory_budget=2MB alone)")
        parse_bytes(config["memory_budget"])
        validate_budget_keys(0.5, config["d_max"], config["d_min"])
    method = config["method"]
    if method not in METHODS:
        raise BadInput(f"unknown method {method!r}; choose one of {', '.join(METHODS)} (e.g. --method=es)")
    if config["memory_budget"] is None:
        if config["sparsity"] is None:
            config["sparsity"] = DEFAULT_SPARSITY
        sparsities = config["sparsity"]
        if isinstance(sparsities, (list, tuple)):
            validate_sparsity_list(sparsities, method)
        else:
            sparsities = [sparsities]
        for sparsity in sparsities:
            validate_budget_keys(sparsity, config["d_max"], config["d_min"])
    if not isinstance(config["fused_adam"], bool):
        raise BadInput(f"fused_adam must be true or false, got {config['fused_adam']!r}")
    if not isinstance(config["trim_columns"], bool):
        raise BadInput(f"trim_columns must be true or false, got {config['trim_columns']!r}")
    for key in ("bet_iterations", "bet_candidates", "bet_finetune_epochs", "bet_retrain_top_k",
                "bet_predictor_updates", "bet_predictor_batch_size", "bet_halving_epochs"):
        _positive_int(config, key)
    if config["bet_finetune_batch_size"] != "auto":
        value = config["bet_finetune_batch_size"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadInput(f"bet_finetune_batch_size must be 'auto' or an integer >= 1, got {value!r} "
                           "(e.g. --bet_finetune_batch_size=10000, the paper's)")
    for key, allowed in (("es_fill", ("frequency", "none")), ("es_init", ("scratch", "pretrained")),
                         ("sseds_init", ("pretrained", "scratch")), ("bet_sampler", ("exact", "paper", "paper_filled")),
                         ("bet_distribution_draw", ("per_candidate", "per_iteration")),
                         ("bet_retrain_init", ("scratch", "pretrained")),
                         ("bet_retrain_columns", ("prefix", "magnitude", "choose")),
                         ("bet_retrain_schedule", ("top_k", "halving")),
                         ("bet_retrain_pick", ("fittest", "both_sides", "fittest_and_anchors")),
                         ("bet_sides", ("independent", "tied")),
                         ("bet_probe_seed", ("per_iteration", "shared"))):
        if config[key] not in allowed:
            raise BadInput(f"{key} must be {' or '.join(repr(a) for a in allowed)}, got {config[key]!r}")
    if config["bet_retrain_columns"] == "magnitude" and config["bet_retrain_init"] != "pretrained":
        raise BadInput("bet_retrain_columns: magnitude keeps the largest pretrained entries, so it needs "
                       "bet_retrain_init: pretrained (got scratch, whose columns are all alike); use "
                       "--bet_retrain_columns=prefix or --bet_retrain_init=pretrained")
    reuse = config["bet_reuse_run"]
    if reuse is not None and reuse != "":
        if not isinstance(reuse, str) or not os.path.isdir(reuse):
            raise BadInput(f"bet_reuse_run must be the output_dir of a finished BET run, got {reuse!r} (no such folder)")
        adds_choose = config["bet_retrain_columns"] == "choose" and config["bet_retrain_init"] == "pretrained" \
            and config["memory_budget"] is None
        if method != "bet" or not (adds_choose or config["bet_retrain_pick"] == "fittest_and_anchors"):
            raise BadInput("bet_reuse_run adds trainings to a finished BET run: bet_retrain_columns: choose's (with "
                           "bet_retrain_init: pretrained and no memory_budget) or bet_retrain_pick: "
                           "fittest_and_anchors's, so it needs --method=bet with one of them")
    anchors = anchor_names(config)
    unknown = [name for name in anchors if name not in ONE_SIZE_PER_SIDE]
    if unknown or len(set(anchors)) != len(anchors):
        raise BadInput(f"bet_anchors must name distinct actions among {', '.join(ONE_SIZE_PER_SIDE)} (or none), got "
                       f"{config['bet_anchors']!r} (e.g. --bet_anchors=es,es-users,es-items)")
    if method == "bet" and len(anchors) > config["bet_iterations"]:
        raise BadInput(f"bet_anchors names {len(anchors)} actions but bet_iterations is {config['bet_iterations']}: "
                       "each anchor takes one of the search's iterations")
    share = config["es_user_share"]
    if share is not None and (isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1):
        raise BadInput(f"es_user_share must be a number in [0, 1] (the users' share of the budget) or null "
                       f"(every row the same size), got {share!r}")
    window = config["convergence_window"]
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise BadInput(f"convergence_window must be an integer >= 0 (epochs; 0: RecBole's patience rule), got {window!r}")
    tol = config["convergence_tol"]
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or tol < 0:
        raise BadInput(f"convergence_tol must be a number >= 0 (a relative gain, e.g. 0.001), got {tol!r}")
    if method == "bet" and config["bet_retrain_top_k"] > config["bet_iterations"]:
        raise BadInput(
            f"bet_retrain_top_k ({config['bet_retrain_top_k']}) cannot exceed bet_iterations "
            f"({config['bet_iterations']}): only that many actions are evaluated"
        )
    if config["bet_predictor"] not in ("deepsets", "size_vector"):
        raise BadInput(f"bet_predictor must be 'deepsets' or 'size_vector', got {config['bet_predictor']!r}")
    beta_max = config["bet_beta_max"]
    if not isinstance(beta_max, dict) or any(
            isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 for v in beta_max.values()):
        raise BadInput(f"bet_beta_max must map distribution names to positive numbers, got {beta_max!r}")
    if set(beta_max) - {"powerlaw", "truncnorm", "truncexpon", "lognorm"}:
        raise BadInput(f"bet_beta_max keys must be among powerlaw, truncnorm, truncexpon, lognorm; got {sorted(beta_max)}")
    if config["pep_threshold_granularity"] not in ("global", "dimension", "row"):
        raise BadInput("pep_threshold_granularity must be 'global', 'dimension' or 'row', "
                       f"got {config['pep_threshold_granularity']!r}")
    value = config["pep_threshold_init"]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadInput(f"pep_threshold_init must be a number (the threshold is sigmoid of it), got {value!r}")
    if config["sseds_granularity"] not in ("field", "row"):
        raise BadInput(f"sseds_granularity must be 'field' or 'row', got {config['sseds_granularity']!r}")
    if config["sseds_saliency_batches"] is not None:
        _positive_int(config, "sseds_saliency_batches")
    minimums = config["magprune_min_per_row"]
    if isinstance(minimums, (list, tuple)) and minimums:
        values = list(minimums)
    else:
        values = [minimums]
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise BadInput(f"magprune_min_per_row must be an integer >= 1 or a list of them (candidates chosen on "
                       f"validation), got {minimums!r}")
    if not isinstance(config["magprune_retrain"], bool):
        raise BadInput(f"magprune_retrain must be true or false, got {config['magprune_retrain']!r}")
    if config["bet_selection"] not in ("schedule", "random"):
        raise BadInput(f"bet_selection must be 'schedule' or 'random', got {config['bet_selection']!r}")
    if method == "esapn":
        validate_esapn(config)
    if method == "rule":
        validate_rule(config)
    if method == "ciess":
        validate_ciess(config)
    if method == "optembed":
        validate_optembed(config)
    for key in ("epochs", "train_batch_size", "eval_batch_size", "stopping_step", "eval_step"):
        _positive_int(config, key)  # RecBole's Trainer would fail on these with a traceback
    for key in ("learning_rate", "bet_finetune_lr", "bet_predictor_lr"):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise BadInput(f"{key} must be a positive number, got {value!r}")
    if not isinstance(config["dataset"], str) or "/" in config["dataset"]:
        raise BadInput(f"dataset must be a RecBole dataset name, got {config['dataset']!r}")
    check_dataset_files(config)


def validate_esapn(config) -> None:
    """ESAPN's keys, checked only when it runs (its default sizes need d_max >= 128, other methods' runs do not)."""
    sizes = config["esapn_candidate_sizes"]
    if (not isinstance(sizes, (list, tuple)) or len(sizes) < 2
            or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in sizes)
            or any(b <= a for a, b in zip(sizes, sizes[1:]))):
        raise BadInput("esapn_candidate_sizes must be at least two positive integers in increasing order, "
                       f"e.g. [2,4,8,16,64,128]; got {sizes!r}")
    d_min, d_max = config["d_min"], config["d_max"]
    outside = [d for d in sizes if not d_min <= d <= d_max]
    if outside:
        raise BadInput(f"esapn_candidate_sizes must lie within [d_min, d_max] = [{d_min}, {d_max}]; {outside[0]} "
                       "does not (change esapn_candidate_sizes, d_min or d_max)")
    if config["esapn_budget"] not in ESAPN_BUDGET_MODES:
        raise BadInput("esapn_budget must be 'cap' (enlarging stops at the budget) or 'none' (the original, "
                       f"budget not applied), got {config['esapn_budget']!r}")
    for key in ("esapn_batch_size", "esapn_history", "esapn_hidden", "esapn_frequency_buckets"):
        _positive_int(config, key)
    value = config["esapn_policy_lr"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise BadInput(f"esapn_policy_lr must be a positive number, got {value!r}")
    if not isinstance(config["esapn_retrain"], bool):
        raise BadInput(f"esapn_retrain must be true or false, got {config['esapn_retrain']!r}")


def validate_ciess(config) -> None:
    """CIESS's keys (docs/config.md)."""
    for key in ("ciess_episodes", "ciess_steps", "ciess_finetune_epochs", "ciess_hidden", "ciess_walk_steps",
                "ciess_policy_delay", "ciess_updates", "ciess_batch_size"):
        _positive_int(config, key)
    for key, low, high, what in (("ciess_finetune_lr", 0, None, "a positive number"),
                                 ("ciess_lr", 0, None, "a positive number"),
                                 ("ciess_size_penalty", None, None, "a number >= 0"),
                                 ("ciess_gamma", None, 1, "a number in [0, 1)"),
                                 ("ciess_tau", 0, 1, "a number in (0, 1]"),
                                 ("ciess_exploration_noise", None, None, "a number >= 0"),
                                 ("ciess_policy_noise", None, None, "a number >= 0"),
                                 ("ciess_noise_clip", None, None, "a number >= 0")):
        value = config[key]
        bad = isinstance(value, bool) or not isinstance(value, (int, float))
        if not bad:
            bad = (value <= low if low is not None else value < 0) or (
                high is not None and (value >= high if key == "ciess_gamma" else value > high))
        if bad:
            raise BadInput(f"{key} must be {what}, got {value!r}")


def validate_sparsity_list(sparsities, method: str) -> None:
    """A list of sparsities is one RULE training specialised to each budget; other methods train per budget."""
    shown = "[" + ",".join(str(s) for s in sparsities) + "]"
    if method != "rule":
        raise BadInput(f"a list of sparsities ({shown}) is only for --method=rule, whose one training serves "
                       f"every budget; run --method={method} once per sparsity, e.g. --sparsity=0.9")
    if not sparsities:
        raise BadInput("the sparsity list is empty; give one or more values, e.g. --sparsity=[0.8,0.9,0.95]")
    if len(set(sparsities)) != len(sparsities):
        raise BadInput(f"the sparsity list {shown} repeats a value; give each sparsity once")


def validate_rule(config) -> None:
    """RULE's keys, checked only when it runs."""
    for key in ("rule_blocks", "rule_groups", "rule_estimator_pairs", "rule_estimator_users", "rule_estimator_dim",
                "rule_estimator_steps", "rule_population", "rule_sample"):
        _positive_int(config, key)
    _positive_int(config, "rule_cycles", minimum=0)
    d_max, n_blocks = config["d_max"], config["rule_blocks"]
    if d_max % n_blocks:
        example = max(k for k in range(1, min(n_blocks, d_max) + 1) if d_max % k == 0)  # nearest divisor below
        raise BadInput(f"rule_blocks ({n_blocks}) must divide d_max ({d_max}) into blocks of equal width, e.g. "
                       f"rule_blocks={example} for {d_max // example}-dimension blocks")
    if config["rule_grouping"] not in RULE_GROUPINGS:
        raise BadInput(f"rule_grouping must be 'random' or 'popularity' (RULE-P), got {config['rule_grouping']!r}")
    value = config["rule_lambda"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise BadInput(f"rule_lambda must be a number >= 0 (the weight of the diversity regulariser), got {value!r}")
    value = config["rule_estimator_lr"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise BadInput(f"rule_estimator_lr must be a positive number, got {value!r}")
    if config["rule_scoring"] not in ("eq2", "dot"):
        raise BadInput(f"rule_scoring must be eq2 (the paper's Eq. 2: item blocks against the user's block-sum) or "
                       f"dot (the stock model's scoring), got {config['rule_scoring']!r}")
    if config["rule_compress"] not in ("items", "both"):
        raise BadInput(f"rule_compress must be items (the paper: users keep rule_user_blocks blocks, items are "
                       f"searched) or both (users searched too), got {config['rule_compress']!r}")
    value = config["rule_user_blocks"]
    if config["rule_compress"] == "items" and (isinstance(value, bool) or not isinstance(value, int)
                                               or not 1 <= value <= n_blocks):
        raise BadInput(f"rule_user_blocks must be a whole number of blocks from 1 to rule_blocks ({n_blocks}), "
                       f"got {value!r}")
    _positive_int(config, "rule_near_budget", minimum=0)


def validate_optembed(config) -> None:
    """OptEmbed's keys, checked only when it runs."""
    for key in ("optembed_groups", "optembed_population", "optembed_generations"):
        _positive_int(config, key)
    value = config["optembed_mutation_prob"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise BadInput(f"optembed_mutation_prob must be a number in (0, 1] (the chance that a mutation redraws "
                       f"each group's width), got {value!r}")
    if not isinstance(config["optembed_thresholds"], bool):
        raise BadInput(f"optembed_thresholds must be true or false (learnable row-pruning thresholds in the "
                       f"supernet), got {config['optembed_thresholds']!r}")
    for key in ("optembed_threshold_alpha", "optembed_threshold_init"):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise BadInput(f"{key} must be a number >= 0, got {value!r}")


def check_dataset_files(config) -> None:
    """RecBole would try to download an unknown dataset; we only read what is on disk."""
    path = os.path.join(config["data_path"], f"{config['dataset']}.inter")
    if not os.path.isfile(path):
        raise BadInput(
            f"dataset {config['dataset']!r} not found: no {path}; put RecBole atomic files there, change "
            "--data_path, or convert LightGCN-format data with: python -m recbole_bet convert --input=DIR"
        )
    check_inter_file(path, config)


ATOMIC_TYPES = ("token", "token_seq", "float", "float_seq")


def check_inter_file(path: str, config) -> None:
    """Refuse a malformed atomic ``.inter`` file with one line that names the file and the fix, before RecBole
    reads it (RecBole tracebacks on each of these): empty, no ``name:type`` header, a header field without a
    type or with an unknown one, no user or item column, and non-numeric values in a ``float`` column that the
    config loads."""
    sep = config["field_separator"] or "\t"
    example = f"user_id:token{sep}item_id:token".replace("\t", "\\t")
    with open(path, encoding="utf-8", errors="replace") as fh:
        header = fh.readline().rstrip("\r\n")
    if not header.strip():
        raise BadInput(f"dataset file {path} is empty; it needs a header line ('{example}') and one interaction "
                       "per line")
    fields = header.split(sep)
    if not any(":" in f for f in fields):
        raise BadInput(f"dataset file {path} has no header line: its first line {header[:60]!r} must name the "
                       f"columns as name:type, separated by {sep!r} (e.g. '{example}')")
    names = []
    for field in fields:
        name, _, kind = field.partition(":")
        if not kind:
            raise BadInput(f"header field {field!r} of {path} has no :type; write it as {field}:token (ids) or "
                           f"{field}:float (numbers)")
        if kind not in ATOMIC_TYPES:
            raise BadInput(f"header field {field!r} of {path} has the unknown type {kind!r}; use one of "
                           f"{', '.join(ATOMIC_TYPES)}")
        names.append(name)
    for key, what in (("USER_ID_FIELD", "user"), ("ITEM_ID_FIELD", "item")):
        if config[key] not in names:
            raise BadInput(f"dataset file {path} has no {what} column {config[key]!r} (header: {', '.join(fields)}); "
                           f"name it {config[key]}:token, or set --{key} to the column that holds the {what} ids")
    load = config["load_col"]
    loaded = None if not isinstance(load, dict) or load.get("inter") is None else set(load["inter"])
    floats = [(i, f) for i, f in enumerate(fields) if f.endswith(":float")
              and (loaded is None or f.partition(":")[0] in loaded)]
    if floats:
        import pandas as pd

        table = pd.read_csv(path, sep=sep, usecols=[i for i, _ in floats], dtype=str, header=0,
                            keep_default_na=False, engine="python" if len(sep) > 1 else "c")
        for i, field in floats:
            values = table.iloc[:, [j for j, _ in floats].index(i)]
            bad = pd.to_numeric(values.where(values != "", "nan"), errors="coerce").isna() & (values != "")
            if bad.any():
                row = int(bad.to_numpy().argmax())
                raise BadInput(f"line {row + 2} of {path}: {values.iloc[row]!r} in column {field} is not a number; "
                               f"fix the value, or leave the column out with --load_col")


# keys that say where a run reads, writes and runs, and how it is shown: never what it computes
PLACEMENT_KEYS = frozenset({
    "output_dir", "device", "gpu_id", "use_gpu", "state", "show_progress", "checkpoint_dir", "pretrain_cache_dir",
    "log_wandb", "wandb_project", "worker", "eval_batch_size", "config_files", "resume", "local_rank", "world_size",
    "nproc", "offset", "ip", "port", "backend", "single_spec", "data_path",
})
# keys that do not change what pretraining produces (so a cached pretrained model can be reused)
_NOT_PRETRAIN_KEYS = PLACEMENT_KEYS | {
    "method", "sparsity", "d_min", "memory_budget",
    "trim_columns",  # how fixed-mask trainings run; pretraining is at full width
}


def pretrain_key_items(config) -> dict:
    """The config entries that determine the pretrained model."""
    return {
        k: v for k, v in sorted(config.final_config_dict.items())
        if k not in _NOT_PRETRAIN_KEYS and not k.startswith(METHOD_KEY_PREFIXES)
    }
