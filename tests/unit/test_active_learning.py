"""Active-learning selection: each strategy picks the rows it should, reproducibly."""

from __future__ import annotations

import numpy as np
import pytest

from loopline.offline.active_learning import (
    entropy,
    least_confidence,
    margin,
    select,
    vote_entropy,
)

P = np.array(
    [
        [0.99, 0.01],  # sure
        [0.51, 0.49],  # a coin toss
        [0.80, 0.20],
        [0.30, 0.70],
    ]
)


@pytest.mark.parametrize("strategy", ["least_confidence", "margin", "entropy"])
def test_uncertainty_strategies_put_the_coin_toss_first_and_the_sure_row_last(strategy):
    picked = select(strategy, 4, probabilities=P)
    assert picked[0] == 1 and picked[-1] == 0
    assert sorted(picked.tolist()) == [0, 1, 2, 3]


def test_the_three_scores_agree_on_two_classes_but_differ_on_three():
    assert np.argsort(least_confidence(P)).tolist() == np.argsort(entropy(P)).tolist()
    assert np.argsort(margin(P)).tolist() == np.argsort(entropy(P)).tolist()
    three = np.array([[0.4, 0.4, 0.2], [0.45, 0.3, 0.25]])
    assert margin(three)[0] > margin(three)[1]  # a tie at the top: smallest margin
    assert least_confidence(three)[1] < least_confidence(three)[0]


def test_committee_picks_the_rows_its_members_disagree_on():
    agree = [[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]]
    split = [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]
    committee = np.stack([np.array([agree[i], split[i]]) for i in range(3)])  # 3 members
    assert vote_entropy(committee).tolist()[0] == 0.0
    assert select("committee", 1, committee=committee).tolist() == [1]


def test_random_is_seeded_and_covers_the_pool():
    a = select("random", 3, pool_size=10, seed=5)
    assert a.tolist() == select("random", 3, pool_size=10, seed=5).tolist()
    assert a.tolist() != select("random", 3, pool_size=10, seed=6).tolist()
    assert sorted(select("random", 10, pool_size=10).tolist()) == list(range(10))


def test_ties_are_broken_reproducibly():
    flat = np.full((6, 2), 0.5)
    assert (
        select("entropy", 6, flat, seed=1).tolist() == select("entropy", 6, flat, seed=1).tolist()
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategy": "smart", "n": 1, "probabilities": P}, "unknown strategy 'smart'"),
        ({"strategy": "margin", "n": 1}, "needs the model's probabilities"),
        ({"strategy": "committee", "n": 1, "probabilities": P}, "committee's probabilities"),
        ({"strategy": "entropy", "n": 1, "probabilities": np.ones((2, 2))}, "sum to 1"),
        ({"strategy": "entropy", "n": 1, "probabilities": np.ones(3)}, "shape"),
    ],
)
def test_bad_input_is_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        select(**kwargs)
