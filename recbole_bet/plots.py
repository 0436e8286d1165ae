"""Pictures of a run, written beside report.json: the chosen sizes, and each method's own trajectory.

- ``sizes.png`` (every run): each user's and item's size against its training-frequency rank (log scale),
  with the budget's mean size per entity, ES's equal size and d_max marked.
- ``search.png``, for a method with a trajectory (``Method.plot_search``): BET's fitness per iteration coloured by
  strategy, predicted against actual fitness, and the best so far; ESAPN's kept parameters and validation score
  per epoch; RULE's best estimate per evolution round.

matplotlib (Agg, no display needed) is imported only here.
"""
from __future__ import annotations

import numpy as np

STRATEGY_COLOURS = {"predicted": "tab:blue", "random": "tab:orange", "nearest": "tab:green", "anchor": "tab:red"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(plt, fig, path, title: str) -> bool:
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_sizes(path, sizes: np.ndarray, user_freq: np.ndarray, item_freq: np.ndarray, budget, title: str) -> None:
    """Sizes (users then items) against frequency rank, one panel per entity."""
    plt = _pyplot()
    sizes = np.asarray(sizes)
    n_users = budget.n_users
    mean_size = budget.budget_units / budget.n_entities  # what the budget allows per user/item on average
    es_size = min(budget.d_max, budget.budget_units // budget.n_entities)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, name, part, freq in ((axes[0], "users", sizes[:n_users], user_freq),
                                 (axes[1], "items", sizes[n_users:], item_freq)):
        order = np.argsort(-np.asarray(freq), kind="stable")
        rank = np.arange(1, len(order) + 1)
        ax.scatter(rank, part[order], s=3, alpha=0.5, color="tab:blue", label="chosen size", rasterized=True)
        ax.axhline(mean_size, color="tab:red", lw=1, label=f"budget: {mean_size:.2f} per entity")
        ax.axhline(es_size, color="tab:gray", lw=1, ls="--", label=f"ES size {es_size}")
        ax.axhline(budget.d_max, color="black", lw=0.8, ls=":", label=f"d_max {budget.d_max}")
        ax.set_xscale("log")
        ax.set_xlabel(f"{name} by training frequency (rank, most frequent first)")
        ax.set_title(f"{name}: mean size {part.mean():.2f}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("embedding size")
    axes[1].legend(fontsize=8, loc="upper right")
    _finish(plt, fig, path, title)


def plot_bet_search(path, search: dict, title: str) -> bool:
    """BET: fitness per iteration by strategy with the best so far, predicted against actual fitness, and the
    retrained actions' validation quality against their search fitness."""
    plt = _pyplot()
    iterations = search.get("iterations") or []
    if not iterations:
        return False
    t = np.array([m["t"] for m in iterations])
    fitness = np.array([m["fitness"] for m in iterations])
    predicted = np.array([np.nan if m["predicted_fitness"] is None else m["predicted_fitness"] for m in iterations])
    strategies = [m["strategy"] for m in iterations]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for strategy in dict.fromkeys(strategies):
        mask = np.array([s == strategy for s in strategies])
        axes[0].scatter(t[mask], fitness[mask], s=14, label=strategy, color=STRATEGY_COLOURS.get(strategy))
        axes[1].scatter(fitness[mask], predicted[mask], s=14, label=strategy, color=STRATEGY_COLOURS.get(strategy))
    axes[0].plot(t, np.maximum.accumulate(fitness), color="black", lw=1, label="best so far")
    axes[0].set_xlabel("iteration t")
    axes[0].set_ylabel("fitness (validation quality / pretrained)")
    axes[0].set_title("probed actions")
    axes[0].legend(fontsize=8)
    finite = np.isfinite(predicted)
    if finite.any():
        lo = float(min(fitness[finite].min(), predicted[finite].min()))
        hi = float(max(fitness[finite].max(), predicted[finite].max()))
        axes[1].plot([lo, hi], [lo, hi], color="gray", lw=0.8, ls="--")
    axes[1].set_xlabel("actual fitness")
    axes[1].set_ylabel("predicted fitness (when chosen)")
    axes[1].set_title("predictor")
    retrained = search.get("retrained") or []
    if retrained:
        axes[2].scatter([r["fitness"] for r in retrained], [r["valid_quality"] for r in retrained], color="tab:purple")
        chosen = search.get("chosen")
        if chosen is not None:
            axes[2].scatter([retrained[chosen]["fitness"]], [retrained[chosen]["valid_quality"]], s=80,
                            facecolors="none", edgecolors="black", label="chosen")
            axes[2].legend(fontsize=8)
    axes[2].set_xlabel("search fitness")
    axes[2].set_ylabel("validation quality after retraining (Eq. 13)")
    axes[2].set_title("selective retraining")
    for ax in axes:
        ax.grid(alpha=0.3)
    return _finish(plt, fig, path, title)


def plot_esapn_search(path, search: dict, title: str, budget_params: int) -> bool:
    """ESAPN: kept parameters (against the budget) and the validation score per epoch."""
    plt = _pyplot()
    per_epoch = search.get("per_epoch") or []
    if not per_epoch:
        return False
    epochs = [e["epoch"] for e in per_epoch]
    metric = next(k for k in per_epoch[0] if "@" in k)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].plot(epochs, [e["kept_params"] for e in per_epoch], marker=".")
    axes[0].axhline(budget_params, color="tab:red", lw=1, label="budget")
    axes[0].set_ylabel("kept parameters")
    axes[0].legend(fontsize=8)
    axes[1].plot(epochs, [e[metric] for e in per_epoch], marker=".", color="tab:green")
    axes[1].set_ylabel(f"validation {metric}")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    return _finish(plt, fig, path, title)


def plot_rule_search(path, search: dict, title: str) -> bool:
    """RULE: the best estimate after each evolution round."""
    plt = _pyplot()
    history = (search.get("evolution") or {}).get("best_estimate_per_cycle") or []
    if not history:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(np.arange(1, len(history) + 1), history, marker=".")
    ax.set_xlabel("evolution round")
    ax.set_ylabel("best estimated validation metric")
    ax.grid(alpha=0.3)
    return _finish(plt, fig, path, title)
