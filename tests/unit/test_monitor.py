"""The monitor on small synthetic logs: calibrated drift and live quality, its watermark,
and what it says of bad input (no alarm)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from loopline.config import MonitorParams
from loopline.offline.features import FeatureSpec
from loopline.offline.reference import Column, Quality, ReferenceProfile
from loopline.tasks.forecast.task import ForecastOptions, ForecastTask
from loopline.watch.monitor import (
    Categories,
    MonitoringStore,
    Version,
    chi_square_statistic,
    ks_statistic,
    ks_statistics,
    latest_signals,
    run_pass,
    write_report,
)

HORIZON = 4
SPEC = FeatureSpec(
    task="forecast",
    feature_columns=["value"],
    target_column="value",
    options=ForecastOptions(
        horizon=HORIZON, freq="1h", group_column="_series", time_column="timestamp"
    ),
)
# A clean window crosses a signal's threshold with probability 0.01; two in a row alarm.
SETTINGS = MonitorParams(
    period="1D", false_alarm_rate=0.01, min_rows=20, min_periods=2, calibration_draws=1000
)
# Detection within this many windows of the fault (the alarm needs 2 windows over).
DETECTION_WINDOWS = 3


def series(hours: int, seed: int, start="2024-01-01") -> pd.DataFrame:
    """A daily cycle with autocorrelated noise: hourly readings of one series."""
    rng = np.random.default_rng(seed)
    times = pd.date_range(start, periods=hours, freq="1h", tz="UTC")
    cycle = 100 + 50 * np.sin(2 * np.pi * times.hour / 24)
    noise = np.zeros(hours)
    for t in range(1, hours):
        noise[t] = 0.6 * noise[t - 1] + rng.normal(0, 8)
    return pd.DataFrame({"timestamp": times, "value": cycle + noise, "cycle": cycle})


def forecasts(frame: pd.DataFrame) -> np.ndarray:
    """The 'model': the daily cycle for the next HORIZON hours."""
    cycle = frame["cycle"].to_numpy()
    return np.stack([np.roll(cycle, -h) for h in range(1, HORIZON + 1)], axis=1)


def profile_of(frame: pd.DataFrame) -> ReferenceProfile:
    task = ForecastTask()
    out = forecasts(frame)[:-HORIZON]
    truth = np.stack(
        [frame["value"].to_numpy()[h:][: len(out)] for h in range(1, HORIZON + 1)], axis=1
    )
    shown = task.monitor_outputs(out.tolist(), SPEC)
    losses = task.reference_losses(truth, out, SPEC)
    return ReferenceProfile(
        features={"value": Column("numeric", frame["value"].tolist())},
        predictions={n: Column("numeric", shown[n].tolist()) for n in shown},
        quality=Quality(
            "rmse",
            float(task.quality_figure(losses)),
            losses.tolist(),
            task.reference_bias(truth, out, SPEC).tolist(),
        ),
    )


def log_of(frame: pd.DataFrame, version: str = "1") -> pd.DataFrame:
    """The prediction log a service answering every hour would hold."""
    out = forecasts(frame)
    return pd.DataFrame(
        {
            "model_version": version,
            "key": "series",
            "origin": frame["timestamp"],
            "inputs": [
                {"readings": 24, "last": {"timestamp": t.isoformat(), "value": float(v)}}
                for t, v in zip(frame["timestamp"], frame["value"], strict=True)
            ],
            "output": [list(map(float, row)) for row in out],
            "logged_at": frame["timestamp"],
        }
    )


@pytest.fixture(scope="module")
def reference() -> ReferenceProfile:
    return profile_of(series(24 * 90, seed=1, start="2023-09-01"))


def monitor(tmp_path, records, profile, settings=SETTINGS, store=None):
    store = store or MonitoringStore(f"sqlite:///{tmp_path / 'predictions.db'}")
    return run_pass(
        ForecastTask(), "demo", records, lambda v: Version(SPEC, profile, None), settings, store
    )


def first_alarm(result, signal: str | None = None) -> pd.Timestamp | None:
    times = [a["period_start"] for a in result.alarms if signal in (None, a["signal"])]
    return pd.Timestamp(min(times)) if times else None


def test_statistics_equal_scipys():
    rng = np.random.default_rng(0)
    reference = np.round(rng.normal(size=500), 1)  # ties on purpose
    sample = np.round(rng.normal(0.3, 1, size=40), 1)
    ours = ks_statistic(np.sort(reference), sample)
    assert ours == pytest.approx(stats.ks_2samp(sample, reference).statistic)
    many = np.round(rng.normal(0.2, 1.2, size=(30, 25)), 1)  # the vectorised calibration
    expected = [stats.ks_2samp(row, reference).statistic for row in many]
    np.testing.assert_allclose(ks_statistics(np.sort(reference), many), expected)
    categories = Categories(np.array(list("aabbbcc")))
    counts = np.bincount(categories.encode(np.array(list("aaaab"))), minlength=4)
    expected = categories.shares * counts.sum()
    assert chi_square_statistic(categories.shares, counts.astype(float)) == pytest.approx(
        stats.chisquare(counts, expected).statistic
    )


def test_clean_replay_raises_no_alarm_over_40_windows(tmp_path, reference):
    result = monitor(tmp_path, log_of(series(24 * 42, seed=2)), reference)
    summary = [w for w in result.periods if w["feature"] == "*"]
    tested = {s: sum(w["signal"] == s for w in summary) for s in ("feature_drift", "live_quality")}
    assert tested["feature_drift"] >= 40 and tested["live_quality"] >= 30
    assert result.alarms == []


def test_shifted_feature_alarms_within_stated_windows(tmp_path, reference):
    frame = series(24 * 30, seed=3)
    fault = pd.Timestamp("2024-01-15", tz="UTC")
    frame.loc[frame["timestamp"] >= fault, "value"] += 40  # a sensor bias
    result = monitor(tmp_path, log_of(frame), reference)
    alarm = first_alarm(result, "feature_drift")
    assert alarm is not None and alarm >= fault
    assert (alarm - fault) / pd.Timedelta("1D") < DETECTION_WINDOWS
    assert first_alarm(result) >= fault  # nothing before the fault


def test_scaled_target_raises_live_quality_alarm(tmp_path, reference):
    frame = series(24 * 30, seed=4)
    fault = pd.Timestamp("2024-01-15", tz="UTC")
    frame.loc[frame["timestamp"] >= fault, "value"] *= 0.7  # soiling
    result = monitor(tmp_path, log_of(frame), reference)
    alarm = first_alarm(result, "live_quality")
    assert alarm is not None and fault - pd.Timedelta("1D") <= alarm
    assert (alarm - fault) / pd.Timedelta("1D") < DETECTION_WINDOWS
    files = write_report(result, tmp_path / "report")
    assert [p.name for p in files] == ["monitor.json", "monitor.png", "monitor.html"]
    assert "live_quality" in files[2].read_text()


def test_watermark_counts_each_window_once(tmp_path, reference):
    records = log_of(series(24 * 10, seed=5))
    store = MonitoringStore(f"sqlite:///{tmp_path / 'predictions.db'}")
    first = monitor(tmp_path, records.iloc[: 24 * 6], reference, store=store)
    second = monitor(tmp_path, records, reference, store=store)
    again = monitor(tmp_path, records, reference, store=store)
    rows = store.rows("demo")
    summary = rows[rows["feature"] == "*"]
    assert not summary.duplicated(["model_version", "signal", "period_start"]).any()
    assert len(first.periods) and len(second.periods) and again.periods == []
    assert summary["period_start"].nunique() == 9  # the last day is not complete yet
    assert len(write_report(again, tmp_path / "empty")) == 3  # a pass with nothing new
    latest = latest_signals(f"sqlite:///{tmp_path / 'predictions.db'}", "demo")
    assert {r["signal"] for r in latest} == {"feature_drift", "prediction_drift", "live_quality"}
    assert latest_signals(f"sqlite:///{tmp_path / 'none.db'}", "demo") == []


def test_bad_input_says_so_without_alarm(tmp_path, reference):
    empty = monitor(tmp_path, log_of(series(0, seed=6)), reference)
    assert empty.alarms == [] and "no prediction" in empty.notes[0]
    sparse = log_of(series(24 * 5, seed=6)).iloc[::3]  # 8 predictions a day < min_rows
    small = monitor(tmp_path, sparse, reference)
    assert small.alarms == [] and {w["note"] for w in small.periods} >= {"too small"}
    assert any("fewer than min_rows=20" in n for n in small.notes)
    renamed = log_of(series(24 * 5, seed=7))
    renamed["inputs"] = [{"last": {"timestamp": i["last"]["timestamp"]}} for i in renamed.inputs]
    (tmp_path / "m").mkdir()
    missing = monitor(tmp_path / "m", renamed, reference)
    assert missing.alarms == [] and any("lacks ['value']" in n for n in missing.notes)


def test_version_without_profile_is_monitored_for_quality_only(tmp_path):
    frame = series(24 * 6, seed=8)
    store = MonitoringStore(f"sqlite:///{tmp_path / 'p.db'}")
    result = run_pass(
        ForecastTask(), "demo", log_of(frame), lambda v: Version(SPEC, None, 9.0), SETTINGS, store
    )
    signals = {w["signal"] for w in result.periods}
    assert signals == {"live_quality"} and any("no reference profile" in n for n in result.notes)
    assert datetime.now(UTC)  # the pass needs no clock of its own


def test_stored_live_inputs_are_the_truth_when_present(tmp_path, reference):
    """With the service's `live_inputs` table (every reading stored once), the monitor reads
    the readings there; the log's own `inputs.last` are not needed."""
    from sqlalchemy import JSON, Column, Integer, MetaData, String, Table, create_engine

    from loopline.watch.monitor import stored_rows

    frame = series(24 * 8, seed=9)
    url = f"sqlite:///{tmp_path / 'live.db'}"
    engine = create_engine(url)
    table = Table(
        "live_inputs",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("task", String),
        Column("fields", JSON),
    )
    table.metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(
            table.insert(),
            [
                {"task": "forecast", "fields": {"timestamp": t.isoformat(), "value": float(v)}}
                for t, v in zip(frame["timestamp"], frame["value"], strict=True)
            ],
        )
    engine.dispose()
    stored = stored_rows(url, ForecastTask())
    assert len(stored) == len(frame)
    records = log_of(frame)
    records["inputs"] = [{"readings": 24} for _ in range(len(records))]  # no reading logged
    store = MonitoringStore(f"sqlite:///{tmp_path / 'p.db'}")
    result = run_pass(
        ForecastTask(),
        "demo",
        records,
        lambda v: Version(SPEC, reference),
        SETTINGS,
        store,
        stored=stored,
    )
    quality = [w for w in result.periods if w["signal"] == "live_quality" and w["statistic"]]
    drift = [w for w in result.periods if w["signal"] == "feature_drift" and w["statistic"]]
    assert len(quality) >= 6 and len(drift) >= 6 and result.alarms == []


def test_text_label_import_revealing_lower_accuracy_alarms(tmp_path):
    """Text: people's labels (`loopline label import`) join logged predictions by id; a
    live error rate far over the test split's raises the live-quality alarm; before any
    label is imported the monitor says so and raises nothing."""
    from pathlib import Path

    from loopline.params import load_params

    params = load_params(Path(__file__).resolve().parents[2] / "params.yaml", ["task=reviews"])
    task = params.plugin
    spec = task.new_feature_spec(params)
    rng = np.random.default_rng(0)
    words = ["좋다", "별로", "재밌다", "지루하다", "최고", "그냥"]
    texts = [" ".join(rng.choice(words, rng.integers(2, 12))) for _ in range(6000)]
    test_y = rng.integers(0, 2, 2000)
    probabilities = np.eye(2)[np.where(rng.random(2000) < 0.9, test_y, 1 - test_y)]  # 10% wrong
    shown = task.monitor_outputs(task.reference_outputs(probabilities, spec), spec)
    losses = task.reference_losses(test_y, probabilities, spec)
    profile = ReferenceProfile(
        features={
            n: Column("numeric", v.tolist())
            for n, v in task.monitor_inputs(pd.DataFrame({"document": texts[:4000]}), spec)
            .drop(columns="event_time")
            .items()
        },
        predictions={"predicted_label": Column("categorical", shown["predicted_label"].tolist())},
        quality=Quality("error_rate", float(losses.mean()), losses.tolist()),
    )
    days, per_day = 12, 100
    truth = rng.integers(0, 2, days * per_day)
    wrong = np.where(np.arange(days * per_day) >= 6 * per_day, 0.4, 0.1)  # day 6: 40% wrong
    predicted = np.where(rng.random(days * per_day) < wrong, 1 - truth, truth)
    start = pd.Timestamp("2026-01-01", tz="UTC")
    records = pd.DataFrame(
        {
            "model_version": "3",
            "key": [f"r{i}" for i in range(days * per_day)],
            "origin": pd.NaT,
            "inputs": [{"text": t} for t in texts[4000 : 4000 + days * per_day]],
            "output": [{"label": spec.labels[int(p)]} for p in predicted],
            "logged_at": start
            + pd.to_timedelta(np.arange(days * per_day) * 86_400 // per_day, "s"),
        }
    )
    labels = pd.DataFrame({"id": records["key"], "label": truth})  # as LabelStore keeps them
    store = MonitoringStore(f"sqlite:///{tmp_path / 'p.db'}")

    def versions(version):
        return Version(spec, profile)

    unlabelled = run_pass(task, "reviews", records, versions, SETTINGS, store)
    assert unlabelled.alarms == [] and any("no ground truth" in n for n in unlabelled.notes)
    store = MonitoringStore(f"sqlite:///{tmp_path / 'q.db'}")
    result = run_pass(task, "reviews", records, versions, SETTINGS, store, labels=labels)
    alarm = first_alarm(result, "live_quality")
    fault = start + pd.Timedelta(days=6)
    assert alarm is not None and fault <= alarm < fault + pd.Timedelta(days=DETECTION_WINDOWS)
    assert first_alarm(result) >= fault


def test_a_database_away_is_retried_then_named(tmp_path, caplog):
    from sqlalchemy.exc import OperationalError

    with pytest.raises(OperationalError, match="unable to open database file"):
        MonitoringStore(f"sqlite:///{tmp_path / 'missing' / 'p.db'}", backoff_s=0.0)
    assert caplog.text.count("retrying") == 2  # three attempts in all


def test_an_alarm_starts_one_retrain_per_cooldown(tmp_path, reference):
    from loopline.watch.monitor import RETRAIN, PassResult, retrain_decision

    store = MonitoringStore(f"sqlite:///{tmp_path / 'predictions.db'}")
    frame = series(24 * 30, seed=4)
    frame.loc[frame["timestamp"] >= pd.Timestamp("2024-01-15", tz="UTC"), "value"] *= 0.7
    result = monitor(tmp_path, log_of(frame), reference, store=store)
    assert result.alarms
    now = datetime(2024, 2, 1, 2, 0, tzinfo=UTC)
    first = retrain_decision(result, store, cooldown_h=24, now=now)
    assert first.start and first.reason.startswith("monitoring alarm: ")
    assert "live_quality of v1 since the period from 2024-01-1" in first.reason
    # The alarm persists while the retrain runs: the next passes do not start another ...
    later = retrain_decision(result, store, cooldown_h=24, now=now + pd.Timedelta(hours=23))
    assert not later.start and "monitor.cooldown_h 24" in later.reason
    # ... until the cooldown is over; a pass without an alarm starts nothing.
    assert retrain_decision(result, store, cooldown_h=24, now=now + pd.Timedelta(hours=25)).start
    assert not retrain_decision(PassResult("demo", "p", 0), store, 24, now).start
    rows = store.rows("demo")
    assert (rows["signal"] == RETRAIN).sum() == 2


def write_log(url: str, records: pd.DataFrame, model: str = "demo") -> None:
    """`records` into a real prediction log (its writer, its table)."""
    from loopline.online.predlog import PredictionLog, PredictionRecord

    log = PredictionLog(url, queue_size=len(records) + 1)  # every record taken
    taken = log.put_many(
        [
            PredictionRecord(
                model, str(r.model_version), "predict", r.key, r.origin.to_pydatetime(),
                r.inputs, r.output, 1.0, r.logged_at.to_pydatetime(), "champion",
            )
            for r in records.itertuples()
        ]
    )  # fmt: skip
    # Every record in the table before this returns: `close` stops waiting after its
    # timeout (the rest stays spooled), and a million records take longer than the default.
    log.close(timeout_s=600)
    assert taken == log.written == len(records), log.stats()


def test_a_pass_reads_only_the_predictions_it_may_still_test(tmp_path, reference):
    from loopline.watch.monitor import SIGNALS, event_times, read_log

    url = f"sqlite:///{tmp_path / 'log.db'}"
    records = log_of(series(24 * 10, seed=5))
    write_log(url, records.iloc[: 24 * 6])
    store = MonitoringStore(url)
    assert store.marks("demo", SIGNALS) == {}  # nothing tested yet: the log is read whole
    first = read_log(url, "demo", after=store.marks("demo", SIGNALS))
    assert len(first) == 24 * 6
    monitor(tmp_path, first, reference, store=store)
    write_log(url, records.iloc[24 * 6 :])
    marks = store.marks("demo", SIGNALS)
    summary = store.rows("demo").query("feature == '*'")
    newest = pd.to_datetime(summary.groupby("signal")["period_start"].max(), utc=True)
    assert marks == {"1": newest.min()}  # the signal furthest behind sets the mark
    later = read_log(url, "demo", after=marks)
    assert len(later) < len(records) and event_times(later).min() > marks["1"]
    monitor(tmp_path, later, reference, store=store)
    # The same periods, statistics and alarms as a monitor that read the whole log.
    whole = MonitoringStore(f"sqlite:///{tmp_path / 'whole.db'}")
    monitor(tmp_path, read_log(url, "demo").iloc[: 24 * 6], reference, store=whole)
    monitor(tmp_path, read_log(url, "demo"), reference, store=whole)
    columns = ["signal", "feature", "period_start", "rows", "statistic", "alarm", "streak"]
    mine = store.rows("demo")[columns].sort_values(columns[:3]).reset_index(drop=True)
    theirs = whole.rows("demo")[columns].sort_values(columns[:3]).reset_index(drop=True)
    pd.testing.assert_frame_equal(mine, theirs)
