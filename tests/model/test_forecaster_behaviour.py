"""Behavioural checks on a trained forecaster: invariance, direction, minimum function."""

from __future__ import annotations

import numpy as np
import pytest

from loopline.offline.evaluate import score
from loopline.offline.features import build_features
from loopline.offline.split import split_and_fit, without_test
from loopline.offline.train import predict, train_model
from loopline.params import parse_params
from loopline.tasks import get_task
from loopline.tasks.forecast.windows import make_windows
from tests.conftest import TINY

SOLAR = get_task("solar")


@pytest.fixture(scope="module")
def trained():
    params = parse_params(
        {**TINY, "ingest": {"end": "2021-04-01"}, "train": {"max_epochs": 8, "patience": 3}}
    )
    rows = SOLAR.load_builtin(params)
    rows = rows[rows.timestamp < "2021-04-01"]
    frame, spec = build_features(SOLAR, rows, params)
    frame, spec = split_and_fit(SOLAR, SOLAR.add_labels(frame, spec), spec, params)
    hparams = {
        "hidden_size": 16,
        "num_layers": 1,
        "dropout": 0.0,
        "learning_rate": 0.01,
        "batch_size": 32,
        "window": 24,
        "cell": "gru",
    }
    result, spec = train_model(SOLAR, without_test(frame, "timestamp"), spec, hparams, params)
    val = make_windows(frame, spec, spec.options.window, target_set="val", history_sets=("gap",))
    return result.model, spec, val


def test_forecasts_are_physical(trained):
    model, spec, val = trained
    out = predict(model, val.x)
    assert out.shape == (len(val), spec.options.horizon)
    assert (out >= 0).all()
    assert out.max() < spec.options.system["pdc0_w"] * 1.2


def test_a_forecast_does_not_depend_on_its_batch(trained):
    model, _, val = trained
    alone = predict(model, val.x[:1])
    together = predict(model, val.x[:64])[:1]
    np.testing.assert_allclose(alone, together, rtol=1e-5, atol=1e-3)


def test_night_hours_get_less_power_than_daytime(trained):
    model, _, val = trained
    out = predict(model, val.x)
    hours_ahead = (val.keys["timestamp"].dt.hour.to_numpy()[:, None] + np.arange(1, 25)) % 24
    # Greensboro is UTC-5: 04:00-09:00 UTC is deep night, 16:00-19:00 UTC midday.
    night = out[(hours_ahead >= 4) & (hours_ahead <= 9)]
    midday = out[(hours_ahead >= 16) & (hours_ahead <= 19)]
    assert night.mean() < 0.1 * midday.mean()


def test_beats_the_climatological_mean(trained):
    model, spec, val = trained
    mean_forecast = np.full_like(val.y, spec.target_mean)
    assert score(val.y, predict(model, val.x)).rmse < score(val.y, mean_forecast).rmse
