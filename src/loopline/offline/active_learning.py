"""Active learning (the notes' chapter 9): which unlabeled rows people should label next.

Each strategy scores the pool from model outputs and the batch is the top `n` by score:
the rows the model is least sure of teach it most per label. `random` is the baseline every
strategy is measured against (`benchmarks/active_learning.py`).

- `least_confidence`: 1 − the top class probability;
- `margin`: the gap between the two most probable classes, smaller first;
- `entropy`: the entropy of the predicted distribution;
- `committee` (query by committee): the vote entropy of several models' predicted labels
  (the top tuning trials, or the last registered versions): rows they disagree on.

All functions take plain arrays; ties are broken by a seeded random order, so the same
pool, outputs and seed always give the same batch.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Strategy = Literal["random", "least_confidence", "margin", "entropy", "committee"]
STRATEGIES: tuple[str, ...] = ("random", "least_confidence", "margin", "entropy", "committee")


def _check_probabilities(probabilities: np.ndarray) -> np.ndarray:
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probabilities must be (rows, classes ≥ 2), got shape {p.shape}")
    if not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError("each row of probabilities must sum to 1")
    return p


def least_confidence(probabilities: np.ndarray) -> np.ndarray:
    return 1.0 - _check_probabilities(probabilities).max(axis=1)


def margin(probabilities: np.ndarray) -> np.ndarray:
    """Negative margin, so that a higher score still means "label this first"."""
    top2 = np.sort(_check_probabilities(probabilities), axis=1)[:, -2:]
    return -(top2[:, 1] - top2[:, 0])


def entropy(probabilities: np.ndarray) -> np.ndarray:
    p = _check_probabilities(probabilities)
    return -(p * np.log(np.clip(p, 1e-12, 1.0))).sum(axis=1)


def vote_entropy(committee: np.ndarray) -> np.ndarray:
    """`committee`: (members, rows, classes) probabilities; entropy of the members' votes."""
    c = np.asarray(committee)
    if c.ndim != 3 or c.shape[0] < 2:
        raise ValueError(f"a committee needs (members ≥ 2, rows, classes), got shape {c.shape}")
    votes = c.argmax(axis=2)  # (members, rows)
    shares = np.stack([(votes == k).mean(axis=0) for k in range(c.shape[2])], axis=1)
    return -(shares * np.log(np.clip(shares, 1e-12, 1.0))).sum(axis=1)


def select(
    strategy: Strategy,
    n: int,
    probabilities: np.ndarray | None = None,
    committee: np.ndarray | None = None,
    pool_size: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Positions (into the pool) of the next `n` rows to label, most useful first."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if strategy == "committee":
        if committee is None:
            raise ValueError("strategy 'committee' needs the committee's probabilities")
        scores = vote_entropy(committee)
    elif strategy == "random":
        size = pool_size if pool_size is not None else len(_pool_of(probabilities, committee))
        scores = np.zeros(size)
    else:
        if probabilities is None:
            raise ValueError(f"strategy {strategy!r} needs the model's probabilities")
        scores = {"least_confidence": least_confidence, "margin": margin, "entropy": entropy}[
            strategy
        ](probabilities)
    # A seeded shuffle first, then a stable sort: equal scores come out in random order.
    order = np.random.default_rng(seed).permutation(len(scores))
    ranked = order[np.argsort(-scores[order], kind="stable")]
    return ranked[: max(0, n)]


def _pool_of(probabilities, committee) -> np.ndarray:
    if probabilities is not None:
        return np.asarray(probabilities)
    if committee is not None:
        return np.asarray(committee)[0]
    raise ValueError("strategy 'random' needs the pool size or the model's probabilities")
