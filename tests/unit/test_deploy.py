"""The delivery policy: sticky canary routing, and the verdicts on paired answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from loopline.config import DeployParams
from loopline.params import parse_params
from loopline.watch.deploy import Deployment, judge

SETTINGS = DeployParams(min_observations=100)


def deployment(mode="canary", share=10.0) -> Deployment:
    return Deployment("d1", "2", mode, share, "1", "2026-01-01T00:00:00+00:00", "ops", "")


def test_a_canary_takes_its_share_of_keys_and_each_key_always_goes_the_same_way():
    canary = deployment(share=10.0)
    keys = [f"site-{n}" for n in range(10_000)]
    routed = [canary.routes(k) for k in keys]
    assert 0.09 < np.mean(routed) < 0.11
    assert routed == [canary.routes(k) for k in keys]  # sticky
    other = Deployment("d2", "2", "canary", 10.0, "1", "", "", "")
    assert routed != [other.routes(k) for k in keys]  # another deployment, another draw
    assert not any(deployment("shadow").routes(k) for k in keys[:100])


def records(n: int, right_a: float, right_b: float, seed: int = 0, errors_b: int = 0):
    """`n` reviews answered by both sides (champion as control, challenger as canary),
    each side right with the given probability, and people's labels for all of them."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, n)
    names = np.array(["negative", "positive"])
    rows = []
    for role, version, right in (("control", "1", right_a), ("canary", "2", right_b)):
        correct = rng.random(n) < right
        said = np.where(correct, truth, 1 - truth)
        for i in range(n):
            output = {"label": names[said[i]]}
            if role == "canary" and i < errors_b:
                output = {"error": "non-finite output"}
            rows.append(
                {
                    "model_version": version,
                    "role": role,
                    "api": "predict",
                    "key": f"r{i}",
                    "origin": None,
                    "output": output,
                    "latency_ms": 2.0,
                }
            )
    labels = pd.DataFrame({"id": [f"r{i}" for i in range(n)], "label": truth})
    return pd.DataFrame(rows), labels


@pytest.fixture(scope="module")
def reviews():
    return parse_params({"task": "reviews"}).plugin


def verdict(reviews, n, a, b, **more):
    found, labels = records(n, a, b, **more)
    return judge(found, deployment(), reviews, None, pd.DataFrame(), labels, SETTINGS)


def test_a_better_challenger_is_promoted_a_worse_one_rolled_back(reviews):
    better = verdict(reviews, 400, 0.7, 0.9)
    assert better.decision == "promote", better
    assert better.statistics["p_value_better"] < 0.05 and better.statistics["rows"] == 400
    worse = verdict(reviews, 400, 0.9, 0.7)
    assert worse.decision == "rollback" and "worse" in worse.reason


def test_too_few_observations_wait_and_no_difference_waits_then_ends(reviews):
    few = verdict(reviews, 50, 0.7, 0.9)
    assert few.decision == "wait" and "50 of 100 paired" in few.reason
    same = verdict(reviews, 400, 0.8, 0.8, seed=3)
    assert same.decision == "wait" and "no significant difference" in same.reason
    found, labels = records(400, 0.8, 0.8, seed=3)
    ended = judge(
        found,
        deployment(),
        reviews,
        None,
        pd.DataFrame(),
        labels,
        DeployParams(min_observations=100, max_observations=400),
    )
    assert ended.decision == "rollback" and "no difference after 400" in ended.reason


def test_a_challenger_that_errs_more_is_rolled_back_before_quality_is_judged(reviews):
    erring = verdict(reviews, 400, 0.7, 0.9, errors_b=20)
    assert erring.decision == "rollback" and erring.reason.startswith("errors 5.00%")
