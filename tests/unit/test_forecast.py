"""The forecast family: its section, its baselines, solar's sites (fast, no training)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from loopline.errors import ConfigError
from loopline.params import parse_params

LOAD = {
    "task": "forecast",
    "forecast": {
        "entity": "meter",
        "time": "at",
        "target": "kw",
        "covariates": ["temp"],
        "horizon": 3,
        "lags": [2],
        "window": [4, 6],
        "season": [2, 4],
    },
}


def hourly(values: list[float], meter: str = "a", start: str = "2024-01-01") -> pd.DataFrame:
    at = pd.date_range(start, periods=len(values), freq="1h", tz="UTC")
    return pd.DataFrame({"meter": meter, "at": at, "temp": 20.0, "kw": values})


def test_the_section_sets_the_data_contract_and_the_search_space():
    params = parse_params(LOAD)
    task = params.plugin
    assert task.schema == {"meter": "string", "at": "datetime", "temp": "float", "kw": "float"}
    assert task.key_columns == ["meter", "at"] and task.time_column == "at"
    assert task.target_column == "kw" and task.split_kind == "chronological"
    assert params.tune.search_space["window"].choices == [4, 6]
    assert task.split_gap(params) == 6 and task.history_steps(params) == 6 + 4
    spec = task.new_feature_spec(params)  # the same in time: steps of its hour
    assert task.split_margin(params, spec) == pd.Timedelta("6h")
    assert task.history_span(params, spec) == pd.Timedelta("10h")
    fields = task.Serving.StreamLine.model_fields
    assert set(fields) == {"meter", "at", "temp", "kw"}


def test_the_spec_keeps_the_section_for_the_service():
    params = parse_params(LOAD)
    spec = params.plugin.new_feature_spec(params)
    options = spec.options
    assert (options.group_column, options.time_column, spec.target_column) == ("meter", "at", "kw")
    assert options.horizon == 3 and options.freq == "1h" and options.window == 0
    assert spec.options.covariates == ["temp"] and spec.options.season == [2, 4]
    assert spec.feature_columns[:2] == ["kw", "temp"] and "target_lag_2" in spec.feature_columns


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"target": "kw", "covariates": ["kw"]}, r"\['kw'\] named twice"),
        ({"target": "hour_sin"}, "names the family's features use"),
        ({"target": "load kw"}, "'load kw' must be a plain name"),
        ({"target": "kw", "freq": "hourly"}, "'hourly' is not a fixed step"),
        ({"target": "kw", "lags": [24, 24]}, "lags lists a value twice"),
        ({"target": "kw", "window": []}, "window must list at least one value"),
        ({"target": "kw", "horizon": 0}, "forecast.horizon"),
    ],
)
def test_a_section_it_cannot_work_with_is_refused_naming_the_key(section, message):
    with pytest.raises(ConfigError, match=message):
        parse_params({"task": "forecast", "forecast": section})


@pytest.mark.parametrize(
    ("raw", "moved"),
    [
        ({"features": {"freq": "1h"}}, "features.freq: moved to solar.freq"),
        ({"features": {"lags": [24]}}, "features.lags: moved to solar.lags"),
        ({"features": {"clearsky_leads": [24]}}, "moved to solar.clearsky_leads"),
        ({"labeling": {"horizon": 12}}, "labeling.horizon: moved to solar.horizon"),
        ({"evaluate": {"smart_persistence_window": 6}}, "moved to solar.smart_persistence"),
        ({"task": "forecast", "labeling": {"horizon": 6}}, "moved to forecast.horizon"),
    ],
)
def test_an_old_params_file_is_told_where_a_key_moved(raw, moved):
    with pytest.raises(ConfigError, match=moved):
        parse_params(raw)


def test_a_single_series_needs_no_entity_column():
    params = parse_params({"task": "forecast", "forecast": {"target": "kw", "lags": [1]}})
    task = params.plugin
    assert task.key_columns == ["timestamp"] and "meter" not in task.schema
    spec = task.new_feature_spec(params)
    frame = pd.DataFrame(
        {"timestamp": pd.date_range("2024-01-01", periods=4, freq="1h", tz="UTC"), "kw": 1.0}
    )
    out = task.add_features(frame, spec)
    assert (out[spec.options.group_column] == "series").all()
    assert np.isnan(out["target_lag_1"].iloc[0]) and out["target_lag_1"].iloc[1] == 1.0
    assert "entity" not in task.Serving.Request.model_fields


def test_baselines_persistence_and_seasonal_naive():
    params = parse_params(LOAD)
    task = params.plugin
    spec = task.new_feature_spec(params)
    frame = task.add_features(hourly([float(v) for v in range(10)]), spec)
    keys = frame[["meter", "at"]].iloc[[5]].reset_index(drop=True)
    base = task.baselines(frame, keys, spec, params)
    assert set(base) == {"persistence", "seasonal_naive", "seasonal_naive_4"}
    assert base["persistence"].tolist() == [[5.0, 5.0, 5.0]]
    # season 2: h=1 -> t-1, h=2 -> t, h=3 -> two seasons back from t+3: t-1
    assert base["seasonal_naive"].tolist() == [[4.0, 5.0, 4.0]]
    # season 4: h -> t + h - 4
    assert base["seasonal_naive_4"].tolist() == [[2.0, 3.0, 4.0]]


def test_a_gap_leaves_the_baseline_empty_rather_than_shifting_a_value_in():
    params = parse_params(LOAD)
    task = params.plugin
    spec = task.new_feature_spec(params)
    frame = task.add_features(hourly([float(v) for v in range(10)]).drop(index=[3]), spec)
    keys = pd.DataFrame({"meter": ["a"], "at": [pd.Timestamp("2024-01-01 05:00", tz="UTC")]})
    naive = task.baselines(frame, keys, spec, params)["seasonal_naive_4"]
    assert naive[0, 0] == 2.0 and np.isnan(naive[0, 1]) and naive[0, 2] == 4.0  # 03:00 is gone


# ---------------------------------------------------------------------- solar sites


def test_solar_sites_default_to_the_two_builtin_ones_by_coordinates():
    sites = parse_params({}).solar.sites
    assert [s.name for s in sites] == ["greensboro", "sand_point"]
    assert (sites[0].latitude, sites[0].longitude, sites[0].altitude) == (36.1, -79.95, 273.0)
    assert sites[1].timezone == "America/Anchorage"


def test_a_site_of_ones_own_as_a_mapping():
    raw = {"solar": {"sites": {"roof": {"latitude": 48.1, "longitude": 11.6, "weather": "w.csv"}}}}
    (site,) = parse_params(raw).solar.sites
    assert site.name == "roof" and site.weather == "w.csv" and site.system.pdc0_w == 5000


@pytest.mark.parametrize(
    ("site", "message"),
    [
        ({"latitude": 91, "longitude": 0}, r"site 'roof': latitude 91 is outside -90\.\.90"),
        ({"latitude": 0, "longitude": -181}, r"site 'roof': longitude -181 is outside"),
        ({"latitude": 0, "longitude": 0, "timezone": "Mars/Base"}, "timezone 'Mars/Base'"),
        ({"latitude": 0}, r"solar\.sites\.0\.longitude: Field required"),
        ({"latitude": 0, "longitude": 0, "system": {"pdc0_w": -1}}, r"system\.pdc0_w"),
    ],
)
def test_a_bad_site_is_refused_naming_the_site_and_the_key(site, message):
    with pytest.raises(ConfigError, match=message):
        parse_params({"solar": {"sites": [{"name": "roof", **site}]}})


def test_solar_system_moved_into_each_site():
    with pytest.raises(ConfigError, match=r"solar\.system moved into each site"):
        parse_params({"solar": {"system": {"pdc0_w": 4000}}})


def test_a_weather_file_is_read_in_the_sites_time_zone(tmp_path):
    from loopline.tasks.solar.sites import read_weather_file

    (tmp_path / "w.csv").write_text(
        "timestamp,ghi,dni,dhi,temp_air,wind_speed\n2021-06-01 12:00,800,700,100,25,2\n"
    )
    site = {"name": "roof", "latitude": 48, "longitude": 11, "timezone": "Europe/Berlin"}
    params = parse_params({"solar": {"sites": [{**site, "weather": "w.csv"}]}})
    weather = read_weather_file(params.solar.sites[0], str(tmp_path))
    assert weather.index[0] == pd.Timestamp("2021-06-01 10:00", tz="UTC")
    missing = parse_params({"solar": {"sites": [{**site, "weather": "nowhere.csv"}]}})
    with pytest.raises(ValueError, match=r"solar\.sites\.roof\.weather: no file"):
        read_weather_file(missing.solar.sites[0], str(tmp_path))


def test_a_site_without_weather_or_builtin_data_says_what_to_give():
    from loopline.tasks.solar.task import site_weather

    params = parse_params({"solar": {"sites": [{"name": "roof", "latitude": 1, "longitude": 1}]}})
    with pytest.raises(ValueError, match=r"solar\.sites\.roof: no weather"):
        site_weather(params.solar.sites[0], 2021, None)


def test_the_family_answers_the_neutral_hooks_from_its_options():
    """What the shared core asks a task (its hooks), the family answers from the spec's
    options: the paired test's overlap, the model check's probe and comparability."""
    from dataclasses import replace

    from loopline.tasks.forecast.options import with_window

    params = parse_params(LOAD)
    task = params.plugin
    spec = with_window(task.new_feature_spec(params), 4)
    assert task.loss_dependence(spec) == 3  # windows a step apart share 2 of 3 targets
    assert task.probe_input(spec).shape == (2, 4, len(spec.feature_columns))
    assert task.incomparable(spec, spec) is None
    longer = replace(spec, options=replace(spec.options, horizon=6))
    assert task.incomparable(spec, longer) == "its horizon is 6, the candidate's 3"
