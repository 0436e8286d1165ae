"""BET (Qu et al., WSDM 2024): sampler, fitness predictor, search loop, checkpoints, and the method."""
from recbole_bet.methods.bet.method import BET

__all__ = ["BET"]
