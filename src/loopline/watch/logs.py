"""What the monitor reads: the prediction log's rows of a model, the raw rows the service
stored, and from them one version's live columns (its monitored inputs, outputs and
per-prediction losses), each with the event time its periods are cut by.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import MetaData, Table, and_, create_engine, func, inspect, or_, select

from loopline.offline.reference import EVENT_TIME
from loopline.online.predlog import json_value, predictions_table
from loopline.watch.store import as_utc

log = logging.getLogger(__name__)


def event_times(records: pd.DataFrame) -> pd.Series:
    """A prediction's event time: its origin (where the task logs one), else when it was
    logged. The
    columns may hold datetimes (the log's rows) or ISO text (the operator page's)."""
    origin = pd.to_datetime(records["origin"], utc=True, errors="coerce", format="ISO8601")
    logged = pd.to_datetime(records["logged_at"], utc=True, errors="coerce", format="ISO8601")
    return origin.fillna(logged)


@dataclass
class Live:
    """One version's live columns, each with the event time its periods are cut by."""

    features: pd.DataFrame
    outputs: pd.DataFrame
    losses: pd.DataFrame  # columns loss, event_time
    truth_until: pd.Timestamp | None


def stored_rows(url: str, task: Any, after: pd.Timestamp | None = None) -> pd.DataFrame | None:
    """The raw rows the service stored as training data (the `live_inputs` table: its
    `fields` JSON per row, by task), or None when there is no such table or no row.
    `after`: only the rows whose event time is later (or who have none)."""
    engine = create_engine(url)
    try:
        if not inspect(engine).has_table("live_inputs"):
            return None
        table = Table("live_inputs", MetaData(), autoload_with=engine)
        query = select(table.c.fields).where(table.c.task == task.name).order_by(table.c.id)
        if after is not None:
            moment = after.to_pydatetime()
            query = query.where(or_(table.c.event_time.is_(None), table.c.event_time > moment))
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


def live_columns(
    task: Any,
    records: pd.DataFrame,
    spec: Any,
    labels: pd.DataFrame,
    stored: pd.DataFrame | None = None,
) -> Live:
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
        until = as_utc(features[EVENT_TIME].max())
    return Live(features, outputs, losses, until)


def read_log(
    url: str,
    model_name: str,
    attempts: int = 3,
    after: Mapping[str, pd.Timestamp] | None = None,
) -> pd.DataFrame:
    """The prediction log's rows for `model_name` (an absent log: empty), with retries.
    `after` (version → the monitor's mark, `MonitoringStore.marks`): a version's rows only
    from after its mark by event time (`event_times`), the other versions' all: a pass
    reads what it may still test, not the whole history."""
    columns = ["model_version", "key", "origin", "inputs", "output", "logged_at"]
    for attempt in range(attempts):
        engine = create_engine(url, json_deserializer=json_value)
        try:
            if not inspect(engine).has_table("predictions"):
                return pd.DataFrame(columns=columns)
            t = predictions_table(MetaData())
            query = (
                select(*(t.c[c] for c in columns))
                .where(t.c.model_name == model_name)
                .order_by(t.c.id)
            )
            if after:
                query = query.where(_after_marks(t, after))
            with engine.connect() as connection:
                return pd.DataFrame(connection.execute(query).tuples().all(), columns=columns)
        except Exception as error:
            if attempt == attempts - 1:
                raise
            log.warning("prediction log: %s; retrying", type(error).__name__)
            time.sleep(0.5 * (attempt + 1))
        finally:
            engine.dispose()
    raise AssertionError("unreachable")


def _after_marks(t, after: Mapping[str, pd.Timestamp]):
    """Rows of a marked version later than its mark by event time (the origin, else the
    logging time), and every row of the versions not marked."""
    event_time = func.coalesce(t.c.origin, t.c.logged_at)
    return or_(
        t.c.model_version.notin_(list(after)),
        *(
            and_(t.c.model_version == version, event_time > mark.to_pydatetime())
            for version, mark in after.items()
        ),
    )
