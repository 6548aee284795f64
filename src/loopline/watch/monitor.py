"""The monitor: drift and live quality over event-time periods of the prediction log, each
against the reference profile published with the model version that answered.

One pass (`run_pass`) reads the log, cuts each version's predictions into periods of
`monitor.period` by event time (a prediction's own origin where the task logs one, else
when it was logged: a replayed month is a month of periods, in minutes), and tests every
complete period the monitoring table has not seen yet (its watermark: no period is counted
twice, and a pass that failed is caught up by the next):

- feature drift: per monitored input (`Task.monitor_inputs`; at most `monitor.max_columns`
  of a wide table, `loopline.watch.columns`), the two-sample KS statistic (numbers) or the
  chi-square statistic against the reference's shares (categories);
- prediction drift: the same on the prediction columns (`Task.monitor_outputs`);
- live quality: the period's figure (RMSE, error rate: the task's) over the profile's test
  figure, once ground truth joins the predictions (`Task.live_losses`).

Thresholds are calibrated, not guessed (`loopline.watch.calibration`): a clean period
crosses any of a signal's thresholds with probability at most `false_alarm_rate`. A signal
alarms when `min_periods` consecutive tested periods cross it. Bad input says so and
raises nothing: an empty log, periods too small (`min_rows`), a column the reference names
but the log lacks, a version without a profile (live quality only, against its registered
test figure and a fixed ratio).

The module's parts: `statistics` (the tests), `calibration` (the thresholds), `store` (the
monitoring table), `logs` (what a pass reads), `columns` (which inputs of a wide table),
`report` (the page, the picture, the MLflow run) and `retrain` (alarm to retrain); the
names other code uses are importable from here too.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loopline import registry
from loopline.offline.batch import human_labels
from loopline.offline.features import FeatureSpec
from loopline.offline.reference import (
    EVENT_TIME,
    RULE,
    Column,
    ReferenceProfile,
    chosen_inputs,
    trim_profile,
)
from loopline.offline.tracking import RunTracker
from loopline.watch.calibration import Calibrator
from loopline.watch.logs import Live, event_times, live_columns, read_log, stored_rows
from loopline.watch.report import pass_metrics, plot_pass, record_pass, report_html, write_report
from loopline.watch.result import PassResult, Version
from loopline.watch.retrain import (
    RetrainDecision,
    describe_alarms,
    request_retrain,
    retrain_decision,
)
from loopline.watch.statistics import (
    Categories,
    calibration_size,
    chi_square_statistic,
    correlation_range,
    dependent_at,
    ks_statistic,
    ks_statistics,
    relative_bias,
)
from loopline.watch.store import (
    RETRAIN,
    SUMMARY,
    MonitoringStore,
    latest_signals,
    monitoring_table,
    upgrade_monitoring,
)

__all__ = [  # what other code and tests import from here
    "NO_PROFILE_RATIO",
    "RETRAIN",
    "RULE",
    "SIGNALS",
    "SUMMARY",
    "Calibrator",
    "Categories",
    "MonitoringStore",
    "PassResult",
    "RetrainDecision",
    "Version",
    "calibration_size",
    "chi_square_statistic",
    "chosen_inputs",
    "correlation_range",
    "dependent_at",
    "describe_alarms",
    "event_times",
    "ks_statistic",
    "ks_statistics",
    "latest_signals",
    "load_version",
    "monitor_project",
    "monitoring_table",
    "pass_metrics",
    "period_starts",
    "plot_pass",
    "read_log",
    "record_pass",
    "report_html",
    "request_retrain",
    "retrain_decision",
    "run_pass",
    "stored_rows",
    "trim_profile",
    "upgrade_monitoring",
    "write_report",
]

SIGNALS = ("feature_drift", "prediction_drift", "live_quality")
SMALL = ("too small", "too few truths")  # notes of periods recorded but not tested
NO_PROFILE_RATIO = 1.5  # live quality over a version's registered figure, without a profile


# ---------------------------------------------------------------------- one pass


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
    """Test every complete period not yet in the monitoring table, per model version, and
    record them there (`settings`: the `monitor` params section).

    A period is complete once the log holds a prediction after its end; its live quality
    once its truth can be complete too (`Task.truth_delay` after its end; labels: any
    time), and periods wait for it without moving the watermark. `stored`: the raw rows
    the service stored (`stored_rows`), read instead of the log's own where they carry time.
    """
    started = time.perf_counter()
    result = PassResult(model_name, uuid.uuid4().hex[:12], len(records))
    labels = labels if labels is not None else pd.DataFrame(columns=["id", "label"])
    if records.empty:
        result.note(f"the prediction log holds no prediction of {model_name}: nothing to test")
        return result
    span = pd.Timedelta(settings.period)
    latest = event_times(records).max()
    for version, group in records.groupby("model_version", sort=True):
        info = versions(str(version))
        check = VersionCheck(
            task,
            model_name,
            str(version),
            info,
            live_columns(task, group, info.spec, labels, stored),
            settings,
            store,
            result,
            computed_at=now or datetime.now(UTC),
        )
        if info.profile is not None:
            check.calibrator = Calibrator(info.profile, settings.calibration_draws, seed)
        for signal in SIGNALS:
            check.signal(signal, span, latest)
    result.seconds = time.perf_counter() - started
    return result


def period_starts(times: pd.Series, span: pd.Timedelta) -> pd.Series:
    """The start of the period each time falls in (periods of `span` from the epoch)."""
    epoch = pd.Timestamp(0, tz="UTC")
    return epoch + ((times - epoch) // span) * span


@dataclass
class VersionCheck:
    """One version's signals in one pass: each complete new period tested, its rows
    recorded, its streak and alarm carried on from the table's watermark."""

    task: Any
    model_name: str
    version: str
    info: Version
    live: Live
    settings: Any
    store: MonitoringStore
    result: PassResult
    calibrator: Calibrator | None = None
    computed_at: datetime | None = None
    pending: list[dict[str, Any]] = field(default_factory=list)  # a test's column rows

    def signal(self, signal: str, span: pd.Timedelta, latest: pd.Timestamp) -> None:
        """Test `signal` on every complete period after the watermark; record the rows."""
        frame, columns = self._inputs(signal)
        if frame is None:
            return
        times = pd.to_datetime(frame[EVENT_TIME], utc=True)
        frame = frame[times.notna()]
        starts = period_starts(times[times.notna()], span)
        watermark, streak = self.store.last(self.model_name, self.version, signal)
        ready_until = self._ready_until(signal, latest)
        rows: list[dict[str, Any]] = []
        for start, period in frame.groupby(starts.to_numpy(), sort=True):
            start = pd.Timestamp(start)
            end = start + span
            if watermark is not None and start <= watermark:
                continue
            if ready_until is None or end > ready_until:
                break  # not complete yet: a later pass tests it
            streak = self._judge(signal, columns, period, (start, end), streak, rows)
        self._note_small(signal, rows)
        self.store.add(rows)
        self.result.periods.extend(rows)

    def _ready_until(self, signal: str, latest: pd.Timestamp) -> pd.Timestamp | None:
        """Until when periods are complete: the latest prediction; for live quality, also
        the truth known so far less the task's delay (None: no truth yet)."""
        if signal != "live_quality":
            return latest
        delay = self.task.truth_delay(self.info.spec)
        if delay is None:
            return latest
        truth = self.live.truth_until
        return min(latest, truth - delay) if truth is not None else None

    def _judge(self, signal, columns, period, bounds, streak: int, rows: list) -> int:
        """Test one period, add its rows to `rows` (an alarm to the result's); returns the
        streak of tested periods over the threshold after it."""
        if signal == "live_quality":
            tested, exceeded, summary = self._quality(period, bounds)
        else:
            tested, exceeded, summary = self._drift(signal, columns, period, bounds)
        rows += self.pending
        self.pending = []
        if tested:
            streak = streak + 1 if exceeded else 0
        alarm = bool(tested and exceeded and streak >= self.settings.min_periods)
        alarm = alarm and signal in self.settings.signals
        summary.update(streak=streak, alarm=alarm, exceeded=bool(exceeded))
        rows.append(summary)
        if alarm:
            self.result.alarms.append(summary)
        return streak

    def _note_small(self, signal: str, rows: list[dict[str, Any]]) -> None:
        small = sum(r["feature"] == SUMMARY and r["note"] in SMALL for r in rows)
        if small:
            self.result.note(
                f"v{self.version} {signal}: {small} period(s) with fewer than min_rows="
                f"{self.settings.min_rows} rows: recorded, not tested"
            )

    # ------------------------------------------------------------------ what is tested

    def _inputs(self, signal: str) -> tuple[pd.DataFrame | None, dict[str, Column]]:
        """The live frame a signal is tested on and its reference columns (none for live
        quality), or None (with a note) where it cannot be tested."""
        if signal == "live_quality":
            return self._quality_inputs(), {}
        return self._drift_inputs(signal)

    def _quality_inputs(self) -> pd.DataFrame | None:
        losses = self.live.losses
        if not np.isfinite(losses["loss"]).any():
            self.result.note(
                f"v{self.version}: no ground truth joins the predictions yet: live quality "
                "not tested"
            )
            return None
        profile = self.info.profile
        if profile is None or profile.quality is None:
            if self.info.figure is None:
                self.result.note(f"v{self.version}: no test figure to compare live quality")
                return None
            self.result.note(
                f"v{self.version} has no reference profile (published before profiles): "
                f"live quality only, against its registered figure x{NO_PROFILE_RATIO}"
            )
        return losses

    def _drift_inputs(self, signal: str) -> tuple[pd.DataFrame | None, dict[str, Column]]:
        profile = self.info.profile
        if profile is None:
            self.result.note(f"v{self.version} has no reference profile: no drift tested")
            return None, {}
        features = signal == "feature_drift"
        frame = self.live.features if features else self.live.outputs
        reference = profile.features if features else profile.predictions
        present = {n: c for n, c in reference.items() if n in frame.columns and len(c.values)}
        missing = sorted(set(reference) - set(present))
        if missing:
            self.result.note(
                f"v{self.version}: the log lacks {missing}, which the reference names: "
                f"{signal} tests the others"
            )
        if features:
            present = self._chosen(present)
        if not present or EVENT_TIME not in frame.columns:
            return None, {}
        return frame, present

    def _chosen(self, present: dict[str, Column]) -> dict[str, Column]:
        """At most `monitor.max_columns` inputs (`chosen_inputs`), said in the report."""
        limit = self.settings.max_columns
        keep = chosen_inputs(present, self.info.spec, limit)
        if len(keep) < len(present):
            self.result.note(
                f"v{self.version} feature_drift tests {len(keep)} of {len(present)} input "
                f"columns (monitor.max_columns {limit}: {RULE})"
            )
        return {name: present[name] for name in keep}

    # ------------------------------------------------------------------ rows

    def _row(self, signal: str, feature: str, bounds, n: int, **more: Any) -> dict:
        start, end = bounds
        return {
            "model_name": self.model_name,
            "model_version": self.version,
            "signal": signal,
            "feature": feature,
            "period_start": start.to_pydatetime(),
            "period_end": end.to_pydatetime(),
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

    def _judged(self, signal: str, judged: list, bounds, n: int, note: str | None) -> tuple:
        """(tested, exceeded, the signal's row) of (column, statistic, threshold, rows it
        was taken on) triples; their own rows go to `pending`. The signal's row holds the
        worst column's statistic over its threshold (1 = at it)."""
        worst, exceeded = None, False
        for name, statistic, threshold, size in judged:
            over = bool(statistic > threshold)
            exceeded = exceeded or over
            ratio = statistic / threshold if threshold > 0 else np.inf
            worst = ratio if worst is None else max(worst, ratio)
            self.pending.append(
                self._row(
                    signal,
                    name,
                    bounds,
                    size,
                    statistic=float(statistic),
                    threshold=threshold,
                    exceeded=over,
                )
            )
        summary = self._row(signal, SUMMARY, bounds, n, statistic=worst, threshold=1.0, note=note)
        return bool(judged), exceeded, summary

    # ------------------------------------------------------------------ drift

    def _drift(self, signal, columns, period, bounds) -> tuple[bool, bool, dict]:
        """Each column's statistic against its threshold: fixed where `monitor.thresholds`
        gives one, the others calibrated together (a clean period crosses any of theirs
        with probability false_alarm_rate)."""
        tested = self._drift_statistics(signal, columns, period, bounds)
        fixed = {name: self._fixed(signal, name) for name in tested}
        calibrated = {
            name: (columns[name], size) for name, (_, size) in tested.items() if fixed[name] is None
        }
        if calibrated:
            alpha = self.settings.false_alarm_rate
            fixed.update(self.calibrator.drift_thresholds(signal, calibrated, alpha))
        judged = [(name, s, fixed[name], size) for name, (s, size) in tested.items()]
        note = None if tested else "too small"
        return self._judged(signal, judged, bounds, len(period), note)

    def _drift_statistics(self, signal, columns, period, bounds) -> dict[str, tuple[float, int]]:
        """{column: (statistic, rows it was taken on)}; a column with too few values gets
        its "too small" row (in `pending`) instead."""
        tested: dict[str, tuple[float, int]] = {}
        for name, column in columns.items():
            values = period[name].dropna().to_numpy()
            if column.kind == "numeric":
                values = values.astype(np.float64)
                values = values[np.isfinite(values)]
            if len(values) < self.settings.min_rows:
                self.pending.append(self._row(signal, name, bounds, len(values), note="too small"))
                continue
            n = calibration_size(min(len(values), max(2, len(column.values) // 2)))
            if n < len(values):  # a sample of the period, of a size calibrated once
                pick = np.random.default_rng(len(values)).choice(len(values), n, replace=False)
                values = values[np.sort(pick)]
            prepared = self.calibrator.prepared(signal, name, column)
            if column.kind == "numeric":
                tested[name] = (ks_statistic(prepared[1], values), n)
            else:
                tested[name] = (prepared.statistic(prepared.encode(values)), n)
        return tested

    # ------------------------------------------------------------------ live quality

    def _quality(self, period, bounds) -> tuple[bool, bool, dict]:
        """The period's figure over the test figure and, where errors have a direction,
        its relative bias; against thresholds calibrated together (a clean period crosses
        either with probability false_alarm_rate), at the largest calibrated size at or
        below the period's (a smaller period varies more: no more false alarms)."""
        signal = "live_quality"
        losses = period["loss"].to_numpy(dtype=np.float64)
        losses = losses[np.isfinite(losses)]
        n = len(losses)
        if n < self.settings.min_rows:
            return False, False, self._row(signal, SUMMARY, bounds, n, note="too few truths")
        live = float(self.task.quality_figure(losses))
        quality = self.info.profile.quality if self.info.profile is not None else None
        pairs = self._bias_pairs(period) if quality is not None else None
        if quality is not None:
            whole = quality.figure
            threshold, limit = self._quality_limits(losses, pairs)
            note = f"{quality.name} {live:.4g} vs test {whole:.4g}"
        else:
            whole = float(self.info.figure)
            threshold, limit = self._fixed(signal) or NO_PROFILE_RATIO, None
            note = f"live {live:.4g} vs registered {whole:.4g} (no profile)"
        judged = [("figure", live / whole if whole > 0 else np.inf, threshold, n)]
        if pairs is not None and limit is not None:
            bias = float(relative_bias(pairs[1][:, 0], pairs[1][:, 1]))
            judged.append(("bias", bias, limit, n))
            note += f"; relative bias {bias:.3f}"
        return self._judged(signal, judged, bounds, n, note)

    def _bias_pairs(self, period: pd.DataFrame) -> tuple[np.ndarray, np.ndarray] | None:
        """(the reference's (error, scale) pairs, the period's), where the profile and
        the period both have them and the period has at least min_rows; else None."""
        quality = self.info.profile.quality
        if not quality.bias or "error" not in period:
            return None
        both = period[["error", "scale"]].to_numpy(dtype=np.float64)
        both = both[np.isfinite(both).all(axis=1)]
        if len(both) < self.settings.min_rows:
            return None
        return np.asarray(quality.bias, dtype=np.float64), both

    def _quality_limits(self, losses: np.ndarray, pairs) -> tuple[float, float | None]:
        """(the figure ratio's threshold, the relative bias's or None without pairs):
        fixed where `monitor.thresholds` gives them, else calibrated together."""
        signal = "live_quality"
        threshold = self._fixed(signal, "figure") or self._fixed(signal)
        limit = self._fixed(signal, "bias") if pairs is not None else None
        if threshold is not None and (pairs is None or limit is not None):
            return threshold, limit
        reference = np.asarray(self.info.profile.quality.losses, dtype=np.float64)
        size = calibration_size(min(len(losses), max(2, len(reference) // 2)))
        n_pairs = 0
        if pairs is not None:
            n_pairs = calibration_size(min(len(pairs[1]), max(2, len(pairs[0]) // 2)))
        found = self.calibrator.quality_thresholds(
            reference,
            self.task.quality_figure,
            size,
            self.settings.false_alarm_rate,
            pairs[0] if pairs is not None and limit is None else None,
            n_pairs,
        )
        return (
            found[0] if threshold is None else threshold,
            found[1] if limit is None else limit,
        )


# ---------------------------------------------------------------------- the project's pass


def load_version(tracking_uri: str, name: str, version: str, task: Any, dest: Path) -> Version:
    """A registered version's spec, reference profile (None if it has none) and test figure."""
    folder = registry.download_model(
        tracking_uri, f"models:/{name}/{version}", dest / f"v{version}"
    )
    files = folder / "extra_files"
    spec = FeatureSpec.from_json((files / "feature_spec.json").read_text(), task)
    tags = registry.version_tags(tracking_uri, name, version)
    metrics = registry.tagged_metrics(tags)
    return Version(spec, ReferenceProfile.read(files), task.quality_from_metrics(metrics))


def monitor_project(params: Any, paths: Any, model: str | None = None) -> tuple[PassResult, str]:
    """One monitoring pass of the project's served model: read the prediction log and
    people's labels, test what is new, record it in the monitoring table and as one MLflow
    run with its report. Returns (the pass, the MLflow run id)."""
    name = model or params.serve.model or params.model_name
    with tempfile.TemporaryDirectory(prefix="loopline-monitor-") as scratch:
        result = _project_pass(params, paths, name, Path(scratch))
        tracker = RunTracker.start(
            paths.tracking_uri(),
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


def _project_pass(params: Any, paths: Any, name: str, scratch: Path) -> PassResult:
    """`run_pass` on the project's log, labels and stored rows, each version loaded once
    from the registry into `scratch`."""
    task, url, tracking_uri = params.plugin, paths.prediction_log_url(params), paths.tracking_uri()
    cache: dict[str, Version] = {}

    def versions(version: str) -> Version:
        if version not in cache:
            cache[version] = load_version(tracking_uri, name, version, task, scratch)
        return cache[version]

    store = MonitoringStore(url)
    try:
        marks = store.marks(name, SIGNALS)
        records = read_log(url, name, after=marks)
        return run_pass(
            task,
            name,
            records,
            versions,
            params.monitor,
            store,
            seed=params.seed,
            labels=human_labels(params, paths),
            stored=stored_rows(url, task, after=stored_after(marks, records)),
        )
    finally:
        store.close()


def stored_after(marks: dict[str, pd.Timestamp], records: pd.DataFrame) -> pd.Timestamp | None:
    """From when the stored rows can still matter to a pass over `records`: the earliest
    mark of the versions they hold (None, all rows, when one of them has no mark)."""
    versions = {str(v) for v in records["model_version"].unique()}
    if not versions or not versions <= set(marks):
        return None
    return min(marks[v] for v in versions)
