"""BET inside an existing RecBole script (the same steps as RecBole's own quick start).

Run from a checkout:  python docs/example_bet_trainer.py [--KEY=VALUE ...]
e.g.  python docs/example_bet_trainer.py --config_files=quick   (about a minute on two CPU cores)
"""
import sys

from recbole.data import create_dataset, data_preparation
from recbole.utils import get_model, init_logger, init_seed

from recbole_bet import BETTrainer
from recbole_bet.config import make_config


def main(extra_config_files=None):
    # make_config = RecBole's Config plus recbole-bet's properties/ layers; it also makes the tables d_max wide
    config = make_config("LightGCN", "ml-100k", config_file_list=extra_config_files,
                         config_dict={"sparsity": 0.9, "method": "bet"})
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data.dataset).to(config["device"])

    trainer = BETTrainer(config, model)
    best_score, best_valid = trainer.fit(train_data, valid_data)
    test_result = trainer.evaluate(test_data)
    print("valid:", best_valid)
    print("test:", test_result)
    print("kept parameters:", trainer.context.budget.kept_params(trainer.sizes),
          "of budget", trainer.context.budget.budget_params)
    return trainer, test_result


if __name__ == "__main__":
    files = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--config_files=")]
    main(files[0].split() if files else None)
