"""The monitor: drift and live quality over event-time windows of the prediction log, each
against the reference profile published with the model version that answered.

One pass (`run_pass`) reads the log, cuts each version's predictions into windows of
`monitor.window` by event time (a forecast's origin, else when it was logged: a replayed
month is a month of windows, in minutes), and tests every complete window the monitoring
table has not seen yet (its watermark: no window is counted twice, and a pass that failed
is caught up by the next):

- feature drift: per monitored input (`Task.monitor_inputs`), the two-sample KS statistic
  (numbers) or the chi-square statistic against the reference's shares (categories);
- prediction drift: the same on the prediction columns (`Task.monitor_outputs`);
- live quality: the window's figure (forecast RMSE, error rate) over the profile's test
  figure, once ground truth joins the predictions (`Task.live_losses`).

Thresholds are calibrated, not guessed: the same statistic on `calibration_draws`
contiguous windows of the reference, of the live window's size, gives its
(1 - false_alarm_rate / columns) quantile, so a clean window crosses a signal's threshold
with probability about `false_alarm_rate`. A signal alarms when `min_windows` consecutive
tested windows cross it. Bad input says so and raises nothing: an empty log, windows too
small (`min_rows`), a column the reference names but the log lacks, a version without a
profile (live quality only, against its registered test figure and a fixed ratio).
"""

from __future__ import annotations

import base64
import logging
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loopline.predlog import insert_skipping_conflicts
from loopline.reference import EVENT_TIME, Column, ReferenceProfile

log = logging.getLogger(__name__)

SIGNALS = ("feature_drift", "prediction_drift", "live_quality")
SUMMARY = "*"  # the `feature` of a signal's own row per window
SMALL = ("too small", "too few truths")  # notes of windows recorded but not tested
NO_PROFILE_RATIO = 1.5  # live quality over a version's registered figure, without a profile


# ---------------------------------------------------------------------- statistics


def ks_statistic(reference_sorted: np.ndarray, sample: np.ndarray) -> float:
    """The two-sample Kolmogorov-Smirnov statistic sup |F_sample - F_reference| (equal to
    `scipy.stats.ks_2samp(...).statistic`), for a reference already sorted; ties handled."""
    return float(ks_statistics(reference_sorted, np.asarray(sample)[None, :])[0])


def ks_statistics(reference_sorted: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """`ks_statistic` of each row of `samples` (draws, n), vectorised: the supremum is
    reached at a sample value, just at it (F_sample - F_ref) or just before (F_ref -
    F_sample), and a run of tied values counts as one step."""
    s = np.sort(samples, axis=1)
    n = s.shape[1]
    m = len(reference_sorted)
    ref_right = np.searchsorted(reference_sorted, s, side="right") / m
    ref_left = np.searchsorted(reference_sorted, s, side="left") / m
    position = np.broadcast_to(np.arange(n), s.shape)
    new_run = np.ones(s.shape, dtype=bool)
    new_run[:, 1:] = s[:, 1:] != s[:, :-1]
    run_end = np.ones(s.shape, dtype=bool)
    run_end[:, :-1] = new_run[:, 1:]
    # Values at or below each sample value: the end of its run of ties; below: its start.
    own_right = np.minimum.accumulate(np.where(run_end, position + 1, n)[:, ::-1], axis=1)
    own_right = own_right[:, ::-1] / n
    own_left = np.maximum.accumulate(np.where(new_run, position, 0), axis=1) / n
    up = np.max(own_right - ref_right, axis=1)
    down = np.max(ref_left - own_left, axis=1)
    return np.maximum(np.maximum(up, down), 0.0)


def chi_square_statistic(shares: np.ndarray, counts: np.ndarray) -> float:
    """Pearson's chi-square of a window's category counts against the reference's shares
    (equal to `scipy.stats.chisquare(counts, shares * counts.sum()).statistic`)."""
    expected = shares * counts.sum()
    return float(np.sum((counts - expected) ** 2 / expected))


class Categories:
    """A categorical reference: its categories (plus one for any unseen value) and shares,
    smoothed so that no expected count is zero."""

    OTHER = "\x00other"

    def __init__(self, values: np.ndarray):
        names, counts = np.unique(values.astype(str), return_counts=True)
        self.names = [*names.tolist(), self.OTHER]
        self.index = {name: i for i, name in enumerate(self.names)}
        smoothed = np.append(counts, 0).astype(np.float64) + 0.5
        self.shares = smoothed / smoothed.sum()
        self.codes = np.asarray([self.index[v] for v in values.astype(str)])

    def encode(self, values: np.ndarray) -> np.ndarray:
        other = self.index[self.OTHER]
        return np.asarray([self.index.get(str(v), other) for v in values], dtype=np.int64)

    def statistic(self, codes: np.ndarray) -> float:
        counts = np.bincount(codes, minlength=len(self.names)).astype(np.float64)
        return chi_square_statistic(self.shares, counts)


def relative_bias(error: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """|sum of signed errors| over the sum of the truth's size, along the last axis."""
    total = np.sum(scale, axis=-1)
    return np.abs(np.sum(error, axis=-1)) / np.where(total > 0, total, np.inf)


def calibration_size(n: int) -> int:
    """The window size thresholds are calibrated at: the largest of 2^(k/8) at or below
    `n` (windows of 293 or 300 rows share one calibration; a window is sampled down to
    it, losing under a tenth of its rows)."""
    if n < 16:
        return n
    return int(2 ** (np.floor(8 * np.log2(n)) / 8) + 1e-9)


def block_starts(length: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, length, size=draws)


def blocks(values: np.ndarray, n: int, starts: np.ndarray) -> np.ndarray:
    """Contiguous (circular) windows of `n` reference values, one per start: (draws, n)."""
    return values[(starts[:, None] + np.arange(n)[None, :]) % len(values)]


class Calibrator:
    """Calibrated thresholds of one profile, cached by (group, column, window size)."""

    def __init__(self, profile: ReferenceProfile, draws: int, seed: int):
        self.profile = profile
        self.draws = draws
        self.seed = seed
        self._cache: dict[tuple[str, str, int, float], float] = {}
        self._prepared: dict[tuple[str, str], Any] = {}

    def prepared(self, group: str, name: str, column: Column):
        key = (group, name)
        if key not in self._prepared:
            values = column.array()
            if column.kind == "numeric":
                self._prepared[key] = (values, np.sort(values))
            else:
                self._prepared[key] = Categories(values)
        return self._prepared[key]

    def _rng(self, *key: Any) -> np.random.Generator:
        # The same column, size and seed draw the same reference windows in every pass.
        return np.random.default_rng([self.seed, *(zlib.crc32(str(k).encode()) for k in key)])

    def drift_threshold(self, group: str, name: str, column: Column, n: int, alpha: float):
        key = (group, name, n, alpha)
        if key not in self._cache:
            ref = self.prepared(group, name, column)
            length = len(ref[0]) if column.kind == "numeric" else len(ref.codes)
            starts = block_starts(length, self.draws, self._rng(group, name, n))
            if column.kind == "numeric":
                values, ordered = ref
                stats = ks_statistics(ordered, blocks(values, n, starts))
            else:
                stats = [ref.statistic(b) for b in blocks(ref.codes, n, starts)]
            self._cache[key] = float(np.quantile(stats, 1 - alpha, method="higher"))
        return self._cache[key]

    def bias_threshold(self, pairs: np.ndarray, n: int, alpha: float) -> float:
        """The (1 - alpha) quantile of reference windows' relative bias |sum error| / sum
        |truth|."""
        key = ("bias", "", n, alpha)
        if key not in self._cache:
            starts = block_starts(len(pairs), self.draws, self._rng("bias", n))
            index = (starts[:, None] + np.arange(n)[None, :]) % len(pairs)
            stats = relative_bias(pairs[index, 0], pairs[index, 1])
            self._cache[key] = float(np.quantile(stats, 1 - alpha, method="higher"))
        return self._cache[key]

    def quality_threshold(self, losses: np.ndarray, figure: Callable, n: int, alpha: float):
        """The (1 - alpha) quantile of reference windows' figure over the whole test figure."""
        key = ("quality", "", n, alpha)
        if key not in self._cache:
            whole = figure(losses)
            starts = block_starts(len(losses), self.draws, self._rng("quality", n))
            ratios = figure(blocks(losses, n, starts)) / whole if whole > 0 else [1.0]
            self._cache[key] = float(np.quantile(ratios, 1 - alpha, method="higher"))
        return self._cache[key]


# ---------------------------------------------------------------------- the monitoring table


def monitoring_table(metadata):
    from sqlalchemy import (
        BigInteger,
        Boolean,
        Column,
        DateTime,
        Float,
        Integer,
        String,
        Table,
        UniqueConstraint,
    )

    return Table(
        "monitoring",
        metadata,
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
        Column("model_name", String(200), nullable=False),
        Column("model_version", String(50), nullable=False),
        Column("signal", String(50), nullable=False),
        Column("feature", String(200), nullable=False),  # "*": the signal's own row
        Column("window_start", DateTime(timezone=True), nullable=False),
        Column("window_end", DateTime(timezone=True), nullable=False),
        Column("rows", Integer, nullable=False),
        Column("statistic", Float),
        Column("threshold", Float),
        Column("exceeded", Boolean, nullable=False),
        Column("streak", Integer, nullable=False),  # consecutive tested windows exceeded
        Column("alarm", Boolean, nullable=False),
        Column("note", String(500)),
        Column("pass_id", String(50), nullable=False),
        Column("computed_at", DateTime(timezone=True), nullable=False),
        # A window is counted once, whatever passes race or repeat.
        UniqueConstraint("model_name", "model_version", "signal", "feature", "window_start"),
    )


def _utc(value: Any) -> pd.Timestamp | None:
    if value is None or pd.isna(value):
        return None
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


class MonitoringStore:
    """The `monitoring` table in the prediction-log database: the monitor's rows and its
    watermark per (model, version, signal)."""

    def __init__(self, url: str, attempts: int = 3, backoff_s: float = 0.5):
        from sqlalchemy import MetaData, create_engine

        self.url = url
        self.attempts, self.backoff_s = attempts, backoff_s
        self.engine = create_engine(url, pool_pre_ping=True)
        metadata = MetaData()
        self.table = monitoring_table(metadata)
        self._retry(lambda: metadata.create_all(self.engine))

    def _retry(self, action: Callable[[], Any]) -> Any:
        """A database briefly away: retried with backoff, then the last error raised."""
        for attempt in range(self.attempts):
            try:
                return action()
            except Exception as error:
                if attempt == self.attempts - 1:
                    raise
                log.warning("monitoring table: %s; retrying", type(error).__name__)
                time.sleep(self.backoff_s * (attempt + 1))
        return None

    def last(self, model_name: str, version: str, signal: str) -> tuple[pd.Timestamp | None, int]:
        """(the watermark: the last window tested or passed, the streak it left)."""
        from sqlalchemy import select

        t = self.table
        query = (
            select(t.c.window_start, t.c.streak)
            .where(
                t.c.model_name == model_name,
                t.c.model_version == str(version),
                t.c.signal == signal,
                t.c.feature == SUMMARY,
            )
            .order_by(t.c.window_start.desc())
            .limit(1)
        )

        def read():
            with self.engine.connect() as connection:
                return connection.execute(query).first()

        row = self._retry(read)
        return (_utc(row.window_start), int(row.streak)) if row else (None, 0)

    def last_retrain(self, model_name: str) -> pd.Timestamp | None:
        """When the monitor last started a retrain of `model_name` (any version)."""
        from sqlalchemy import func, select

        t = self.table
        query = select(func.max(t.c.window_start)).where(
            t.c.model_name == model_name, t.c.signal == RETRAIN
        )

        def read():
            with self.engine.connect() as connection:
                return connection.execute(query).scalar()

        return _utc(self._retry(read))

    def add(self, rows: list[dict[str, Any]]) -> int:
        """Insert rows; one already there (same window, signal, feature) is left as it was."""
        if not rows:
            return 0
        dialect = self.engine.dialect.name
        statement = insert_skipping_conflicts(self.table, dialect)
        if statement is None:  # another database: a repeated window fails on the unique key
            statement = self.table.insert()

        def write():
            with self.engine.begin() as connection:
                return connection.execute(statement, rows).rowcount

        return self._retry(write)

    def rows(self, model_name: str | None = None) -> pd.DataFrame:
        from sqlalchemy import select

        query = select(self.table).order_by(self.table.c.id)
        if model_name:
            query = query.where(self.table.c.model_name == model_name)

        def read():
            with self.engine.connect() as connection:
                return pd.DataFrame([dict(r._mapping) for r in connection.execute(query)])

        return self._retry(read)

    def close(self) -> None:
        self.engine.dispose()


def latest_signals(url: str, model_name: str) -> list[dict[str, Any]]:
    """Each (version, signal)'s latest tested window in the monitoring table: its ratio
    (statistic over threshold: 1 = at the threshold) and whether it alarmed (for the
    service's Prometheus gauges). No table yet: none."""
    from sqlalchemy import MetaData, create_engine, inspect, select

    engine = create_engine(url)
    try:
        if not inspect(engine).has_table("monitoring"):
            return []
        t = monitoring_table(MetaData())
        query = (
            select(t.c.model_version, t.c.signal, t.c.statistic, t.c.threshold, t.c.alarm)
            .where(t.c.model_name == model_name, t.c.feature == SUMMARY, t.c.statistic.isnot(None))
            .order_by(t.c.window_start.desc())
            .limit(500)
        )
        with engine.connect() as connection:
            found: dict[tuple[str, str], dict[str, Any]] = {}
            for row in connection.execute(query):
                found.setdefault(
                    (row.model_version, row.signal),
                    {
                        "version": row.model_version,
                        "signal": row.signal,
                        "ratio": float(row.statistic) / float(row.threshold or 1.0),
                        "alarm": bool(row.alarm),
                    },
                )
        return list(found.values())
    finally:
        engine.dispose()


def read_log(url: str, model_name: str, attempts: int = 3) -> pd.DataFrame:
    """The prediction log's rows for `model_name` (an absent log: empty), with retries."""
    from sqlalchemy import MetaData, create_engine, inspect, select

    from loopline.predlog import predictions_table

    columns = ["model_version", "key", "origin", "inputs", "output", "logged_at"]
    for attempt in range(attempts):
        engine = create_engine(url)
        try:
            if not inspect(engine).has_table("predictions"):
                return pd.DataFrame(columns=columns)
            t = predictions_table(MetaData())
            query = (
                select(*(t.c[c] for c in columns))
                .where(t.c.model_name == model_name)
                .order_by(t.c.id)
            )
            with engine.connect() as connection:
                return pd.DataFrame(
                    [dict(r._mapping) for r in connection.execute(query)], columns=columns
                )
        except Exception as error:
            if attempt == attempts - 1:
                raise
            log.warning("prediction log: %s; retrying", type(error).__name__)
            time.sleep(0.5 * (attempt + 1))
        finally:
            engine.dispose()
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------- one pass


@dataclass(frozen=True)
class Version:
    """What the monitor needs of one model version: its spec, its profile (None when it
    was published without one) and its registered test figure (for live quality then)."""

    spec: Any
    profile: ReferenceProfile | None
    figure: float | None = None


@dataclass
class PassResult:
    """One pass: every row it added to the monitoring table, the alarms among them, and
    what it could not test and why."""

    model_name: str
    pass_id: str
    rows: int  # predictions read
    windows: list[dict[str, Any]] = field(default_factory=list)
    alarms: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for group in ("windows", "alarms"):
            for row in out[group]:
                for key in ("window_start", "window_end", "computed_at"):
                    if isinstance(row.get(key), datetime | pd.Timestamp):
                        row[key] = pd.Timestamp(row[key]).isoformat()
        return out

    @property
    def alarm(self) -> bool:
        return bool(self.alarms)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


def event_times(records: pd.DataFrame) -> pd.Series:
    """A prediction's event time: its origin (a forecast), else when it was logged. The
    columns may hold datetimes (the log's rows) or ISO text (the operator page's)."""
    origin = pd.to_datetime(records["origin"], utc=True, errors="coerce", format="ISO8601")
    logged = pd.to_datetime(records["logged_at"], utc=True, errors="coerce", format="ISO8601")
    return origin.fillna(logged)


@dataclass
class _Live:
    """One version's live columns, each with the event time its windows are cut by."""

    features: pd.DataFrame
    outputs: pd.DataFrame
    losses: pd.DataFrame  # columns loss, event_time
    truth_until: pd.Timestamp | None


def stored_rows(url: str, task: Any) -> pd.DataFrame | None:
    """The raw rows the service stored as training data (the `live_inputs` table: its
    `fields` JSON per row, by task), or None when there is no such table or no row."""
    from sqlalchemy import MetaData, Table, create_engine, inspect, select

    engine = create_engine(url)
    try:
        if not inspect(engine).has_table("live_inputs"):
            return None
        table = Table("live_inputs", MetaData(), autoload_with=engine)
        query = select(table.c.fields).where(table.c.task == task.name).order_by(table.c.id)
        with engine.connect() as connection:
            rows = [r.fields for r in connection.execute(query)]
    finally:
        engine.dispose()
    if not rows:
        return None
    frame = pd.DataFrame.from_records(rows)
    if task.time_column and task.time_column in frame:
        frame[task.time_column] = pd.to_datetime(frame[task.time_column], utc=True, errors="coerce")
    return frame


def _live(
    task: Any,
    records: pd.DataFrame,
    spec: Any,
    labels: pd.DataFrame,
    stored: pd.DataFrame | None = None,
) -> _Live:
    times = event_times(records).reset_index(drop=True)
    records = records.reset_index(drop=True)
    # The rows the service stored (every reading) where there are any and they carry
    # their own time; else the rows the log's records stand for.
    own_time = stored is not None and task.time_column in stored.columns
    rows = stored if own_time else task.logged_rows(records, spec)
    features = task.monitor_inputs(rows, spec) if len(rows) else pd.DataFrame()
    if len(features) and features[EVENT_TIME].isna().all() and len(features) == len(records):
        features[EVENT_TIME] = times.to_numpy()
    outputs = task.monitor_outputs(list(records["output"]), spec).reset_index(drop=True)
    outputs[EVENT_TIME] = times.to_numpy()
    predictions = records[["key", "origin", "output"]]
    losses = pd.DataFrame(
        {
            "loss": np.asarray(task.live_losses(predictions, rows, labels, spec), np.float64),
            EVENT_TIME: times,
        }
    )
    bias = task.live_bias(predictions, rows, labels, spec)
    if bias is not None:
        losses["error"], losses["scale"] = np.asarray(bias, np.float64).T
    until = None
    if len(features) and features[EVENT_TIME].notna().any():
        until = _utc(features[EVENT_TIME].max())
    return _Live(features, outputs, losses, until)


def run_pass(
    task: Any,
    model_name: str,
    records: pd.DataFrame,
    versions: Callable[[str], Version],
    settings: Any,
    store: MonitoringStore,
    seed: int = 42,
    labels: pd.DataFrame | None = None,
    now: datetime | None = None,
    stored: pd.DataFrame | None = None,
) -> PassResult:
    """Test every complete window not yet in the monitoring table, per model version, and
    record them there (`settings`: the `monitor` params section).

    A window is complete once the log holds a prediction after its end; its live quality
    once its truth can be complete too (`Task.truth_delay` after its end; labels: any
    time), and windows wait for it without moving the watermark. `stored`: the raw rows
    the service stored (`stored_rows`), read instead of the log's own where they carry time.
    """
    started = time.perf_counter()
    result = PassResult(model_name, uuid.uuid4().hex[:12], len(records))
    labels = labels if labels is not None else pd.DataFrame(columns=["id", "label"])
    computed_at = now or datetime.now(UTC)
    if records.empty:
        result.note(f"the prediction log holds no prediction of {model_name}: nothing to test")
        return result
    span = pd.Timedelta(settings.window)
    latest = event_times(records).max()
    for version, group in records.groupby("model_version", sort=True):
        info = versions(str(version))
        live = _live(task, group, info.spec, labels, stored)
        check = _Check(task, model_name, str(version), info, live, settings, store, result)
        check.calibrator = (
            Calibrator(info.profile, settings.calibration_draws, seed)
            if (info.profile is not None)
            else None
        )
        check.computed_at = computed_at
        for signal in SIGNALS:
            check.signal(signal, span, latest)
    result.seconds = time.perf_counter() - started
    return result


def _windows(times: pd.Series, span: pd.Timedelta) -> pd.Series:
    epoch = pd.Timestamp(0, tz="UTC")
    return epoch + ((times - epoch) // span) * span


@dataclass
class _Check:
    task: Any
    model_name: str
    version: str
    info: Version
    live: _Live
    settings: Any
    store: MonitoringStore
    result: PassResult
    calibrator: Calibrator | None = None
    computed_at: datetime | None = None
    pending: list[dict[str, Any]] = field(default_factory=list)  # a test's column rows

    def signal(self, signal: str, span: pd.Timedelta, latest: pd.Timestamp) -> None:
        frame, columns = self._inputs(signal)
        if frame is None:
            return
        times = pd.to_datetime(frame[EVENT_TIME], utc=True)
        frame = frame[times.notna()]
        starts = _windows(times[times.notna()], span)
        watermark, streak = self.store.last(self.model_name, self.version, signal)
        ready_until = latest
        if signal == "live_quality":
            delay = self.task.truth_delay(self.info.spec)
            if delay is not None:
                truth = self.live.truth_until
                ready_until = min(latest, truth - delay) if truth is not None else None
        rows = []
        for start, window in frame.groupby(starts.to_numpy(), sort=True):
            start = pd.Timestamp(start)
            end = start + span
            if watermark is not None and start <= watermark:
                continue
            if ready_until is None or end > ready_until:
                break  # not complete yet: a later pass tests it
            tested, exceeded, summary = self._test(signal, columns, window, start, end, rows)
            rows += self.pending
            self.pending = []
            if tested:
                streak = streak + 1 if exceeded else 0
            alarm = bool(tested and exceeded and streak >= self.settings.min_windows)
            alarm = alarm and signal in self.settings.signals
            summary.update(streak=streak, alarm=alarm, exceeded=bool(exceeded))
            rows.append(summary)
            if alarm:
                self.result.alarms.append(summary)
        small = sum(r["feature"] == SUMMARY and r["note"] in SMALL for r in rows)
        if small:
            self.result.note(
                f"v{self.version} {signal}: {small} window(s) with fewer than min_rows="
                f"{self.settings.min_rows} rows: recorded, not tested"
            )
        self.store.add(rows)
        self.result.windows.extend(rows)

    def _inputs(self, signal: str) -> tuple[pd.DataFrame | None, dict[str, Column]]:
        profile = self.info.profile
        if signal == "live_quality":
            losses = self.live.losses
            if not np.isfinite(losses["loss"]).any():
                self.result.note(
                    f"v{self.version}: no ground truth joins the predictions yet: live quality "
                    "not tested"
                )
                return None, {}
            if profile is None or profile.quality is None:
                if self.info.figure is None:
                    self.result.note(f"v{self.version}: no test figure to compare live quality")
                    return None, {}
                self.result.note(
                    f"v{self.version} has no reference profile (published before profiles): "
                    f"live quality only, against its registered figure x{NO_PROFILE_RATIO}"
                )
            return losses, {}
        if profile is None:
            self.result.note(f"v{self.version} has no reference profile: no drift tested")
            return None, {}
        frame = self.live.features if signal == "feature_drift" else self.live.outputs
        reference = profile.features if signal == "feature_drift" else profile.predictions
        present = {n: c for n, c in reference.items() if n in frame.columns and len(c.values)}
        missing = sorted(set(reference) - set(present))
        if missing:
            self.result.note(
                f"v{self.version}: the log lacks {missing}, which the reference names: "
                f"{signal} tests the others"
            )
        if not present or EVENT_TIME not in frame.columns:
            return None, {}
        return frame, present

    def _row(self, signal: str, feature: str, start, end, n: int, **more: Any) -> dict:
        return {
            "model_name": self.model_name,
            "model_version": self.version,
            "signal": signal,
            "feature": feature,
            "window_start": start.to_pydatetime(),
            "window_end": end.to_pydatetime(),
            "rows": int(n),
            "statistic": more.get("statistic"),
            "threshold": more.get("threshold"),
            "exceeded": bool(more.get("exceeded", False)),
            "streak": 0,
            "alarm": False,
            "note": more.get("note"),
            "pass_id": self.result.pass_id,
            "computed_at": self.computed_at,
        }

    def _fixed(self, signal: str, feature: str | None = None) -> float | None:
        fixed = self.settings.thresholds
        if feature is not None and f"{signal}.{feature}" in fixed:
            return float(fixed[f"{signal}.{feature}"])
        return float(fixed[signal]) if signal in fixed else None

    def _test(self, signal, columns, window, start, end, rows) -> tuple[bool, bool, dict]:
        if signal == "live_quality":
            return self._quality(window, start, end)
        alpha = self.settings.false_alarm_rate / len(columns)
        worst, exceeded, tested = None, False, False
        for name, column in columns.items():
            values = window[name].dropna().to_numpy()
            if column.kind == "numeric":
                values = values.astype(np.float64)
                values = values[np.isfinite(values)]
            if len(values) < self.settings.min_rows:
                rows.append(self._row(signal, name, start, end, len(values), note="too small"))
                continue
            n = calibration_size(min(len(values), max(2, len(column.values) // 2)))
            if n < len(values):  # a sample of the window, of a size calibrated once
                pick = np.random.default_rng(len(values)).choice(len(values), n, replace=False)
                values = values[np.sort(pick)]
            prepared = self.calibrator.prepared(signal, name, column)
            if column.kind == "numeric":
                statistic = ks_statistic(prepared[1], values)
            else:
                statistic = prepared.statistic(prepared.encode(values))
            threshold = self._fixed(signal, name)
            if threshold is None:
                threshold = self.calibrator.drift_threshold(signal, name, column, n, alpha)
            over = statistic > threshold
            tested, exceeded = True, exceeded or over
            ratio = statistic / threshold if threshold > 0 else np.inf
            worst = ratio if worst is None else max(worst, ratio)
            rows.append(
                self._row(
                    signal,
                    name,
                    start,
                    end,
                    n,
                    statistic=statistic,
                    threshold=threshold,
                    exceeded=over,
                )
            )
        note = None if tested else "too small"
        # The signal's row: its worst column's statistic over threshold (1 = at threshold).
        summary = self._row(
            signal, SUMMARY, start, end, len(window), statistic=worst, threshold=1.0, note=note
        )
        return tested, exceeded, summary

    def _quality(self, window, start, end) -> tuple[bool, bool, dict]:
        """The window's figure over the test figure and, where errors have a direction,
        its relative bias; each against its calibrated threshold (alpha split between)."""
        losses = window["loss"].to_numpy(dtype=np.float64)
        losses = losses[np.isfinite(losses)]
        n = len(losses)
        signal = "live_quality"
        if n < self.settings.min_rows:
            return False, False, self._row(signal, SUMMARY, start, end, n, note="too few truths")
        figure = self.task.quality_figure
        profile = self.info.profile
        quality = profile.quality if profile is not None else None
        pairs = None
        if quality is not None and quality.bias and "error" in window:
            pairs = np.asarray(quality.bias, dtype=np.float64)
        alpha = self.settings.false_alarm_rate / (2 if pairs is not None else 1)
        if quality is not None:
            reference = np.asarray(quality.losses, dtype=np.float64)
            whole = quality.figure
            threshold = self._fixed(signal, "figure") or self._fixed(signal)
            if threshold is None:
                size = min(n, len(reference))
                threshold = self.calibrator.quality_threshold(reference, figure, size, alpha)
            note = f"{quality.name} {float(figure(losses)):.4g} vs test {whole:.4g}"
        else:
            whole = float(self.info.figure)
            threshold = self._fixed(signal) or NO_PROFILE_RATIO
            note = f"live {float(figure(losses)):.4g} vs registered {whole:.4g} (no profile)"
        statistic = float(figure(losses)) / whole if whole > 0 else np.inf
        over = bool(statistic > threshold)
        rows = [(statistic, threshold, over)]
        if pairs is not None:
            both = window[["error", "scale"]].to_numpy(dtype=np.float64)
            both = both[np.isfinite(both).all(axis=1)]
            if len(both) >= self.settings.min_rows:
                bias = float(relative_bias(both[:, 0], both[:, 1]))
                limit = self._fixed(signal, "bias")
                if limit is None:
                    limit = self.calibrator.bias_threshold(pairs, min(len(both), len(pairs)), alpha)
                rows.append((bias, limit, bias > limit))
                note += f"; relative bias {bias:.3f}"
        self.pending = [
            self._row(
                signal, name, start, end, n, statistic=float(s), threshold=t, exceeded=bool(o)
            )
            for name, (s, t, o) in zip(("figure", "bias"), rows, strict=False)
        ]
        over = any(o for _, _, o in rows)
        worst = max(s / t if t > 0 else np.inf for s, t, _ in rows)
        summary = self._row(
            signal, SUMMARY, start, end, n, statistic=float(worst), threshold=1.0, note=note
        )
        return True, over, summary


# ---------------------------------------------------------------------- report and tracking


def plot_pass(rows: pd.DataFrame, path: Path) -> Path:
    """Each signal's statistic over its threshold per window (1: at the threshold), alarms
    marked: the picture a person opens at 2 a.m."""
    from loopline.plots import new_figure, save_figure

    fig, ax = new_figure((9, 4))
    summary = rows[rows["feature"] == SUMMARY] if len(rows) else pd.DataFrame()
    groups = summary.groupby(["signal", "model_version"]) if len(summary) else []
    for (signal, version), group in groups:
        ratio = group["statistic"].astype(float) / group["threshold"].astype(float)
        starts = pd.to_datetime(group["window_start"], utc=True)
        ax.plot(starts, ratio, marker=".", label=f"{signal} v{version}")
        alarms = group["alarm"].astype(bool).to_numpy()
        if alarms.any():
            ax.scatter(starts[alarms], ratio[alarms], color="red", zorder=3, s=40)
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_ylabel("statistic / threshold")
    ax.set_title("Monitor: each window against its calibrated threshold (red: alarm)")
    fig.autofmt_xdate()
    return save_figure(fig, ax, path)


def report_html(result: PassResult, picture: Path, path: Path) -> Path:
    """One HTML page: the alarms, the notes, the picture and every window's signal rows."""
    import html

    rows = pd.DataFrame(result.windows)
    summary = rows[rows["feature"] == SUMMARY] if len(rows) else rows
    image = base64.b64encode(picture.read_bytes()).decode() if picture.exists() else ""
    alarms = "".join(
        f"<li>{html.escape(a['signal'])} v{a['model_version']}: window "
        f"{pd.Timestamp(a['window_start']).isoformat()} ({html.escape(str(a['note'] or ''))})"
        "</li>"
        for a in result.alarms
    )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in result.notes)
    table = summary.to_html(index=False, float_format=lambda v: f"{v:.4g}") if len(rows) else ""
    path.write_text(
        f"<html><head><meta charset='utf-8'><title>Loopline monitor: {result.model_name}"
        f"</title></head><body><h1>Monitor pass {result.pass_id}: {result.model_name}</h1>"
        f"<p>{result.rows} predictions read; {len(summary)} windows tested or passed; "
        f"{len(result.alarms)} alarms</p><h2>Alarms</h2><ul>{alarms or '<li>none</li>'}</ul>"
        f"<h2>Notes</h2><ul>{notes or '<li>none</li>'}</ul>"
        f"<img src='data:image/png;base64,{image}'/><h2>Windows</h2>{table}</body></html>",
        encoding="utf-8",
    )
    return path


def write_report(result: PassResult, folder: Path) -> list[Path]:
    """The pass as `monitor.json`, `monitor.png` and `monitor.html` in `folder`."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "monitor.json"
    data.write_text(json.dumps(result.to_dict(), indent=1, default=str))
    picture = plot_pass(pd.DataFrame(result.windows), folder / "monitor.png")
    return [data, picture, report_html(result, picture, folder / "monitor.html")]


def pass_metrics(result: PassResult) -> dict[str, float]:
    """What MLflow charts of a pass: windows tested, alarms, each signal's worst ratio."""
    rows = pd.DataFrame(result.windows)
    out = {"monitor_predictions": float(result.rows), "monitor_alarms": float(len(result.alarms))}
    if rows.empty:
        return out
    summary = rows[rows["feature"] == SUMMARY]
    out["monitor_windows"] = float(len(summary))
    for signal, group in summary.groupby("signal"):
        ratio = (group["statistic"].astype(float) / group["threshold"].astype(float)).dropna()
        if len(ratio):
            out[f"monitor_{signal}_max_ratio"] = float(ratio.max())
    return out


def record_pass(tracker: Any, result: PassResult, folder: Path) -> list[Path]:
    """One MLflow run per pass: its metrics, tags (alarm, signals) and report files."""
    files = write_report(result, folder)
    tracker.log_metrics(pass_metrics(result))
    signals = sorted({a["signal"] for a in result.alarms})
    tracker.set_tags(
        {
            "loopline.monitor.pass_id": result.pass_id,
            "loopline.monitor.alarm": str(result.alarm).lower(),
            "loopline.monitor.alarm_signals": ",".join(signals),
        }
    )
    for path in files:
        tracker.log_file(path, "monitor")
    return files


# ---------------------------------------------------------------------- the project's pass


def load_version(tracking_uri: str, name: str, version: str, task: Any, dest: Path) -> Version:
    """A registered version's spec, reference profile (None if it has none) and test figure."""
    from loopline import registry
    from loopline.features import FeatureSpec
    from loopline.publishing import tagged_metrics

    folder = registry.download_model(
        tracking_uri, f"models:/{name}/{version}", dest / f"v{version}"
    )
    files = folder / "extra_files"
    spec = FeatureSpec.from_json((files / "feature_spec.json").read_text(), task)
    tags = registry.client(tracking_uri).get_model_version(name, str(version)).tags or {}
    metrics = tagged_metrics(tags)
    return Version(spec, ReferenceProfile.read(files), task.quality_from_metrics(metrics))


def monitor_project(params: Any, paths: Any, model: str | None = None) -> tuple[PassResult, str]:
    """One monitoring pass of the project's served model: read the prediction log and
    people's labels, test what is new, record it in the monitoring table and as one MLflow
    run with its report. Returns (the pass, the MLflow run id)."""
    import tempfile

    from loopline.batch import human_labels
    from loopline.tracking import RunTracker

    settings = params.monitor
    name = model or params.serve.model or params.model_name
    url = paths.prediction_log_url(params)
    tracking_uri = paths.tracking_uri()
    store = MonitoringStore(url)
    with tempfile.TemporaryDirectory(prefix="loopline-monitor-") as scratch:
        cache: dict[str, Version] = {}

        def versions(version: str) -> Version:
            if version not in cache:
                cache[version] = load_version(
                    tracking_uri, name, version, params.plugin, Path(scratch)
                )
            return cache[version]

        try:
            result = run_pass(
                params.plugin,
                name,
                read_log(url, name),
                versions,
                settings,
                store,
                seed=params.seed,
                labels=human_labels(params, paths),
                stored=stored_rows(url, params.plugin),
            )
        finally:
            store.close()
        tracker = RunTracker.start(
            tracking_uri,
            f"{params.experiment_name}-monitor",
            paths.local_artifact_root(),
            "monitor",
            {"loopline.kind": "monitor", "loopline.model": name},
        )
        try:
            record_pass(tracker, result, Path(scratch) / "report")
        finally:
            tracker.end()
    return result, tracker.run_id


# ---------------------------------------------------------------------- alarm -> retrain

RETRAIN = "retrain"  # the `signal` of the monitoring table's row for a requested retrain


@dataclass(frozen=True)
class RetrainDecision:
    """Whether a pass's alarms start the offline deployment, and why (or why not)."""

    start: bool
    reason: str


def describe_alarms(alarms: list[dict[str, Any]]) -> str:
    """A pass's alarms in words, one phrase per signal and version: since which window,
    for how many windows, and the latest statistic against its threshold."""
    phrases = []
    for (signal, version), group in pd.DataFrame(alarms).groupby(
        ["signal", "model_version"], sort=False
    ):
        since = pd.Timestamp(group["window_start"].min()).strftime("%Y-%m-%d %H:%M")
        last = group.sort_values("window_start").iloc[-1]
        figure = ""
        if pd.notna(last.get("statistic")) and pd.notna(last.get("threshold")):
            figure = f", latest {last['statistic']:.3g} > {last['threshold']:.3g}"
        phrases.append(
            f"{signal} of v{version} since the window from {since} UTC "
            f"({int(last['streak'])} window(s) over its threshold{figure})"
        )
    return "; ".join(phrases)


def retrain_decision(
    result: PassResult, store: MonitoringStore, cooldown_h: float, now: datetime | None = None
) -> RetrainDecision:
    """Start a retrain for this pass's alarms unless one was requested within `cooldown_h`
    (an alarm that persists while its retrain runs must not start another). A started one
    is recorded in the monitoring table first: a crash after that skips a run rather than
    starting two."""
    if not result.alarms:
        return RetrainDecision(False, "no alarm")
    now = pd.Timestamp(now or datetime.now(UTC))
    reason = f"monitoring alarm: {describe_alarms(result.alarms)}"
    last = store.last_retrain(result.model_name)
    if last is not None and now - last < pd.Timedelta(hours=cooldown_h):
        until = (last + pd.Timedelta(hours=cooldown_h)).isoformat()
        return RetrainDecision(
            False,
            f"{reason}; not retraining: one was started at {last.isoformat()} "
            f"(monitor.cooldown_h {cooldown_h:g}: the next not before {until})",
        )
    version = str(result.alarms[0]["model_version"])
    store.add([_retrain_row(result, version, reason, now)])
    return RetrainDecision(True, reason)


def _retrain_row(result: PassResult, version: str, reason: str, now: pd.Timestamp) -> dict:
    return {
        "model_name": result.model_name,
        "model_version": version,
        "signal": RETRAIN,
        "feature": SUMMARY,
        "window_start": now.to_pydatetime(),
        "window_end": now.to_pydatetime(),
        "rows": 0,
        "statistic": None,
        "threshold": None,
        "exceeded": True,
        "streak": 0,
        "alarm": True,
        "note": reason[:500],
        "pass_id": result.pass_id,
        "computed_at": now.to_pydatetime(),
    }


def request_retrain(params: Any, paths: Any, result: PassResult) -> RetrainDecision:
    """`retrain_decision` for a project's pass, on its monitoring table."""
    store = MonitoringStore(paths.prediction_log_url(params))
    try:
        return retrain_decision(result, store, params.monitor.cooldown_h)
    finally:
        store.close()
