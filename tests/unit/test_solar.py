import numpy as np
import pandas as pd
import pytest

from loopline.params import parse_params
from loopline.tasks import get_task

SOLAR = get_task("solar")


@pytest.fixture(scope="module")
def params():
    return parse_params({"solar": {"sites": ["greensboro"]}})


@pytest.fixture(scope="module")
def january(params):
    frame = SOLAR.load_builtin(params)
    return frame[frame.timestamp < "2021-01-15"].reset_index(drop=True)


def test_builtin_source_is_real_weather_turned_into_power(january, params):
    assert list(january.columns) == list(SOLAR.schema)
    assert (january.power_w >= 0).all()
    assert january.power_w.max() <= params.solar.sites[0].system.pdc0_w
    night = january[january.ghi == 0]
    assert (night.power_w == 0).all()
    assert january.loc[january.ghi > 300, "power_w"].mean() > 1000


def test_features_are_a_pure_function_of_rows_and_spec(january, params):
    spec = SOLAR.new_feature_spec(params)
    a = SOLAR.add_features(january, spec)
    b = SOLAR.add_features(january.sample(frac=1.0, random_state=0), spec)
    pd.testing.assert_frame_equal(a, b)
    assert set(spec.feature_columns) <= set(a.columns)
    # clear-sky power tracks the measured power (clouds lower it; low sun makes it noisy)
    assert (a.power_w <= a.clearsky_w * 1.3 + 50).mean() > 0.95
    assert a[["power_w", "clearsky_w"]].corr().iloc[0, 1] > 0.75
    # the clear-sky index is the cloudiness of daylight readings, 0 when the sun is too low
    low = a.clearsky_w < 50
    assert (a.clearsky_index[low] == 0).all()
    day = a[~low]
    assert day.clearsky_index.between(0, 1.5).all()
    assert day.clearsky_index.iloc[0] == pytest.approx(
        min(day.power_w.iloc[0] / day.clearsky_w.iloc[0], 1.5)
    )
    # the lead is the clear-sky value 24 steps later
    assert a.clearsky_lead_24.iloc[0] == pytest.approx(a.clearsky_w.iloc[24], rel=1e-6)
    assert np.isnan(a.power_lag_24.iloc[:24]).all() and a.power_lag_24.iloc[24] == a.power_w.iloc[0]


def test_baselines(january, params):
    spec = SOLAR.new_feature_spec(params)
    frame = SOLAR.add_features(january, spec)
    keys = frame[["site_id", "timestamp"]].iloc[[100, 200]].reset_index(drop=True)
    base = SOLAR.baselines(frame, keys, spec, params)
    # persistence: yesterday's value at the target hour
    assert base["persistence"][0, 0] == frame.power_w.iloc[100 + 1 - 24]
    # smart persistence: last day's clear-sky index times the clear-sky power ahead
    past = frame.iloc[100 - 23 : 101]
    index = past.power_w.sum() / past.clearsky_w.sum()
    assert base["smart_persistence"][0, 5] == pytest.approx(index * frame.clearsky_w.iloc[106])


def test_persistence_never_reads_the_future_past_one_day(january, params):
    long = parse_params({"solar": {"sites": ["greensboro"], "horizon": 30}})
    spec = SOLAR.new_feature_spec(long)
    frame = SOLAR.add_features(january, spec)
    keys = frame[["site_id", "timestamp"]].iloc[[100]].reset_index(drop=True)
    persistence = SOLAR.baselines(frame, keys, spec, long)["persistence"][0]
    # step 25 is 25 h ahead: the same hour is known 23 h ago (1 day back), not 1 h ahead
    assert persistence[24] == frame.power_w.iloc[100 + 25 - 48]
    assert persistence[23] == frame.power_w.iloc[100]
