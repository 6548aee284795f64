"""The TF-IDF baseline and the movie-disjoint split of the reviews task (fixtures here)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from loopline.config import SplitParams
from loopline.offline.split import grouped_split
from loopline.tasks.text.baseline import train_text_baseline

GOOD = ["정말 재밌어요", "최고의 영화 ㅋㅋ", "배우 연기 좋네요", "또 보고 싶다"]
BAD = ["너무 지루해요", "최악의 영화 ㅡㅡ", "돈 아깝다", "시간 낭비였네요"]


def reviews(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    texts = [rng.choice([BAD, GOOD][y]) for y in labels]
    return pd.DataFrame({"document": texts, "label": labels, "movie_id": rng.integers(0, 40, n)})


def test_the_baseline_learns_endings_and_words():
    train, test = reviews(300, 0), reviews(100, 1)
    baseline = train_text_baseline(train["document"].tolist(), train["label"].to_numpy())
    assert baseline.accuracy(test["document"].tolist(), test["label"].to_numpy()) >= 0.95
    assert baseline.probabilities(["지루해요"]).shape == (1, 2)


def test_the_baseline_refuses_one_label_only():
    with pytest.raises(ValueError, match="two labels"):
        train_text_baseline(["좋아요", "최고"], np.array([1, 1]))


def test_no_movie_appears_in_two_sets():
    frame = grouped_split(reviews(2000, 2), SplitParams(), "movie_id", salt="3")
    sets = frame.groupby("movie_id")["split"].nunique()
    assert (sets == 1).all()
    shares = frame["split"].value_counts(normalize=True)
    assert set(shares.index) == {"train", "val", "test"}
    assert 0.65 <= shares["train"] <= 0.9  # whole movies: close to 0.8, not exact
    again = grouped_split(reviews(2000, 2), SplitParams(), "movie_id", salt="3")
    assert again["split"].tolist() == frame["split"].tolist()


def test_a_grouped_split_names_a_missing_or_too_small_group_column():
    with pytest.raises(ValueError, match="'film'"):
        grouped_split(reviews(10, 0), SplitParams(), "film", salt="0")
    tiny = reviews(10, 0).assign(movie_id=1)
    with pytest.raises(ValueError, match="at least 3 distinct"):
        grouped_split(tiny, SplitParams(), "movie_id", salt="0")
