"""What the operator page shows, read as plain data (JSON-ready) from the registry, the
prediction log and the monitoring table.

A panel whose facts are not there raises `Missing`, saying what is missing and what to do
(no model, no champion yet, an empty log, the monitor never ran, a registry that does not
answer): the page shows that sentence and the other panels still load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loopline import registry
from loopline.errors import LooplineError
from loopline.offline.publishing import (
    GATE_TAG,
    GATE_TEST_TAG,
    PARAMS_TAG,
    PIPELINE_RUN_TAG,
)
from loopline.offline.tracking import TRIGGER_TAG
from loopline.online.live import stored_since
from loopline.online.predlog import predictions_table
from loopline.redaction import redact
from loopline.registry import tagged_metrics
from loopline.watch import deploy
from loopline.watch.monitor import SUMMARY, event_times, monitoring_table, upgrade_monitoring


class Missing(LooplineError):
    """A panel's facts are not there; the message says which and what to do."""


def _unreachable(what: str, where: str, error: Exception) -> Missing:
    return Missing(f"{what} at {redact(where)} did not answer: {redact(error)}")


def _iso(millis: int | None) -> str | None:
    if millis is None:
        return None
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------------- the registry


def model_names(tracking_uri: str) -> list[str]:
    """Every registered model's name, sorted."""
    try:
        return registry.model_names(tracking_uri)
    except Exception as error:  # whatever MLflow's store or transport raises
        raise _unreachable("the registry", tracking_uri, error) from None


def flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested params as `section.key` → value (lists kept whole), for a diff."""
    if not isinstance(value, dict):
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, inner in value.items():
        out.update(flat(inner, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _json_tag(value: str | None) -> dict[str, Any] | None:
    try:
        return json.loads(value) if value else None
    except ValueError:
        return None


def version_card(mv: Any, aliases: list[str], history: list[dict[str, Any]]) -> dict[str, Any]:
    """One version's facts: lineage, metrics, the gate's verdict and statistics (from the
    history entry that promoted it), params, and a service's refusal mark if any."""
    tags = dict(mv.tags or {})
    try:
        params = json.loads(tags.get(PARAMS_TAG) or "{}")
    except ValueError:  # cut at MLflow's tag limit: shown as it is
        params = {"(params)": tags.get(PARAMS_TAG)}
    moves = [e for e in history if str(e.get("to")) == str(mv.version)]
    gate = next((e["gate"] for e in reversed(moves) if e.get("gate")), None)
    if gate is None:  # a held version: the test its run decided on, kept in its tags
        gate = _json_tag(tags.get(GATE_TEST_TAG))
    metrics = tagged_metrics(tags)
    return {
        "version": str(mv.version),
        "aliases": aliases,
        "created": _iso(mv.creation_timestamp),
        "data_version": tags.get(f"{registry.TAG}data_version"),
        "git_commit": tags.get(f"{registry.TAG}git_commit"),
        "git_dirty": tags.get(f"{registry.TAG}git_dirty") == "true",
        "pipeline_run": tags.get(PIPELINE_RUN_TAG) or mv.run_id,
        "trigger": tags.get(TRIGGER_TAG),
        "verdict": tags.get(GATE_TAG),
        "gate": gate,
        "metrics": metrics,
        "params": flat(params),
        "refused": registry.refusal_in(tags),
    }


@dataclass
class Registered:
    """One registered model as the page needs it: versions, aliases and history."""

    name: str
    versions: dict[str, Any]  # version → ModelVersion
    aliases: dict[str, list[str]]  # version → its aliases
    history: list[dict[str, Any]]  # champion moves, oldest first
    deployment: dict[str, Any] | None = None  # a shadow or canary challenger running
    deployments: list[dict[str, Any]] = field(default_factory=list)  # starts and ends

    def card(self, version: str) -> dict[str, Any]:
        if version not in self.versions:
            known = ", ".join(sorted(self.versions, key=int)) or "none"
            raise Missing(f"model {self.name!r} has no version {version!r} (versions: {known})")
        return version_card(self.versions[version], self.aliases.get(version, []), self.history)

    def holding(self, alias: str) -> str | None:
        return next((v for v, names in self.aliases.items() if alias in names), None)


def read_model(tracking_uri: str, name: str) -> Registered:
    try:
        found = registry.registered_model(tracking_uri, name)
    except Exception as error:  # whatever MLflow's store or transport raises
        raise _unreachable("the registry", tracking_uri, error) from None
    if found is None:
        raise Missing(f"no registered model {name!r}: `loopline run` publishes one")
    model, versions = found
    aliases: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)

    tags = model.tags
    history = [json.loads(tags[k]) for k in sorted(tags) if k.startswith(registry.HISTORY_PREFIX)]
    deployments = [json.loads(tags[k]) for k in sorted(tags) if k.startswith(deploy.HISTORY_PREFIX)]
    running = json.loads(tags[deploy.TAG]) if tags.get(deploy.TAG) else None
    versions_by = {str(v.version): v for v in versions}
    return Registered(name, versions_by, aliases, history, running, deployments)


def now_panel(tracking_uri: str, name: str) -> dict[str, Any]:
    """The champion (since when, who moved it and why), the challenger, every version."""
    model = read_model(tracking_uri, name)
    champion = model.holding(registry.CHAMPION)
    challenger = model.holding(registry.CHALLENGER)
    out: dict[str, Any] = {"name": name, "champion": None, "challenger": None}
    out["deployment"] = model.deployment
    if champion is not None:
        moved = next((e for e in reversed(model.history) if str(e.get("to")) == champion), {})
        out["champion"] = {**model.card(champion), "since": moved.get("when"), "move": moved}
    if challenger is not None and challenger != champion:
        out["challenger"] = model.card(challenger)
    out["versions"] = [
        {
            "version": v,
            "aliases": model.aliases.get(v, []),
            "created": _iso(model.versions[v].creation_timestamp),
            "refused": registry.refusal(model.versions[v]) is not None,
        }
        for v in sorted(model.versions, key=int, reverse=True)
    ]
    out["missing"] = (
        None if champion else f"{name!r} has no champion yet: no version passed the gate"
    )
    return out


def history_panel(tracking_uri: str, name: str) -> dict[str, list[dict[str, Any]]]:
    """Every champion move and every deployment's start and end, newest first, with the
    gate's or the policy's statistics where one decided."""
    model = read_model(tracking_uri, name)
    if not model.history:
        raise Missing(f"{name!r} has no champion history yet: no version was ever promoted")
    return {"moves": model.history[::-1], "deployments": model.deployments[::-1]}


def diff(tracking_uri: str, name: str, a: str, b: str) -> dict[str, Any]:
    """Two versions side by side: one row per fact (metric, param, lineage, gate) that
    either has, marked where they differ."""
    model = read_model(tracking_uri, name)
    left, right = model.card(str(a)), model.card(str(b))
    rows = []
    for group in ("lineage", "metrics", "gate", "params"):
        mine, theirs = _facts(group, left), _facts(group, right)
        for key in sorted(set(mine) | set(theirs)):
            a_value, b_value = mine.get(key), theirs.get(key)
            changed = _differ(a_value, b_value)
            rows.append(
                {"group": group, "field": key, "a": a_value, "b": b_value, "changed": changed}
            )
    return {"a": left, "b": right, "rows": rows}


def _facts(group: str, card: dict[str, Any]) -> dict[str, Any]:
    if group == "lineage":
        keys = ("data_version", "git_commit", "git_dirty", "created", "trigger", "verdict")
        return {key: card.get(key) for key in keys}
    if group == "gate":
        gate = card.get("gate") or {}
        return {k: v for k, v in gate.items() if not isinstance(v, dict | list)}
    return card.get(group) or {}


def _differ(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return not np.isclose(a, b, rtol=1e-9, atol=0.0)
    return a != b


# ---------------------------------------------------------------------- the prediction log


def _where(engine: Any) -> str:
    return engine.url.render_as_string(hide_password=True)


def recent_predictions(
    engine: Any, name: str, after_id: int = 0, limit: int = 50
) -> list[dict[str, Any]]:
    """The newest predictions of `name` with an id above `after_id`, oldest first (at most
    `limit`: the newest of them). `engine`: the prediction log's (SQLAlchemy)."""
    from sqlalchemy import MetaData, inspect, select

    try:
        if not inspect(engine).has_table("predictions"):
            return []
        t = predictions_table(MetaData())
        query = (
            select(t)
            .where(t.c.model_name == name, t.c.id > after_id)
            .order_by(t.c.id.desc())
            .limit(limit)
        )
        with engine.connect() as connection:
            rows = [dict(r._mapping) for r in connection.execute(query)]
    except Exception as error:
        raise _unreachable("the prediction log", _where(engine), error) from None
    return [_prediction(row) for row in reversed(rows)]


def _prediction(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: row[k] for k in ("id", "model_version", "api", "key", "output", "latency_ms")}
    for key in ("logged_at", "origin"):
        out[key] = pd.Timestamp(row[key]).isoformat() if row[key] is not None else None
    return out


def live_panel(
    engine: Any,
    name: str,
    task: Any,
    columns: list[str],
    spec_of: Any,
    labels: pd.DataFrame | None,
    limit: int,
) -> dict[str, Any]:
    """The last `limit` predictions as the task's picture (say, predictions against the
    readings measured since) and live quality over time where truth has joined them.
    `columns`: the task's raw data contract; `spec_of(version)`: a version's feature spec."""
    records = pd.DataFrame(recent_predictions(engine, name, limit=limit))
    if records.empty:
        raise Missing(
            f"the prediction log at {redact(_where(engine))} holds no prediction of {name!r} "
            "yet: send one to a service"
        )
    records["time"] = event_times(records)
    rows = _truth_rows(engine.url.render_as_string(hide_password=False), task, records, columns)
    pictures, losses = [], []
    for version, group in records.groupby("model_version", sort=True):
        spec = spec_of(str(version))
        batch = group.reset_index(drop=True)
        parts = rows if rows is not None else task.logged_rows(batch, spec)
        picture = task.live_picture(batch, parts, spec)
        if picture is not None:
            pictures.append(picture)
        lost = task.live_losses(batch, parts, labels if labels is not None else _no_labels(), spec)
        losses.append(pd.DataFrame({"time": batch["time"], "loss": np.asarray(lost, float)}))
    quality_name = task.quality_name(spec_of(str(records["model_version"].iloc[-1])))
    return {
        "predictions": len(records),
        "picture": _picture_json(pictures),
        "quality": _quality_json(task, pd.concat(losses), quality_name),
    }


def _no_labels() -> pd.DataFrame:
    return pd.DataFrame(columns=["id", "label"])


def _truth_rows(
    url: str, task: Any, records: pd.DataFrame, columns: list[str]
) -> pd.DataFrame | None:
    """The rows the service stored since the oldest of `records` (their truth, for a task
    whose rows carry time), or None: the log's own rows stand for them."""
    time = getattr(task, "time_column", None)
    if not time:
        return None
    try:
        rows = stored_since(url, task, columns, records["time"])
    except Exception as error:
        raise _unreachable("the live inputs table", redact(url), error) from None
    return None if rows.empty or time not in rows else rows


def _seconds(times: pd.Series) -> list[float]:
    """Epoch seconds (what the pictures' time axes take), whatever the time unit."""
    since = pd.to_datetime(times, utc=True) - pd.Timestamp(0, tz="UTC")
    return (since / pd.Timedelta(seconds=1)).tolist()


def _finite(values: pd.Series) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in values.astype(float)]


def _picture_json(pictures: list[Any]) -> dict[str, Any] | None:
    """One picture of every version's predictions: per key, time in epoch seconds."""
    if not pictures:
        return None
    first = pictures[0]
    frame = pd.concat([p.frame for p in pictures], ignore_index=True).sort_values("time")
    frame = frame.dropna(subset=["time"])
    if "key" not in frame:
        frame["key"] = ""
    out = {"kind": first.kind, "title": first.title, "unit": first.unit, "keys": {}}
    for key, group in frame.groupby(frame["key"].astype(str), sort=True):
        if first.kind == "lines":
            lines = [c for c in group.columns if c not in ("time", "key")]
            out["keys"][key] = {
                "x": _seconds(group["time"]),
                "lines": {c: _finite(group[c]) for c in lines},
            }
        else:
            out["keys"][key] = _mix(group)
    return out


def _bins(times: pd.Series, count: int = 24) -> pd.Series:
    """Each time's bin start, `count` equal bins over the span (one bin when no span)."""
    times = pd.to_datetime(times, utc=True)
    start, span = times.min(), times.max() - times.min()
    if span <= pd.Timedelta(0):
        return pd.Series(start, index=times.index)
    width = span / count
    return start + width * ((times - start) // width).clip(upper=count - 1)


def _mix(group: pd.DataFrame) -> dict[str, Any]:
    """Each label's share of the predictions per time bin."""
    bins = _bins(group["time"])
    counts = pd.crosstab(bins, group["label"])
    shares = counts.div(counts.sum(axis=1), axis=0)
    return {
        "x": _seconds(pd.Series(shares.index)),
        "lines": {str(c): _finite(shares[c]) for c in shares.columns},
        "counts": {str(c): int(counts[c].sum()) for c in counts.columns},
    }


def _quality_json(task: Any, losses: pd.DataFrame, name: str) -> dict[str, Any]:
    """The task's quality figure of the predictions whose truth is known, per time bin."""
    known = losses[np.isfinite(losses["loss"].astype(float))]
    if known.empty:
        return {"name": name, "x": [], "values": [], "rows": [], "known": 0}
    bins = _bins(known["time"])
    x, values, counts = [], [], []
    for start, group in known.groupby(bins, sort=True):
        x.append(pd.Timestamp(start).timestamp())
        values.append(float(task.quality_figure(group["loss"].to_numpy(float))))
        counts.append(len(group))
    return {"name": name, "x": x, "values": values, "rows": counts, "known": len(known)}


# ---------------------------------------------------------------------- the monitor


def health_panel(engine: Any, name: str, limit: int = 5000) -> dict[str, Any]:
    """The monitor's tested periods per signal and version (statistic over threshold: 1 =
    at it) as series over time, with the alarms among them."""
    from sqlalchemy import MetaData, inspect, select

    try:
        if not inspect(engine).has_table("monitoring"):
            raise Missing("the monitor has not run yet: `loopline monitor` (or its schedule)")
        upgrade_monitoring(engine)  # a table an earlier release made: its columns renamed
        t = monitoring_table(MetaData())
        wanted = ("signal", "model_version", "period_start", "statistic", "threshold")
        query = (
            select(*(t.c[c] for c in (*wanted, "alarm", "streak", "note")))
            .where(t.c.model_name == name, t.c.feature == SUMMARY)
            .order_by(t.c.period_start.desc())
            .limit(limit)
        )
        with engine.connect() as connection:
            result = connection.execute(query)
            rows = pd.DataFrame(result.fetchall(), columns=list(result.keys()))
    except Missing:
        raise
    except Exception as error:
        raise _unreachable("the monitoring table", _where(engine), error) from None
    if rows.empty:
        raise Missing(f"the monitor has tested no period of {name!r} yet")
    return _signals_json(rows.sort_values("period_start"))


def _signals_json(rows: pd.DataFrame) -> dict[str, Any]:
    tested = rows[rows["statistic"].notna()]
    series = []
    for (signal, version), group in tested.groupby(["signal", "model_version"], sort=True):
        ratio = group["statistic"].astype(float) / group["threshold"].astype(float)
        series.append(
            {
                "signal": signal,
                "version": str(version),
                "x": _seconds(group["period_start"]),
                "ratio": _finite(ratio),
                "alarm": group["alarm"].astype(bool).tolist(),
            }
        )
    alarms = rows[rows["alarm"].astype(bool)].tail(20)
    return {
        "series": series,
        "alarms": [
            {
                "signal": a.signal,
                "version": str(a.model_version),
                "period_start": pd.Timestamp(a.period_start).isoformat(),
                "streak": int(a.streak),
                "note": a.note,
            }
            for a in alarms.itertuples()
        ][::-1],
        "last_period": pd.Timestamp(rows["period_start"].max()).isoformat(),
    }


def monitor_runs(tracking_uri: str, experiment: str, name: str, count: int = 10) -> list[dict]:
    """The monitor's latest MLflow runs of `name` (each holds its report)."""
    try:
        experiment_id, runs = registry.tagged_runs(
            tracking_uri, experiment, "loopline.model", name, count
        )
    except Exception as error:  # whatever MLflow's store or transport raises
        raise _unreachable("the registry", tracking_uri, error) from None
    return [
        {
            "run_id": run.info.run_id,
            "experiment_id": experiment_id,
            "started": _iso(run.info.start_time),
            "alarm": run.data.tags.get("loopline.monitor.alarm") == "true",
            "signals": run.data.tags.get("loopline.monitor.alarm_signals") or "",
        }
        for run in runs
    ]


def monitor_report(tracking_uri: str, run_id: str, dest: Path) -> Path:
    """A monitor run's HTML report, downloaded into `dest`."""
    import mlflow

    try:
        folder = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="monitor", dst_path=str(dest), tracking_uri=tracking_uri
        )
    except Exception as error:
        raise Missing(f"monitor run {run_id} has no report: {redact(error)}") from None
    path = Path(folder) / "monitor.html"
    if not path.exists():
        raise Missing(f"monitor run {run_id} has no monitor.html")
    return path
