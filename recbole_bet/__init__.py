"""recbole-bet: budgeted user/item embedding tables for stock RecBole models (BET, WSDM 2024)."""

__version__ = "0.1.0"

from recbole_bet.errors import BadInput  # noqa: E402

__all__ = ["BadInput", "quick_start", "BETTrainer", "__version__"]


def __getattr__(name):
    # lazy: importing the package must not import RecBole (and torch) for the converter's sake
    if name == "quick_start":
        from recbole_bet.pipeline import quick_start

        return quick_start
    if name == "BETTrainer":
        from recbole_bet.trainer import BETTrainer

        return BETTrainer
    raise AttributeError(name)
