"""Serving features on arrays equal the offline features on the same rows (the parity that
keeps training and serving one model), and the array-side helpers (clock, ISO times)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from loopline.offline.features import fit_normalization
from loopline.params import parse_params
from loopline.tasks import get_task
from loopline.tasks.forecast.arrays import day_of_week, day_of_year, hour_of_day, iso_utc
from loopline.tasks.forecast.options import with_window
from loopline.tasks.forecast.serving import (
    Window,
    frame_inputs,
    readings_columns,
    required_readings,
    window_inputs,
)

SOLAR = get_task("solar")


def windows_of(frame: pd.DataFrame, task, key_column, key, required, starts) -> list[Window]:
    records = frame.drop(columns=[key_column] if key_column else []).to_dict("records")
    return [Window(key, readings_columns(records[s : s + required], task.schema)) for s in starts]


@pytest.fixture(scope="module")
def solar():
    params = parse_params({"solar": {"sites": ["greensboro", "sand_point"]}})
    raw = SOLAR.load_builtin(params)
    raw = raw[raw.timestamp < "2021-03-15"].reset_index(drop=True)
    spec = SOLAR.new_feature_spec(params)
    spec = with_window(fit_normalization(spec, SOLAR.add_features(raw, spec)), 24)
    return raw, spec


def test_solar_array_features_equal_the_frame_features(solar):
    raw, spec = solar
    required = required_readings(spec)
    windows = []
    for site, starts in (("greensboro", [0, 5, 700, 1380]), ("sand_point", [3, 1000])):
        rows = raw[raw.site_id == site].sort_values("timestamp")
        windows += windows_of(rows, SOLAR, "site_id", site, required, starts)
    for batch in (windows[:1], windows):  # one window; windows of two sites and months
        fast, offline = window_inputs(SOLAR, spec, batch, 24), frame_inputs(SOLAR, spec, batch, 24)
        assert fast.shape == offline.shape == (len(batch), 24, len(spec.feature_columns))
        np.testing.assert_allclose(fast, offline, rtol=0, atol=1e-6)


def test_windows_with_a_gap_take_the_frame_path_and_still_agree(solar):
    raw, spec = solar
    required = required_readings(spec)
    rows = raw[raw.site_id == "greensboro"].sort_values("timestamp")
    records = rows.drop(columns="site_id").to_dict("records")
    gapped = records[:10] + records[11 : required + 1]  # one reading missing
    window = Window("greensboro", readings_columns(gapped, SOLAR.schema))
    np.testing.assert_array_equal(
        window_inputs(SOLAR, spec, [window], 24), frame_inputs(SOLAR, spec, [window], 24)
    )


def test_forecast_family_array_features_equal_the_frame_features():
    params = parse_params(
        {
            "task": "forecast",
            "forecast": {"entity": "meter", "target": "kw", "covariates": ["temp"], "lags": [3]},
        }
    )
    task = params.plugin
    at = pd.date_range("2024-02-27 22:15", periods=400, freq="1h", tz="UTC")
    rng = np.random.default_rng(0)
    raw = pd.DataFrame(
        {"meter": "a", "timestamp": at, "temp": rng.normal(size=400), "kw": rng.random(400)}
    )
    spec = task.new_feature_spec(params)
    spec = with_window(fit_normalization(spec, task.add_features(raw, spec)), 24)
    required = required_readings(spec)
    windows = windows_of(raw, task, "meter", "a", required, [0, 17, 300])
    np.testing.assert_allclose(
        window_inputs(task, spec, windows, 24),
        frame_inputs(task, spec, windows, 24),
        rtol=0,
        atol=1e-6,
    )


def test_the_clock_from_epoch_integers_is_pandas_clock():
    stamps = pd.date_range("2019-12-30 23:45", "2024-03-02", freq="7h13min", tz="UTC")
    ns = stamps.tz_convert(None).as_unit("ns").asi8
    np.testing.assert_array_equal(hour_of_day(ns), (stamps.hour + stamps.minute / 60).to_numpy())
    np.testing.assert_array_equal(day_of_week(ns), stamps.day_of_week.to_numpy())
    np.testing.assert_array_equal(day_of_year(ns), stamps.dayofyear.to_numpy())
    assert iso_utc(ns[:3]) == [t.isoformat() for t in stamps[:3]]
    odd = ns[:2] + 500_000_000
    assert iso_utc(odd) == [pd.Timestamp(v, tz="UTC").isoformat() for v in odd]


def test_request_times_become_exact_utc_nanoseconds():
    from datetime import UTC, datetime, timedelta, timezone

    from loopline.tasks.forecast.serving import utc_datetime64

    east = timezone(timedelta(hours=9))
    aware = [
        datetime(2021, 3, 1, 12, 30, 0, 123457, tzinfo=east),
        datetime(2099, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ]
    naive = [datetime(1999, 1, 1, 0, 0, 0, 1), datetime(2021, 3, 1, 3, 30)]
    for values in (aware, naive, aware + naive):
        expected = pd.to_datetime(
            [v.astimezone(UTC).replace(tzinfo=None) if v.tzinfo else v for v in values]
        ).as_unit("ns")
        np.testing.assert_array_equal(utc_datetime64(values), expected.to_numpy())


def test_a_column_of_times_is_the_same_instants_whichever_parser_reads_it():
    """The columnar form's times: the common UTC texts go through numpy's parser, the rest
    (other zones, fractions of a second, epoch numbers) through pydantic's; both give the
    instants pandas gives, and the column keeps what was sent."""
    from pydantic import BaseModel

    from loopline.tasks.forecast.serving import InstantColumn

    class Times(BaseModel):
        t: InstantColumn

    texts = [
        ["2021-03-01T10:00:00+00:00", "2021-03-01T11:00:00+00:00"],
        ["2021-03-01T10:00:00Z", "2021-03-01 11:00:00Z"],
        ["2021-03-01T10:00:00", "2021-03-01T11:00:00"],
        ["2021-03-01T10:00:00+09:00", "2021-03-01T11:00:00.250-05:30"],
        ["2021-03-01T10:00:00Z", "2021-03-01T19:00:00+09:00", "1999-12-31T23:59:59.999999"],
        [1614592800, "2021-03-01T11:00:00Z"],
    ]
    for values in texts:
        parsed = Times.model_validate_json(json.dumps({"t": values})).t
        expected = pd.to_datetime(
            [pd.Timestamp(v, unit="s") if isinstance(v, int) else v for v in values],
            utc=True,
            format="mixed",
        ).tz_convert(None)
        np.testing.assert_array_equal(parsed.ns, expected.as_unit("ns").asi8, err_msg=str(values))
        assert len(parsed) == len(values)


def test_stream_windows_stay_the_latest_consecutive_readings_past_the_buffer_wrap():
    from types import SimpleNamespace

    params = parse_params(
        {"task": "forecast", "forecast": {"entity": "meter", "target": "kw", "lags": [2]}}
    )
    task = params.plugin
    spec = with_window(task.new_feature_spec(params), 3)  # 5 readings per window
    state = task.Serving(task, params).open_stream(SimpleNamespace(spec=spec, version="1"))
    line = task.Serving.StreamLine
    at = pd.date_range("2024-01-01", periods=40, freq="1h", tz="UTC")
    windows = []
    for n, t in enumerate(at):
        if n == 20:  # a gap: the window restarts
            continue
        ready, _ = state.push(n, line(meter="a", timestamp=t.to_pydatetime(), kw=float(n)))
        windows += [w for _, w in ready]
    kept = [n for n in range(40) if n != 20]
    ends = [n for n in kept if n >= 4 and (n < 20 or n >= 25)]
    assert len(windows) == len(ends)
    for window, end in zip(windows, ends, strict=True):
        np.testing.assert_array_equal(window.rows["kw"], np.arange(end - 4, end + 1, dtype=float))
        expected = at[end - 4 : end + 1].tz_convert(None).as_unit("ns").to_numpy()
        np.testing.assert_array_equal(window.rows["timestamp"], expected)


def test_input_rows_hand_each_reading_over_once_whatever_the_windows_repeat():
    from loopline.online.adapter import Answer

    params = parse_params({"task": "forecast", "forecast": {"entity": "meter", "target": "kw"}})
    task = params.plugin
    serving = task.Serving(task, params)
    at = pd.date_range("2024-01-01", periods=10, freq="1h").as_unit("ns").to_numpy()

    def window(key, times, first_value=0.0):
        values = np.arange(len(times), dtype=float) + first_value
        return Answer({}, source=Window(key, {"timestamp": times, "kw": values}))

    def handed(*answers):
        return [(r["meter"], r["timestamp"]) for r in serving.input_rows(list(answers))]

    first = handed(window("a", at[0:5]), window("a", at[0:5]), window("b", at[0:5]))
    assert len(first) == 10 and len(set(first)) == 10  # a window repeated in the batch: once
    assert handed(window("a", at[0:5])) == []  # the same window again: nothing new
    assert handed(window("a", at[1:6])) == [("a", "2024-01-01T05:00:00+00:00")]  # slid on
    # The same series, first and last time and length, other readings between: the new
    # ones are handed over (a window is known by its exact times, not its ends).
    odd = at[[0, 2, 3, 4, 9]]
    assert handed(window("a", odd)) == [("a", "2024-01-01T09:00:00+00:00")]
    assert handed(window("a", odd)) == []
    # Forgotten past the limit: handed over again (the live-input log stores each once).
    serving.handed_count = serving.handed_limit + 1
    assert len(handed(window("b", at[0:5]))) == 5
