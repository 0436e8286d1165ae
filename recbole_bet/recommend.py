"""Top-k recommendations from an exported artifact.

    python -m recbole_bet recommend --output_dir=DIR --user=TOKEN [--user=TOKEN ...] [--topk=10]

Rebuilds the run's dataset and split from ``DIR/run_config.json``, builds a fresh stock model, loads
``DIR/table.npz`` into it and ranks all items for each user, training items excluded: the same full
ranking the masked model was evaluated with.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

from recbole_bet.errors import BadInput

RUN_CONFIG = "run_config.json"


def save_run_config(output_dir: str, config) -> None:
    """The external configuration of a run (YAML layers and overrides merged): enough to rebuild its data."""
    external = json.loads(json.dumps(config.external_config_dict, default=str))
    record = {"model": config["model"], "dataset": config["dataset"], "config": external}
    with open(os.path.join(output_dir, RUN_CONFIG), "w") as fh:
        json.dump(record, fh, indent=1, sort_keys=True)


@torch.no_grad()
def top_k(model, train_dataset, user_ids, k: int) -> np.ndarray:
    """(len(user_ids), k) internal item ids by full ranking, padding and training items excluded."""
    from recbole.data.interaction import Interaction

    model.eval()
    uid_field = train_dataset.uid_field
    users = torch.as_tensor(np.asarray(user_ids), dtype=torch.long, device=next(model.parameters()).device)
    scores = model.full_sort_predict(Interaction({uid_field: users})).view(len(users), -1).clone()
    scores[:, 0] = -np.inf
    history = train_dataset.inter_matrix(form="csr")
    for row, uid in enumerate(users.tolist()):
        seen = history.indices[history.indptr[uid]:history.indptr[uid + 1]]
        scores[row, torch.as_tensor(seen, dtype=torch.long)] = -np.inf
    return torch.topk(scores, k, dim=1).indices.cpu().numpy()


def load_for_recommend(output_dir: str):
    """(config, train dataset, model with the artifact loaded) for a finished run's output directory."""
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from recbole_bet.config import make_config
    from recbole_bet.export import load_artifact
    from recbole_bet.masking import MaskedTables, find_tables
    from recbole_bet.models import build_model

    run_path = os.path.join(output_dir, RUN_CONFIG)
    artifact = os.path.join(output_dir, "table.npz")
    for path in (run_path, artifact):
        if not os.path.isfile(path):
            raise BadInput(f"{path} not found: --output_dir must be the output directory of a finished run")
    try:
        with open(run_path) as fh:
            record = json.load(fh)
        model_name, dataset_name, overrides = record["model"], record["dataset"], record["config"]
    except (ValueError, KeyError, TypeError):
        raise BadInput(f"{run_path} is damaged; rerun the method to recreate it") from None
    saved_argv, sys.argv = sys.argv, sys.argv[:1]  # the recommend options are not RecBole keys
    try:
        config = make_config(model_name, dataset_name, config_dict=overrides)
    finally:
        sys.argv = saved_argv
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, _, _ = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    model = build_model(config, train_data.dataset)
    masked = MaskedTables(model, find_tables(model, dataset.user_num, dataset.item_num), config["d_max"])
    load_artifact(artifact, model, masked, model_name, dataset_name)
    return config, train_data.dataset, model


def main(argv) -> int:
    parser = argparse.ArgumentParser(prog="python -m recbole_bet recommend",
                                     description="Top-k items for users, from a run's exported table.")
    parser.add_argument("--output_dir", required=True, help="output directory of a finished run")
    parser.add_argument("--user", action="append", required=True, help="user token (repeatable)")
    parser.add_argument("--topk", type=int, default=10)
    args = parser.parse_args(argv)
    if args.topk < 1:
        raise BadInput(f"--topk must be at least 1, got {args.topk}")
    config, train_dataset, model = load_for_recommend(args.output_dir)
    uid_field, iid_field = train_dataset.uid_field, train_dataset.iid_field
    unknown = [u for u in args.user if u not in train_dataset.field2token_id[uid_field]]
    if unknown:
        raise BadInput(f"unknown user token(s) {', '.join(unknown)} in dataset {config['dataset']}")
    ids = [train_dataset.field2token_id[uid_field][u] for u in args.user]
    k = min(args.topk, train_dataset.item_num - 1)
    items = top_k(model, train_dataset, ids, k)
    for token, row in zip(args.user, items):
        print(f"{token}\t{' '.join(train_dataset.id2token(iid_field, row))}")
    return 0
