"""The monitor's table, params and wide inputs: a table an earlier release made is upgraded
in place, the renamed params keys still read, a wide table is profiled and tested on a
bounded set of columns, and its path raises no flood of pandas PerformanceWarnings."""

from __future__ import annotations

import os
import warnings
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from sqlalchemy import Column as SqlColumn
from sqlalchemy import MetaData, Table, UniqueConstraint, create_engine, inspect, text

from loopline.config import MonitorParams
from loopline.offline.reference import Column, ReferenceProfile, columns_of, latest_inputs
from loopline.params import parse_params
from loopline.tasks.base import EVENT_TIME
from loopline.watch.monitor import (
    RULE,
    MonitoringStore,
    Version,
    chosen_inputs,
    latest_signals,
    monitoring_table,
    run_pass,
    trim_profile,
)

POSTGRES = os.environ.get("LOOPLINE_TEST_POSTGRES_URL")
OLD = {"period_start": "window_start", "period_end": "window_end"}  # the earlier names
WIDE = 384  # numeric inputs of the wide table (386 columns with its id and target)


# ---------------------------------------------------------------------- the table


def old_table(url: str) -> None:
    """A `monitoring` table as the release before the rename made it, with one row."""
    engine = create_engine(url)
    metadata = MetaData()
    table = monitoring_table(metadata)
    old = Table(
        "monitoring",
        MetaData(),
        *(
            SqlColumn(OLD.get(c.name, c.name), c.type, primary_key=c.primary_key)
            for c in table.columns
        ),
        UniqueConstraint("model_name", "model_version", "signal", "feature", "window_start"),
    )
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS monitoring"))
    old.create(engine)
    row = summary_row(datetime(2024, 1, 2, tzinfo=UTC))
    row.update(statistic=1.5, exceeded=True, streak=2, alarm=True, pass_id="p1")
    with engine.begin() as connection:
        connection.execute(old.insert(), [{OLD.get(k, k): v for k, v in row.items()}])
    engine.dispose()


def summary_row(start: datetime) -> dict:
    return {
        "model_name": "demo",
        "model_version": "1",
        "signal": "feature_drift",
        "feature": "*",
        "period_start": start,
        "period_end": start + timedelta(days=1),
        "rows": 24,
        "statistic": 0.5,
        "threshold": 1.0,
        "exceeded": False,
        "streak": 0,
        "alarm": False,
        "note": None,
        "pass_id": "p2",
        "computed_at": start + timedelta(days=1),
    }


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_table_with_the_old_columns_is_upgraded_in_place(tmp_path, database):
    if database == "postgresql":
        if not POSTGRES:
            pytest.skip("LOOPLINE_TEST_POSTGRES_URL is not set: no PostgreSQL (.ci/run sets it)")
        url = POSTGRES
    else:
        url = f"sqlite:///{tmp_path / 'predictions.db'}"
    old_table(url)
    assert latest_signals(url, "demo")[0]["alarm"]  # the service's gauges read it (upgrading)
    store = MonitoringStore(url)
    columns = {c["name"] for c in inspect(store.engine).get_columns("monitoring")}
    assert {"period_start", "period_end"} <= columns
    assert not any(c.endswith(("_start", "_end")) and "period" not in c for c in columns)
    watermark, streak = store.last("demo", "1", "feature_drift")
    assert watermark == pd.Timestamp("2024-01-02", tz="UTC") and streak == 2  # rows kept
    next_day = datetime(2024, 1, 3, tzinfo=UTC)
    store.add([summary_row(next_day)])
    store.add([summary_row(next_day)])  # the unique key still holds: counted once
    assert len(store.rows("demo")) == 2
    store.close()
    again = MonitoringStore(url)  # already upgraded: opens as it is
    assert len(again.rows("demo")) == 2
    with again.engine.begin() as connection:
        connection.execute(text("DROP TABLE monitoring"))  # a shared server: leave none
    again.close()


# ---------------------------------------------------------------------- params


def test_the_renamed_params_keys_still_read_with_a_warning_naming_the_new_ones():
    with pytest.warns(FutureWarning, match=r"monitor\.window was renamed monitor\.period"):
        old = MonitorParams.model_validate({"window": "6h", "min_windows": 3})
    assert (old.period, old.min_periods) == ("6h", 3)
    with pytest.raises(ValidationError, match="give only period"):
        MonitorParams.model_validate({"window": "6h", "period": "1D"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert MonitorParams(period="2h").period == "2h"
    assert MonitorParams().max_columns == 50


# ---------------------------------------------------------------------- wide inputs


def wide_rows(n: int, seed: int, start: str = "2024-01-01") -> pd.DataFrame:
    """n rows of the wide table: an id, WIDE numeric inputs (the first few constant or
    nearly so), a label, and when each row was seen."""
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(n, WIDE)).round(3)
    values[:, :5] = 1.0  # constant columns: nothing to watch
    columns = {f"x{i}": values[:, i] for i in range(WIDE)}
    frame = pd.DataFrame({"row_id": [f"r{seed}-{i}" for i in range(n)], **columns})
    frame["label"] = np.where(values[:, 10] > 0, "a", "b")
    frame["seen"] = pd.date_range(start, periods=n, freq="30min", tz="UTC")
    return frame


@pytest.fixture(scope="module")
def wide_task():
    section = {"target": "label", "id_column": "row_id", "numeric": [f"x{i}" for i in range(WIDE)]}
    params = parse_params({"task": "tabular", "tabular": section})
    task = params.plugin
    frame = wide_rows(200, seed=0).drop(columns="seen")
    return task, task.fit_features(task.new_feature_spec(params), frame)


def test_a_wide_tables_path_raises_no_performance_warning(wide_task):
    task, spec = wide_task
    frame = wide_rows(300, seed=1).drop(columns="seen")
    assert frame.shape[1] == WIDE + 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.PerformanceWarning)
        task.fit_features(spec, frame)
        task.inputs(frame, spec)
        monitored = task.monitor_inputs(frame, spec)
        profile = columns_of(monitored, 5000)
        records = pd.DataFrame({"inputs": frame.drop(columns="label").to_dict("records")})
        logged = task.logged_rows(records, spec)
        task.monitor_inputs(logged, spec).assign(more=1.0)  # one frame: adding is no flood
    assert len(profile) == WIDE


def test_the_columns_watched_are_the_models_own_first_then_the_most_varied():
    columns = {
        "constant": Column("numeric", [1.0] * 50),
        "few": Column("numeric", [float(i % 3) for i in range(50)]),
        "many": Column("numeric", [float(i) for i in range(50)]),
        "own": Column("numeric", [float(i % 2) for i in range(50)]),
    }

    class Spec:
        feature_columns = ("own",)

    assert chosen_inputs(columns, Spec, 2) == ["many", "own"]  # the profile's order
    assert chosen_inputs(columns, Spec, 3) == ["few", "many", "own"]
    assert chosen_inputs(columns, Spec, None) == list(columns)
    trimmed = trim_profile(ReferenceProfile(features=columns), Spec, 1)
    assert list(trimmed.features) == ["own"]


def test_a_wide_input_is_tested_on_at_most_max_columns_and_the_report_says_so(tmp_path, wide_task):
    task, spec = wide_task
    reference = wide_rows(400, seed=2, start="2023-12-01")
    profile = ReferenceProfile(features=columns_of(task.monitor_inputs(reference, spec), 400))
    live = wide_rows(48 * 3 + 1, seed=3)
    records = pd.DataFrame(
        {
            "model_version": "1",
            "key": live["row_id"],
            "origin": None,
            "inputs": live.drop(columns=["label", "seen"]).to_dict("records"),
            "output": "a",
            "logged_at": live["seen"],
        }
    )
    settings = MonitorParams(period="1D", calibration_draws=100, max_columns=12)
    store = MonitoringStore(f"sqlite:///{tmp_path / 'p.db'}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.PerformanceWarning)
        result = run_pass(task, "wide", records, lambda v: Version(spec, profile), settings, store)
    store.close()
    tested = {w["feature"] for w in result.periods if w["signal"] == "feature_drift"}
    assert len(tested - {"*"}) == 12 and not tested & {"x0", "x1", "x2", "x3", "x4"}
    assert any(f"tests 12 of {WIDE} input columns" in n and RULE in n for n in result.notes)
    assert len({w["period_start"] for w in result.periods}) == 3


class TimedRows:
    """A task whose monitored inputs are its one number and the rows' time, some missing."""

    def __init__(self) -> None:
        self.schema = {"seen": "datetime", "x": "float", "split": "string"}

    def monitor_inputs(self, rows: pd.DataFrame, spec) -> pd.DataFrame:
        return pd.DataFrame({"x": rows["x"], EVENT_TIME: rows["seen"]}, index=rows.index)


@pytest.mark.parametrize("chunk_rows", [1, 37, 500, 10_000])
def test_the_profiles_latest_training_rows_are_the_same_a_chunk_at_a_time(chunk_rows, wide_task):
    rng = np.random.default_rng(3)
    seen = pd.Series(pd.to_datetime(rng.integers(0, 50, 1000), unit="h", utc=True))
    seen[rng.random(1000) < 0.1] = pd.NaT  # no time: the latest, as a stable sort puts them
    frame = pd.DataFrame({"seen": seen, "x": np.arange(1000.0)})
    frame["split"] = np.where(rng.random(1000) < 0.8, "train", "test")
    task = TimedRows()
    whole = task.monitor_inputs(frame[frame["split"] == "train"], None)
    expected = whole.sort_values(EVENT_TIME, kind="stable").tail(100)
    inputs, rows = latest_inputs(task, frame, None, 100, chunk_rows=chunk_rows)
    pd.testing.assert_frame_equal(inputs, expected)
    assert rows == len(whole)
    # No time at all (the table's task): the split's last rows, in their order.
    table, spec = wide_task
    wide = wide_rows(300, seed=2).drop(columns="seen").assign(split=frame["split"][:300])
    inputs, _ = latest_inputs(table, wide, spec, 50, chunk_rows=chunk_rows)
    assert list(inputs["x10"]) == list(wide.loc[wide["split"] == "train", "x10"].tail(50))
