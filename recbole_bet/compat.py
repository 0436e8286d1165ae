"""Every workaround for RecBole 1.2.1 on today's stack, in one place, each with its reason.

Pins that make RecBole import at all live in setup.cfg (see docs/compat.md):
``ray<=2.6.3`` (quick_start imports ray.tune), ``setuptools<81`` (that ray needs pkg_resources),
``numpy<2`` (that ray uses np.bool8), ``scipy<1.12`` (LightGCN/NGCF use dok_matrix._update).
"""
from __future__ import annotations

import warnings

import numpy as np

_applied = False


def apply() -> None:
    """Idempotent run-time patches; called before any RecBole object is built."""
    global _applied
    if _applied:
        return
    _applied = True
    # RecBole's MRR/MAP/GAUC metrics use np.float, removed in numpy 1.24.
    if not hasattr(np, "float"):
        np.float = float  # type: ignore[attr-defined]
    # RecBole's dataset code calls pandas fillna in a way pandas 2.x warns about on every load.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\..*")
    # LightGCN/NGCF build their graph with the deprecated torch.sparse.FloatTensor: a warning per build.
    warnings.filterwarnings("ignore", message=r".*[Ss]parse.*(beta|deprecated).*")


# RecBole's Trainer saves its best model with torch.save(pickle) and reloads it with torch.load, which
# torch >= 2.6 refuses (weights_only). recbole_bet.training keeps the best weights in memory instead
# (BestStateTrainer), so RecBole's checkpoint files are neither written nor unpickled.
