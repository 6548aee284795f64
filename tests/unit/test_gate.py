"""The paired gate: each test against its textbook form, the gate's decision beside the point
rule, and the decision's way into MLflow and the champion history (a local SQLite store)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from loopline.offline import gate
from loopline.offline.evaluate import Decision, judge, score, score_classes, should_promote
from loopline.offline.gate import GateTest, Paired, RowOutcomes, paired_test
from loopline.params import parse_params

RULE = Paired(alpha=0.05, seed=3, resamples=499)


def classifier_scores(labels: np.ndarray, predicted: np.ndarray, classes: int = 2):
    return score_classes(labels, np.eye(classes)[predicted] * 0.8 + 0.2 / classes)


def flipped(labels: np.ndarray, rows: np.ndarray) -> np.ndarray:
    out = labels.copy()
    out[rows] = 1 - out[rows]
    return out


def hair_better(errors: np.ndarray) -> np.ndarray:
    """The same errors but one row's halved: a lower RMSE, no evidence of a better model."""
    out = errors.copy()
    out[0] /= 2
    return out


# ---------------------------------------------------------------------- the tests


def test_diebold_mariano_without_overlap_is_the_paired_t_test():
    # With one step the HLN-corrected DM statistic equals the paired t statistic exactly.
    rng = np.random.default_rng(0)
    a, b = rng.gamma(2.0, size=200), rng.gamma(2.1, size=200)
    statistic, p = gate.diebold_mariano(a, b, overlap=1)
    t = stats.ttest_rel(a, b, alternative="less")
    assert statistic == pytest.approx(t.statistic, rel=1e-9)
    assert p == pytest.approx(t.pvalue, rel=1e-9)


def test_diebold_mariano_widens_for_overlapping_windows():
    # Losses that share targets across 6 windows (an MA(5) differential): the HAC variance
    # over overlap-1 lags is larger, so the same mean is less significant.
    rng = np.random.default_rng(1)
    shocks = rng.normal(size=605)
    d = np.convolve(shocks, np.ones(6) / 6, mode="valid")[:600] - 0.08
    one = gate.diebold_mariano(d, np.zeros_like(d), overlap=1)
    six = gate.diebold_mariano(d, np.zeros_like(d), overlap=6)
    assert six[1] > one[1]
    assert abs(six[0]) < abs(one[0])


def test_diebold_mariano_edge_cases():
    same = np.ones(50)
    assert gate.diebold_mariano(same, same, 3) == (0.0, 1.0)  # identical: no evidence
    assert gate.diebold_mariano(same * 0.5, same, 3)[1] == 0.0  # always lower by the same
    assert gate.diebold_mariano(np.arange(3.0), np.ones(3), overlap=24)[1] == 1.0  # too few
    with pytest.raises(ValueError, match="at least 2"):
        gate.diebold_mariano(np.ones(1), np.ones(1))


def test_mcnemar_is_the_exact_binomial_test_on_discordant_rows():
    mine = np.array([1] * 30 + [0] * 5 + [1] * 60 + [0] * 5, bool)
    theirs = np.array([0] * 30 + [1] * 5 + [1] * 60 + [0] * 5, bool)
    share, p = gate.mcnemar(mine, theirs)
    assert share == pytest.approx(30 / 35)
    assert p == pytest.approx(stats.binomtest(30, 35, 0.5, alternative="greater").pvalue)
    assert gate.mcnemar(mine, mine) == (0.5, 1.0)


def test_vectorized_f1_matches_sklearn():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(2)
    for classes in (2, 4):
        y, p = rng.integers(0, classes, 300), rng.integers(0, classes, 300)
        average = "binary" if classes == 2 else "macro"
        expected = f1_score(y, p, labels=range(classes), average=average, zero_division=0.0)
        assert gate._f1(y, p, classes) == pytest.approx(expected)


def test_the_bootstrap_interval_is_seeded_and_brackets_the_difference():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 400)
    a = RowOutcomes(y, flipped(y, np.arange(0, 400, 5)), np.ones(400), 2)  # 80% right
    b = RowOutcomes(y, flipped(y, np.arange(0, 400, 4)), np.ones(400), 2)  # 75% right
    first = paired_test(a, b, "f1", True, RULE)
    assert first == paired_test(a, b, "f1", True, RULE)
    assert first.method == gate.BOOTSTRAP
    assert first.interval[0] <= first.difference <= first.interval[1]
    assert first.difference > 0
    accuracy = paired_test(a, b, "accuracy", True, RULE)
    assert accuracy.method == gate.MCNEMAR and accuracy.difference == pytest.approx(0.05)


# ---------------------------------------------------------------------- the decision


def test_a_win_inside_the_noise_is_held_by_the_paired_gate_and_promoted_by_the_point_rule():
    # The case: 0.0004 accuracy on 15,400 rows (6 rows), from 200 discordant rows.
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 15_400)
    wrong = rng.permutation(15_400)
    champion = classifier_scores(y, flipped(y, wrong[:1000]))
    candidate = classifier_scores(y, flipped(y, np.r_[wrong[103:1000], wrong[1000:1097]]))
    assert candidate.accuracy - champion.accuracy == pytest.approx(6 / 15_400)
    baselines = {"majority": classifier_scores(y, np.zeros_like(y))}
    point = should_promote(candidate, champion, baselines, metric="accuracy", higher_is_better=True)
    assert point.promote and point.test is None and point.rule == "point"
    paired = should_promote(
        candidate, champion, baselines, metric="accuracy", higher_is_better=True, paired=RULE
    )
    assert not paired.promote
    assert paired.test.method == "mcnemar" and paired.test.p_value > 0.3
    assert any("not significantly better" in r for r in paired.reasons)


def test_a_clearly_better_forecaster_passes_the_paired_gate():
    rng = np.random.default_rng(6)
    truth = rng.normal(size=(300, 4))
    champion = score(truth, truth + rng.normal(scale=1.0, size=truth.shape), 4)
    candidate = score(truth, truth + rng.normal(scale=0.7, size=truth.shape), 4)
    persistence = score(truth, truth + rng.normal(scale=2.0, size=truth.shape), 4)
    decision = should_promote(candidate, champion, {"persistence": persistence}, paired=RULE)
    assert decision.promote
    test = decision.test
    assert test.method == "diebold-mariano" and test.p_value < 1e-6 and test.statistic < 0
    assert test.difference == pytest.approx(candidate.rmse - champion.rmse)
    assert test.interval[1] < 0  # the whole interval says "lower RMSE"
    # Worse than a baseline: held whatever the champion test says.
    held = should_promote(candidate, champion, {"oracle": score(truth, truth, 4)}, paired=RULE)
    assert not held.promote


def test_the_point_rule_is_unchanged_by_rows_travelling_with_the_scores():
    rng = np.random.default_rng(7)
    truth = rng.normal(size=(50, 2))
    noise = rng.normal(size=truth.shape)
    champion = score(truth, truth + noise, 2)
    candidate = score(truth, truth + hair_better(noise), 2)
    assert candidate.rmse < champion.rmse
    point = should_promote(candidate, champion, {})
    assert point == Decision(True, point.reasons)
    assert point.reasons == [
        f"beats the champion: RMSE {candidate.rmse:.4g} < {champion.rmse:.4g}"
        f" (champion {champion.rmse:.4g}, min_improvement 0)"
    ]
    assert not should_promote(candidate, champion, {}, paired=RULE).promote
    assert "per_row" not in candidate.to_dict()
    assert set(candidate.to_dict()) == {"rmse", "mae", "rows"}
    assert "per_row" not in classifier_scores(np.array([0, 1]), np.array([0, 1])).to_dict()


def test_the_paired_gate_refuses_scores_without_their_rows():
    from loopline.offline.evaluate import Scores

    bare = Scores(1.0, 1.0, 10)
    with pytest.raises(ValueError, match="each row"):
        should_promote(bare, Scores(2.0, 2.0, 10), {}, paired=RULE)
    assert should_promote(bare, None, {}, paired=RULE).promote  # no champion: no test


def test_judge_follows_params():
    rng = np.random.default_rng(8)
    truth = rng.normal(size=(40, 1))
    noise = rng.normal(size=truth.shape)
    scores = {
        "model": score(truth, truth + hair_better(noise)),
        "champion": score(truth, truth + noise),
        "naive": score(truth, truth + 3.0),
    }
    paired = judge(scores, parse_params({}), None)
    assert paired.decision.rule == "paired" and not paired.decision.promote
    point = judge(scores, parse_params({"evaluate": {"gate": "point"}}), None)
    assert point.decision.rule == "point" and point.decision.promote


def test_the_decision_tracks_its_test_under_loopline_gate():
    test = GateTest("mcnemar", 0.8, 0.01, (0.001, 0.02), 0.05, 0.01, 100)
    metrics, tags = Decision(True, ["x"], test, "paired").tracking()
    assert metrics["loopline.gate.p_value"] == 0.01
    assert metrics["loopline.gate.interval_low"] == 0.001
    assert tags == {
        "loopline.gate.rule": "paired",
        "loopline.gate.method": "mcnemar",
        "loopline.gate.promote": "true",
    }
    assert Decision(True, ["x"], test, "paired").to_dict()["test"]["p_value"] == 0.01
    nan = GateTest("diebold-mariano", float("nan"), 1.0, (0.0, 1.0), 0.05, 0.0, 3)
    assert "loopline.gate.statistic" not in nan.tracking()[0]


# ---------------------------------------------------------------------- MLflow and history


def test_the_paired_test_reaches_the_run_and_the_champion_history(tmp_path):
    from loopline import registry
    from loopline.offline import publishing
    from loopline.offline.tracking import RunTracker, record_evaluation
    from tests.unit.test_publishing import LINEAGE, candidate

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = RunTracker.start(uri, "toy-runs", tmp_path / "mlruns", "gate", {})
    rng = np.random.default_rng(9)
    truth = rng.normal(size=(200, 3))
    scores = {
        "model": score(truth, truth + rng.normal(scale=0.5, size=truth.shape), 3),
        "champion": score(truth, truth + rng.normal(scale=1.0, size=truth.shape), 3),
    }
    evaluation = judge(scores, parse_params({}), None)
    assert evaluation.decision.promote
    record_evaluation(tracker, evaluation, [], "1")
    run = registry.client(uri).get_run(tracker.run_id)
    assert run.data.tags["loopline.gate.method"] == "diebold-mariano"
    assert run.data.metrics["loopline.gate.p_value"] < 0.05

    published, moved = publishing.publish(
        tracker, "toy", candidate(), evaluation, {}, LINEAGE, tmp_path
    )
    entry = registry.champion_history(uri, "toy")[-1]
    assert entry["to"] == published.version == moved["to"]
    assert entry["gate"]["method"] == "diebold-mariano"
    assert entry["gate"]["p_value"] == pytest.approx(evaluation.decision.test.p_value)
    assert "significantly better" in entry["why"]
