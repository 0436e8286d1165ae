"""BET's search loop (paper Algorithm 1), independent of RecBole.

Each iteration samples m candidate actions, picks one by the strategy of the iteration, probes it (the
caller finetunes and scores the model: ``probe(sizes) -> fitness``), adds it to the population and
updates the fitness predictor N times. Anchors (``bet_anchors``, not in the paper) take the first iterations
instead: named actions probed as they are, so that the population starts with them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from time import perf_counter
from typing import Callable

import numpy as np
import torch

from recbole_bet.methods.bet.predictor import PredictorTrainer
from recbole_bet.methods.bet.sampler import ActionSampler

PREDICTED, RANDOM, NEAREST, ANCHOR = "predicted", "random", "nearest", "anchor"


def strategy_for(t: int, selection: str = "schedule") -> str:
    """Paper section 3.5.1: t mod 5 in {0, 1, 2} predicted best, 3 random, 4 nearest to the best so far."""
    if selection == "random":
        return RANDOM
    return {0: PREDICTED, 1: PREDICTED, 2: PREDICTED, 3: RANDOM, 4: NEAREST}[t % 5]


@dataclass
class Member:
    """One probed action of the population."""

    t: int
    strategy: str
    sizes: np.ndarray
    encoded: torch.Tensor  # the predictor's parameter-free encoding, (1, ...)
    fitness: float
    predicted_fitness: float
    kept_params: int
    seconds: float
    anchor: str | None = None  # the anchor's name, for an anchor iteration


@dataclass
class SearchState:
    population: list = field(default_factory=list)
    max_candidate_kept_params: int = 0

    def best(self) -> Member:
        return max(self.population, key=lambda m: m.fitness)

    def ranked(self) -> list:
        """The distinct actions, fittest first (ties: earlier first)."""
        ranked, seen = [], set()
        for member in sorted(self.population, key=lambda m: (-m.fitness, m.t)):
            key = member.sizes.tobytes()
            if key not in seen:
                seen.add(key)
                ranked.append(member)
        return ranked

    def top(self, k: int) -> list:
        """The k fittest distinct actions, fittest first (ties: earlier first)."""
        return self.ranked()[:k]

    def top_and_anchors(self, k: int) -> list:
        """The k fittest distinct actions, then every anchor not among them, earliest first.

        Why: on NGCF a probe (a short finetuning from the pretrained weights) can rank a one-size-per-side anchor far
        below where a full training takes it (0.95 seed 2021: es-users probed at 0.70 against 0.83, retrained at
        validation NDCG@20 0.3272 against 0.3080; docs/reproduction.md), so the retraining gets to judge them."""
        top = self.top(k)
        kept = {m.sizes.tobytes() for m in top}
        for member in sorted((m for m in self.population if m.anchor is not None), key=lambda m: m.t):
            if member.sizes.tobytes() not in kept:
                kept.add(member.sizes.tobytes())
                top.append(member)
        return top

    def top_both_sides(self, k: int, n_users: int) -> list:
        """The k actions to retrain, from both sides of the user/item split: the fittest action's side
        (users holding at least half of its units, or less) gives the ceil(k/2) fittest of its side, the other
        side its floor(k/2) fittest; a side with too few members leaves its places to the other. Fittest first.

        Why: on ml-100k LightGCN the fittest actions all put nearly the whole budget on one side, which side
        varies with the seed, and the two sides retrain 0.010-0.023 test Recall@20 apart (docs/reproduction.md),
        while five retrainings of one side end within 0.7% of each other on validation NDCG@20."""
        ranked = self.ranked()
        if not ranked:
            return []
        user_heavy = [float(m.sizes[:n_users].sum()) >= 0.5 * float(m.sizes.sum()) for m in ranked]
        same = [m for m, side in zip(ranked, user_heavy) if side == user_heavy[0]]
        other = [m for m, side in zip(ranked, user_heavy) if side != user_heavy[0]]
        n_other = min(k // 2, len(other))
        n_same = min(k - n_other, len(same))
        n_other = min(k - n_same, len(other))
        return sorted(same[:n_same] + other[:n_other], key=lambda m: (-m.fitness, m.t))


def iteration_seed(seed: int, t: int) -> int:
    """The seed of iteration t: every iteration draws from its own RNGs, so a resumed search repeats
    exactly what an uninterrupted one would have done, without saving RNG states."""
    return int(np.random.SeedSequence([seed, t]).generate_state(1)[0] % (2**31 - 1))


class SearchLoop:
    """``probe(sizes, t) -> fitness`` finetunes and scores one action (the caller owns the model). ``anchors``:
    (name, sizes) pairs probed at iterations 0, 1, ... in place of a sampled candidate; every iteration's sampling
    draws from its own seed, so the candidates of the later iterations are those a search without anchors draws."""

    def __init__(self, sampler: ActionSampler, predictor: torch.nn.Module, trainer: PredictorTrainer,
                 probe: Callable[[np.ndarray, int], float], candidates: int, seed: int,
                 selection: str = "schedule", logger=None, anchors=()):
        self.sampler, self.predictor, self.trainer, self.probe = sampler, predictor, trainer, probe
        self.candidates, self.seed, self.selection = candidates, seed, selection
        self.anchors = list(anchors)
        self.rng = np.random.default_rng(seed)
        self.state = SearchState()
        self.logger = logger or logging.getLogger()

    def choose(self, strategy: str, encoded: torch.Tensor) -> tuple[int, np.ndarray]:
        """Index of the chosen candidate, and the predicted fitness of every candidate."""
        with torch.no_grad():
            predicted = self.predictor(encoded).cpu().numpy()
            if strategy == PREDICTED:
                return int(np.argmax(predicted)), predicted
            if strategy == NEAREST and self.state.population:
                # both embedded by the CURRENT predictor
                best = self.predictor.embed(self.state.best().encoded)
                distances = torch.cdist(self.predictor.embed(encoded), best)[:, 0]
                return int(torch.argmin(distances)), predicted
        return int(self.rng.integers(len(predicted))), predicted

    def step(self, t: int) -> Member:
        start = perf_counter()
        if t < len(self.anchors):
            name, candidates = self.anchors[t][0], self.anchors[t][1][None, :]
            strategy, index = ANCHOR, 0
            encoded = self.predictor.encode(candidates)
            with torch.no_grad():
                predicted = self.predictor(encoded).cpu().numpy()
        else:
            name, strategy = None, strategy_for(t, self.selection)
            self.rng = np.random.default_rng(iteration_seed(self.seed, t))
            candidates = self.sampler.sample(self.candidates, self.rng)
            encoded = self.predictor.encode(candidates)
            index, predicted = self.choose(strategy, encoded)
        kept = self.sampler.budget.kept_params_many(candidates)
        self.state.max_candidate_kept_params = max(self.state.max_candidate_kept_params, int(kept.max()))
        sizes = candidates[index].astype(np.int64)
        fitness = float(self.probe(sizes, t))
        member = Member(t, strategy, sizes, encoded[index:index + 1].clone(), fitness, float(predicted[index]),
                        int(kept[index]), 0.0, name)
        self.state.population.append(member)
        population = torch.cat([m.encoded for m in self.state.population])
        targets = torch.tensor([m.fitness for m in self.state.population], dtype=torch.float32)
        self.trainer.update(population, targets)
        member.seconds = perf_counter() - start
        return member

    def restore(self, members: list, max_candidate_kept_params: int) -> None:
        """Continue after a checkpoint: the population so far (encodings are recomputed, they hold no
        learned state)."""
        for member in members:
            member.encoded = self.predictor.encode(member.sizes)
        self.state = SearchState(list(members), int(max_candidate_kept_params))

    def run(self, iterations: int, on_iteration=None) -> SearchState:
        """Run iterations len(population)..iterations-1; ``on_iteration(t, loop)`` after each."""
        start = len(self.state.population)
        progress = _progress(iterations, start)
        for t in range(start, iterations):
            member = self.step(t)
            best = self.state.best()
            what = member.strategy if member.anchor is None else f"anchor ({member.anchor})"
            self.logger.info(
                f"BET iteration {t + 1}/{iterations}: {what} action, fitness {member.fitness:.4f} "
                f"(predicted {member.predicted_fitness:.4f}), best {best.fitness:.4f}, {member.seconds:.1f}s"
            )
            if progress is not None:
                progress.set_postfix_str(f"best fitness {best.fitness:.4f}")
                progress.update(1)
            if on_iteration is not None:
                on_iteration(t, self)
        if progress is not None:
            progress.close()
        return self.state


def _progress(total: int, start: int):
    """A progress bar over iterations on an interactive terminal (log lines say the same elsewhere)."""
    import sys

    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc="BET search", ncols=100)
