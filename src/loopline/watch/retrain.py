"""Alarm to retrain: whether a pass's alarms start the offline deployment (a cooldown
keeps an alarm that persists while its retrain runs from starting another), recorded in
the monitoring table before it starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from loopline.watch.result import PassResult
from loopline.watch.store import RETRAIN, SUMMARY, MonitoringStore


@dataclass(frozen=True)
class RetrainDecision:
    """Whether a pass's alarms start the offline deployment, and why (or why not)."""

    start: bool
    reason: str


def describe_alarms(alarms: list[dict[str, Any]]) -> str:
    """A pass's alarms in words, one phrase per signal and version: since which period,
    for how many periods, and the latest statistic against its threshold."""
    phrases = []
    for (signal, version), group in pd.DataFrame(alarms).groupby(
        ["signal", "model_version"], sort=False
    ):
        since = pd.Timestamp(group["period_start"].min()).strftime("%Y-%m-%d %H:%M")
        last = group.sort_values("period_start").iloc[-1]
        figure = ""
        if pd.notna(last.get("statistic")) and pd.notna(last.get("threshold")):
            figure = f", latest {last['statistic']:.3g} > {last['threshold']:.3g}"
        phrases.append(
            f"{signal} of v{version} since the period from {since} UTC "
            f"({int(last['streak'])} period(s) over its threshold{figure})"
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
        "period_start": now.to_pydatetime(),
        "period_end": now.to_pydatetime(),
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
