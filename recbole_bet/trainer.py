"""``BETTrainer``: BET inside an existing RecBole script, with RecBole's trainer interface.

    config = make_config("LightGCN", "ml-100k", config_dict={"sparsity": 0.9})
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = get_model(config["model"])(config, train_data.dataset).to(config["device"])
    trainer = BETTrainer(config, model)
    trainer.fit(train_data, valid_data)
    print(trainer.evaluate(test_data))
    trainer.export("table.npz")
"""
from __future__ import annotations

from recbole_bet.config import adopt_recbole_config
from recbole_bet.context import context_from
from recbole_bet.export import artifact_meta, save_artifact
from recbole_bet.methods import get_method
from recbole_bet.training import quality


class BETTrainer:
    """Searches table-level embedding sizes under the configured budget (``method`` in the config, BET by
    default), then leaves ``model`` with the chosen sizes masked in and its retrained weights."""

    def __init__(self, config, model):
        """``config`` is RecBole's ``Config`` (plain, or from ``make_config``): recbole-bet's keys it lacks take
        their defaults and ``d_max`` defaults to the model's table width (``config.adopt_recbole_config``)."""
        adopt_recbole_config(config, model)
        self.config, self.model = config, model
        self.context = self.selection = None

    def fit(self, train_data, valid_data, verbose=True, saved=True, show_progress=False, callback_fn=None):
        """Returns (best valid score, best valid result) like RecBole's Trainer.fit; the score is Eq. 13."""
        self.context = context_from(self.config, self.model, train_data, valid_data)
        self.selection = get_method(self.config["method"]).select(self.context)
        self.context.masked.load(self.selection.state, self.selection.sizes, self.selection.keep)
        return quality(self.selection.valid), self.selection.valid

    @property
    def sizes(self):
        """Chosen sizes: users then items, RecBole ids 1..n (the padding row 0 is not listed)."""
        return None if self.selection is None else self.selection.sizes

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False) -> dict:
        """Full-ranking metrics of the compressed model (its weights are already the best ones)."""
        if self.context is None:
            raise RuntimeError("call fit() before evaluate()")
        return self.context.evaluate(eval_data)

    def export(self, path: str) -> int:
        """Write the compact artifact (see recbole_bet.export); returns its size in bytes."""
        if self.context is None:
            raise RuntimeError("call fit() before export()")
        b = self.context.budget
        meta = dict(artifact_meta(self.config, b), tables_per_entity=b.tables_per_entity)
        return save_artifact(path, self.model, self.context.masked, meta)
