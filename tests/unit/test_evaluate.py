import numpy as np
import pytest

from loopline.offline.evaluate import Scores, score, should_promote, skill


def s(rmse, rows=10):
    return Scores(rmse=rmse, mae=rmse, rows=rows)


def test_score_over_every_output():
    truth = np.array([[0.0, 0.0], [0.0, 0.0]])
    pred = np.array([[3.0, 0.0], [3.0, 0.0]])
    result = score(truth, pred)
    assert result.rmse == pytest.approx(np.sqrt(4.5))
    assert result.mae == 1.5 and result.rows == 2
    assert set(result.to_dict()) == {"rmse", "mae", "rows"}
    # Rows stand alone unless the caller (the task's `loss_dependence`) says otherwise.
    assert result.per_row.overlap == 1 and score(truth, pred, overlap=4).per_row.overlap == 4


def test_the_forecast_family_scores_each_step_ahead():
    from loopline.tasks.forecast.scoring import StepScores, score_steps

    truth = np.array([[0.0, 0.0], [0.0, 0.0]])
    pred = np.array([[3.0, 0.0], [3.0, 0.0]])
    result = score_steps(truth, pred, overlap=2)
    assert isinstance(result, StepScores) and result.rmse_per_step == [3.0, 0.0]
    assert result.rmse == pytest.approx(np.sqrt(4.5)) and result.per_row.overlap == 2


def test_score_skips_rows_without_truth():
    truth = np.array([[1.0], [np.nan]])
    assert score(truth, np.array([[1.0], [5.0]])).rows == 1


def test_skill():
    assert skill(s(5), s(10)) == 0.5


def test_first_model_is_promoted_when_it_beats_the_baselines():
    decision = should_promote(s(5), None, {"persistence": s(8), "smart_persistence": s(6)})
    assert decision.promote
    assert any("no current champion" in r for r in decision.reasons)


def test_a_candidate_worse_than_a_baseline_is_held():
    decision = should_promote(s(7), None, {"persistence": s(8), "smart_persistence": s(6)})
    assert not decision.promote
    assert any("does not beat smart_persistence" in r for r in decision.reasons)


def test_candidate_must_beat_the_champion_by_the_margin():
    bases = {"persistence": s(9)}
    assert should_promote(s(5), s(6), bases).promote
    assert not should_promote(s(6), s(6), bases).promote
    assert not should_promote(s(5.9), s(6), bases, min_improvement=0.1).promote
    assert should_promote(s(5.3), s(6), bases, min_improvement=0.1).promote


def test_scores_on_different_rows_are_refused():
    with pytest.raises(ValueError, match="same rows"):
        should_promote(s(5, rows=10), s(6, rows=9), {})


def test_an_incomparable_champion_holds_the_candidate():
    decision = should_promote(
        s(1),
        None,
        {"persistence": s(9)},
        champion_incomparable="its target_column is 'kw', the candidate's 'mw'",
    )
    assert not decision.promote
    assert any("target_column is 'kw'" in r for r in decision.reasons)
    assert not any("no current champion" in r for r in decision.reasons)


def test_incomparable_specs_names_the_difference():
    from loopline.offline.evaluate import incomparable_specs
    from loopline.offline.features import FeatureSpec
    from loopline.tasks.forecast import ForecastOptions, ForecastTask

    a = FeatureSpec("forecast", ["x"], "y", ForecastOptions(horizon=24))
    assert incomparable_specs(a, a) is None
    assert incomparable_specs(a, FeatureSpec("forecast", ["x"], "z")) == (
        "its target_column is 'z', the candidate's 'y'"
    )
    # Shared code compares neutral fields only; the family knows its horizon matters.
    b = FeatureSpec("forecast", ["x", "z"], "y", ForecastOptions(horizon=12, window=48))
    assert incomparable_specs(a, b) is None
    assert incomparable_specs(a, b, ForecastTask()) == "its horizon is 12, the candidate's 24"


def test_a_champion_with_another_label_set_is_not_scored_against_the_candidate():
    from dataclasses import replace

    from loopline.offline.evaluate import incomparable_specs
    from loopline.offline.features import FeatureSpec
    from loopline.tasks.digits import DigitsTask
    from loopline.tasks.image.task import ImageOptions as DigitsOptions

    grey8 = DigitsOptions(image_size=8, channels=1, max_pixel=16.0, augment={})
    old = FeatureSpec("digits", ["px"], "label", labels=["0", "1"])
    new = replace(old, labels=["5", "6"])
    assert incomparable_specs(new, old) == "its labels are ['0', '1'], the candidate's ['5', '6']"
    grey = replace(old, options=grey8)
    rgb = replace(old, options=replace(grey8, channels=3))
    task = DigitsTask()
    assert incomparable_specs(rgb, grey, task) == "its channels is 1, the candidate's 3"
    assert incomparable_specs(grey, replace(grey, labels=["0", "1"]), task) is None
