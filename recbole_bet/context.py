"""What every method runs inside: the data, the stock model with masked tables, the budget, the scorer.

Built by the run (``pipeline.prepare``) or around a model a RecBole script built (``trainer.BETTrainer``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from time import perf_counter

import numpy as np
import torch
from recbole.utils import init_seed

from recbole_bet.budget import Budget, make_budget, make_memory_budget
from recbole_bet.export import artifact_meta, artifact_overhead_bytes
from recbole_bet.masking import MaskedTables, find_tables, plain_state_dict, tables_per_entity
from recbole_bet.methods import get_method_class
from recbole_bet.models import attach_full_sort, use_csr_adjacency
from recbole_bet.training import Scorer, train_to_convergence
from recbole_bet.trimming import Trimmer


@dataclass
class RunContext:
    """Everything a method needs, built once per run."""

    config: object
    dataset: object
    train_data: object
    valid_data: object
    test_data: object
    model: torch.nn.Module
    masked: MaskedTables
    budget: Budget
    init_state: dict  # the freshly initialised weights: "from scratch" restarts here
    user_freq: np.ndarray  # training interactions per user (no padding row)
    item_freq: np.ndarray
    scorer: Scorer
    trimmer: Trimmer  # where a fixed-mask action trains: LightGCN on its kept columns only (trim_columns)
    checkpoint_path: str = ""  # where a method that searches checkpoints its progress
    resume: bool = False  # continue from checkpoint_path
    # one entry per training to convergence in this run (Convergence.record plus label and seconds): the report's
    # "trainings", so a reader sees whether each converged or hit the epoch cap
    trainings: list = field(default_factory=list)

    def evaluate(self, data) -> dict:
        return self.scorer.evaluate(data)

    def reseed(self, seed: int | None = None) -> None:
        """Reset every RNG a training run draws from, so its result does not depend on what ran before
        (whether pretraining ran or came from the cache, or where an interrupted run was resumed)."""
        seed = self.config["seed"] if seed is None else seed
        init_seed(seed, self.config["reproducibility"])
        self.train_data.generator.manual_seed(seed)

    def train_to_convergence(self, label: str) -> dict:
        """Train ``model`` as it stands to convergence (recorded in ``trainings``); returns the best validation."""
        return train_to_convergence(self.config, self.model, self.train_data, self.valid_data, record=self.trainings,
                                    label=label)

    def train_from(self, state: dict, sizes=None, keep=None, label: str = "retrain"):
        """Train to convergence from ``state`` with the given prefix sizes or element mask fixed, RNGs reseeded
        first: (trained weights, validation result, seconds)."""
        start = perf_counter()
        target, columns = self.trimmer.place(state, sizes, keep, reseed=self.reseed)
        valid = train_to_convergence(self.config, target.model, self.train_data, self.valid_data,
                                     record=self.trainings, label=label)
        if columns is not None:  # trained on the kept columns only (trimming.py): back into the full model
            self.trainings[-1]["columns"] = len(columns)
            self.trimmer.write_back(target, columns, sizes, keep)
        return plain_state_dict(self.model), valid, perf_counter() - start

    def train_from_scratch(self, sizes, label: str = "from scratch"):
        """Fresh weights, the given sizes, RecBole's Trainer to convergence: (state, valid, seconds)."""
        return self.train_from(self.init_state, sizes, label=label)


def training_pairs(train_dataset) -> tuple[np.ndarray, np.ndarray]:
    """0-based (user, item) indices of the training interactions (RecBole's ids less the padding row)."""
    inter = train_dataset.inter_feat
    return inter[train_dataset.uid_field].numpy() - 1, inter[train_dataset.iid_field].numpy() - 1


def _frequencies(train_dataset, n_users: int, n_items: int):
    users, items = training_pairs(train_dataset)
    return np.bincount(users, minlength=n_users), np.bincount(items, minlength=n_items)


def context_from(config, model, train_data, valid_data, test_data=None, dataset=None) -> RunContext:
    """A run context around a model the caller built (as RecBole users do) and its data loaders."""
    use_csr_adjacency(attach_full_sort(model))
    train_dataset = train_data.dataset
    tables = find_tables(model, train_dataset.user_num, train_dataset.item_num)
    masked = MaskedTables(model, tables, config["d_max"])
    if config["memory_budget"] is not None:
        element_masks = get_method_class(config["method"]).uses_element_masks(config)  # values store their column
        overhead = artifact_overhead_bytes(model, masked, artifact_meta(config, None), element_masks)
        budget = make_memory_budget(config["memory_budget"], overhead, config["d_max"], config["d_min"],
                                    masked.n_users, masked.n_items, tables_per_entity(tables), element_masks)
    else:
        budget = make_budget(config["sparsity"], config["d_max"], config["d_min"], masked.n_users, masked.n_items,
                             tables_per_entity(tables))
    user_freq, item_freq = _frequencies(train_dataset, masked.n_users, masked.n_items)
    return RunContext(config, dataset, train_data, valid_data, test_data, model, masked, budget,
                      plain_state_dict(model), user_freq, item_freq, Scorer(config, model),
                      Trimmer(config, train_dataset, masked))
