"""Synthetic Korean movie reviews for tests (the real data is never committed).

A review is neutral phrases around one judgement: a positive or negative predicate, negated
by `안` ("not") in half of them (`안 재밌다`: not fun). The label is the predicate's
polarity flipped by the negation: an XOR no bag of words separates (character n-grams within
words never see `안` beside its predicate), while a model reading syllables in order learns
it. Movies group reviews as in the real data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

POSITIVE = ["재밌다", "좋았다", "감동적이다", "웃기다", "볼만하다"]
NEGATIVE = ["지루하다", "아깝다", "별로다", "짜증난다", "유치하다"]
NEUTRAL = [
    "주말에 봤는데",
    "친구랑 같이",
    "어제 극장에서",
    "원작을 읽고",
    "CGV에서 봤음",
    "2시간 동안",
    "솔직히",
    "감독 전작보다",
    "음악은",
    "ㅋㅋㅋㅋ",
    "👍",
    "진짜",
]


def reviews_frame(n: int = 500, unlabeled: int = 30, movies: int = 60, seed: int = 0):
    """`n` labeled and `unlabeled` reviews in the data contract's columns."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n + unlabeled):
        positive, negated = bool(rng.integers(0, 2)), bool(rng.integers(0, 2))
        label = int(positive != negated)
        judgement = str(rng.choice(POSITIVE if positive else NEGATIVE))
        before = [str(w) for w in rng.choice(NEUTRAL, size=int(rng.integers(1, 3)))]
        after = [str(w) for w in rng.choice(NEUTRAL, size=int(rng.integers(0, 2)))]
        words = [*before, *(["안"] if negated else []), judgement, *after]
        rows.append(
            {
                "id": str(1000 + i),
                "document": " ".join(words),
                "label": str(label) if i < n else "",
                "date": f"15.0{1 + i % 9}.1{i % 10}",
                "movie_id": str(500 + int(rng.integers(0, movies))),
                "rating": str(9 if label else 2),
            }
        )
    return pd.DataFrame(rows)


def write_reviews(path: Path, frame: pd.DataFrame) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, sep="\t", index=False)
    return path


# Tiny params for a reviews project: a one-trial search over a small net.
TINY_REVIEWS = {
    "task": "reviews",
    "seed": 3,
    "ingest": {"source": "reviews.tsv"},
    "reviews": {"max_length": 32, "min_count": 1, "explain_examples": 8},
    "tune": {
        "sampler": "random",
        "n_trials": 1,
        "max_epochs": 2,
        "search_space": {
            "embed_size": {"choices": [16]},
            "hidden_size": {"choices": [32]},
            "layers": {"choices": [1]},
            "kernel_size": {"choices": [3]},
            "dropout": {"choices": [0.1]},
            "learning_rate": {"choices": [0.01]},
            "batch_size": {"choices": [16]},
            "ngram_buckets": {"choices": [4096]},
        },
    },
    "train": {"max_epochs": 25, "patience": 4},
}
