"""Live inputs: the raw rows the service answered, stored once as training data.

With `serve.store_inputs` (on by default) the service writes every row an accepted item
stands for (the task's serving adapter says which: `Serving.input_rows`) to the table
`live_inputs` of the prediction-log database, off the request path and with the same spool
and crash guarantees as the prediction log (`LiveInputLog` is one). A row is keyed by its
task and the task's key columns (`row_key`, say `greensboro|2021-03-01T10:00:00+00:00`):
the unique constraint and an insert that skips conflicts (SQLite's and PostgreSQL's
`ON CONFLICT DO NOTHING`) store a replayed or retried row once, whichever process sends it.

The offline flow reads the table back with `ingest.source: live` (`read_live_inputs`), as
the task's raw columns, and its watermark and validation apply as to any source.

The table, for readers of their own (the monitor):

    live_inputs(id, task, row_key, event_time, fields, model_name, model_version, api,
                logged_at), unique (task, row_key)

`fields` is the raw row as JSON (column → value; times as ISO text in UTC; a label the
client did not send is absent), `event_time` the row's time column (None for a task
without one), `model_version` the version that answered it first.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from loopline.online.predlog import PredictionLog, SpooledRecord, insert_skipping_conflicts

if TYPE_CHECKING:
    from pathlib import Path

    import pandas as pd

TABLE = "live_inputs"


def live_inputs_table(metadata):
    from sqlalchemy import (
        JSON,
        BigInteger,
        Column,
        DateTime,
        Index,
        Integer,
        String,
        Table,
        UniqueConstraint,
    )

    return Table(
        TABLE,
        metadata,
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
        Column("task", String(100), nullable=False),
        Column("row_key", String(500), nullable=False),  # the key columns' values, "|"-joined
        Column("event_time", DateTime(timezone=True)),  # the row's time column, if any
        Column("fields", JSON, nullable=False),  # the raw row: column → value
        Column("model_name", String(200), nullable=False),
        Column("model_version", String(50), nullable=False),
        Column("api", String(50), nullable=False),
        Column("logged_at", DateTime(timezone=True), nullable=False),
        UniqueConstraint("task", "row_key", name="uq_live_inputs_task_row_key"),
        Index("ix_live_inputs_task_event_time", "task", "event_time"),
    )


def content_id(fields: dict[str, Any]) -> str:
    """An id for a row sent without one: the same values always get the same id (so a
    replayed row is stored once, as `predlog.text_id` does for texts)."""
    text = orjson.dumps(fields, default=str, option=orjson.OPT_SORT_KEYS)
    return "live:" + hashlib.sha256(text).hexdigest()[:16]


def row_key(fields: dict[str, Any], key_columns: list[str]) -> str:
    """A row's key: its key columns' values as text, joined by "|" (`ingest.row_keys`)."""
    return "|".join("" if fields.get(c) is None else str(fields[c]) for c in key_columns)


@dataclass(slots=True)
class LiveRow(SpooledRecord):
    """One stored input row (a record of `LiveInputLog`)."""

    TIMES: ClassVar[tuple[str, ...]] = ("logged_at", "event_time")

    task: str
    row_key: str
    event_time: datetime | None
    fields: dict[str, Any]
    model_name: str
    model_version: str
    api: str
    logged_at: datetime = field(default_factory=lambda: datetime.now(UTC))


def live_rows(
    task: Any, rows: list[dict[str, Any]], model_name: str, model_version: str, api: str
) -> list[LiveRow]:
    """Raw rows (as an adapter's `input_rows` gives them) as records keyed by `task`'s key
    columns, with their event time from its time column."""
    keys, time = list(task.key_columns), task.time_column
    logged_at = datetime.now(UTC)
    out = []
    for fields in rows:
        when = fields.get(time) if time else None
        out.append(
            LiveRow(
                task=task.name,
                row_key=row_key(fields, keys),
                event_time=_time(when),
                fields=fields,
                model_name=model_name,
                model_version=model_version,
                api=api,
                logged_at=logged_at,
            )
        )
    return out


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        try:
            value = datetime.fromisoformat(str(value))
        except ValueError:
            return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def insert_once(table, dialect: str):
    """An insert that skips a row whose (task, row_key) is stored already."""
    statement = insert_skipping_conflicts(table, dialect, ["task", "row_key"])
    if statement is None:
        raise ValueError(
            f"serve.store_inputs stores each row once through SQLite's or PostgreSQL's "
            f"ON CONFLICT DO NOTHING; the prediction log is {dialect} (set "
            "serve.store_inputs: false, or point serve.prediction_log at one of them)"
        )
    return statement


class LiveInputLog(PredictionLog):
    """The prediction log's writer for `live_inputs`: the same bounded queue, background
    batches and spool, with each row inserted once. Rows this process queued recently are
    skipped before they are queued (a stream's items share rows, and so do a client's
    `/predict` items), so the database sees most duplicates never."""

    record_type: ClassVar[type] = LiveRow
    thread_name: ClassVar[str] = "live-inputs"

    def __init__(self, url: str, recent: int = 200_000, **options: Any) -> None:
        # Keys as text in a plain dict, oldest first: the garbage collector skips a dict
        # of strings, and a full collection walked 200,000 tuples of an OrderedDict.
        self.recent: dict[str, None] = {}
        self.recent_limit = recent
        self.skipped = 0
        super().__init__(url, **options)

    def upgrade(self) -> None:
        """Nothing yet: the table is as the first version made it."""

    def define(self, metadata):
        return live_inputs_table(metadata)

    def statement(self):
        return insert_once(self.table, self.engine.dialect.name)

    def put_many(self, records: list[LiveRow]) -> int:
        """Queue the rows not queued recently; returns how many were taken."""
        fresh, keys, seen = [], [], self.recent
        for record in records:
            key = f"{record.task}\n{record.row_key}"
            if key in seen:
                self.skipped += 1
            else:
                seen[key] = None  # (also dedups within `records`)
                fresh.append(record)
                keys.append(key)
        taken = super().put_many(fresh)
        for key in keys[taken:]:  # not taken (a full queue): may come again
            seen.pop(key, None)
        if len(seen) > self.recent_limit:  # the older half forgotten at once
            self.recent = dict.fromkeys(list(seen)[len(seen) - self.recent_limit // 2 :])
        return taken

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "skipped_as_recent": self.skipped}


def read_live_inputs(
    url: str, task_name: str, columns: list[str], after: datetime | None = None
) -> pd.DataFrame:
    """The stored rows of `task_name` as a frame of `columns` (the task's raw schema), by
    event time, then in storing order; a column a row lacks (say, a label) is missing.
    `after`: only rows whose event time is later (or who have none). No table yet (no
    service stored anything): no rows."""
    import pandas as pd
    from sqlalchemy import MetaData, create_engine, inspect, or_, select

    engine = create_engine(url)
    try:
        if not inspect(engine).has_table(TABLE):
            return pd.DataFrame(columns=columns)
        table = live_inputs_table(MetaData())
        # In event-time order, not storing order: clients send items in any order, and
        # validation's `in_order` rule reads a series' rows in the frame's order.
        query = (
            select(table.c.fields)
            .where(table.c.task == task_name)
            .order_by(table.c.event_time, table.c.id)
        )
        if after is not None:
            query = query.where(or_(table.c.event_time.is_(None), table.c.event_time > after))
        with engine.connect() as connection:
            rows = [row.fields for row in connection.execute(query)]
    finally:
        engine.dispose()
    return (
        pd.DataFrame.from_records(rows, columns=columns) if rows else pd.DataFrame(columns=columns)
    )


def stored_since(url: str, task: Any, columns: list[str], times: pd.Series) -> pd.DataFrame:
    """The stored rows of `task` from the earliest of `times` on (all of them when `times`
    holds none): the truth of predictions made at those times, with the task's time column
    as UTC timestamps."""
    import pandas as pd

    known = pd.to_datetime(times, utc=True, errors="coerce").dropna()
    since = (known.min() - pd.Timedelta(microseconds=1)).to_pydatetime() if len(known) else None
    rows = read_live_inputs(url, task.name, columns, after=since)
    time = task.time_column
    if time and time in rows:
        rows[time] = pd.to_datetime(rows[time], utc=True, errors="coerce", format="ISO8601")
    return rows


def spool_folder(state: Path, model_name: str) -> Path:
    """Where a service's live-input spool segments go (apart from its prediction log's)."""
    return state / "spool-live" / model_name
