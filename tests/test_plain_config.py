"""BETTrainer in a plain RecBole script: RecBole's own Config (not make_config) and a model RecBole built."""
import math
import sys

import pytest

from conftest import QUICK, REPO

# the keys a quick test needs on top of the user's plain settings (the methods' own defaults otherwise)
FAST = {"epochs": 1, "bet_iterations": 2, "bet_candidates": 4, "bet_retrain_top_k": 1, "rule_estimator_pairs": 12,
        "rule_cycles": 2}


def plain_run(tmp_path, method, **extra):
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, init_seed

    from recbole_bet import BETTrainer

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["script.py"])
        config = Config(model="LightGCN", dataset="ml-100k", config_file_list=[str(REPO / QUICK)],
                        config_dict={"sparsity": 0.9, "seed": 5, "show_progress": False, "method": method,
                                     "pretrain_cache_dir": str(tmp_path / "cache"),
                                     "checkpoint_dir": str(tmp_path / "ckpt"), **FAST, **extra})
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = get_model(config["model"])(config, train_data.dataset)
    trainer = BETTrainer(config, model)
    return trainer, config, (train_data, valid_data, test_data)


@pytest.mark.parametrize("method", ["bet", "es", "mr", "pep", "sseds", "esapn", "rule", "magprune", "ciess", "optembed"])
def test_plain_recbole_config_works_for_every_method(tmp_path, method):
    trainer, config, (train_data, valid_data, test_data) = plain_run(tmp_path, method)
    assert config["d_max"] == 64  # RecBole's LightGCN default width, not recbole-bet's 128
    score, valid = trainer.fit(train_data, valid_data)
    test = trainer.evaluate(test_data)
    b = trainer.context.budget
    assert b.d_max == 64 and b.sparsity == 0.9 and b.budget_params == math.floor((1 - 0.9) * 64 * (b.n_users + b.n_items))  # SPEC
    assert b.kept_params(trainer.sizes) <= b.budget_params and 0 < score
    assert {"recall@20", "ndcg@20", "recall@5"} <= set(test) and test["recall@20"] > 0
    assert "mrr@10" in test  # the user's own RecBole metrics stay
    out = tmp_path / "table.npz"
    assert trainer.export(str(out)) == out.stat().st_size > 0


def test_plain_config_with_d_max_wider_than_the_tables_is_refused(tmp_path):
    from recbole_bet.errors import BadInput

    with pytest.raises(BadInput, match=r"d_max=128 but the user/item tables of LightGCN are 64 wide; leave d_max "
                                       r"unset .* set to 128"):
        plain_run(tmp_path, "es", d_max=128)
