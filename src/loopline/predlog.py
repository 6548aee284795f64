"""The prediction log: every served prediction, written to a database off the request path.

This is the "live data" later stages read (monitoring, active learning). Requests only put a
record on a bounded in-memory queue; one background thread writes batches through
SQLAlchemy (SQLite by default, any URL such as PostgreSQL by config) and `close()` flushes
what is left on a graceful shutdown. When the database falls behind so far that the queue is
full, records are counted as dropped rather than slowing every request down.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from loopline.redaction import redact

log = logging.getLogger(__name__)


def predictions_table(metadata):
    from sqlalchemy import JSON, BigInteger, Column, DateTime, Float, Integer, String, Table

    return Table(
        "predictions",
        metadata,
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
        Column("logged_at", DateTime(timezone=True), nullable=False, index=True),
        Column("model_name", String(200), nullable=False),
        Column("model_version", String(50), nullable=False, index=True),
        Column("api", String(50), nullable=False),
        Column("key", String(200)),  # the group the prediction is for (a site, a review id)
        Column("origin", DateTime(timezone=True)),  # a time series' origin, where there is one
        Column("inputs", JSON),  # the inputs' key fields
        Column("output", JSON, nullable=False),
        Column("latency_ms", Float),
    )


@dataclass
class PredictionRecord:
    model_name: str
    model_version: str
    api: str
    key: str | None
    origin: datetime | None
    inputs: dict[str, Any]
    output: Any
    latency_ms: float | None = None
    logged_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def row(self) -> dict[str, Any]:
        return {
            "logged_at": self.logged_at,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "api": self.api,
            "key": self.key,
            "origin": self.origin,
            "inputs": self.inputs,
            "output": self.output,
            "latency_ms": self.latency_ms,
        }


class PredictionLog:
    """A bounded queue drained by one writer thread in batches."""

    def __init__(
        self,
        url: str,
        batch_size: int = 256,
        flush_interval_s: float = 1.0,
        queue_size: int = 100_000,
    ):
        from sqlalchemy import MetaData, create_engine

        self.url = url
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.engine = create_engine(url, pool_pre_ping=True)
        metadata = MetaData()
        self.table = predictions_table(metadata)
        metadata.create_all(self.engine)
        self.queue: queue.Queue[PredictionRecord | None] = queue.Queue(maxsize=queue_size)
        self.written = 0
        self.dropped = 0
        self.failed_batches = 0
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._closed = threading.Event()
        self._thread.start()

    def put(self, record: PredictionRecord) -> bool:
        """Queue one record without blocking; False (and counted) when the queue is full."""
        if self._closed.is_set():
            return False
        try:
            self.queue.put_nowait(record)
            return True
        except queue.Full:
            self.dropped += 1
            return False

    def _write(self, batch: list[PredictionRecord]) -> None:
        if not batch:
            return
        for attempt in range(3):
            try:
                with self.engine.begin() as connection:
                    connection.execute(self.table.insert(), [r.row() for r in batch])
                self.written += len(batch)
                return
            except Exception as error:  # the database may be briefly away: retry, then report
                self.last_error = redact(f"{type(error).__name__}: {error}")[:500]
                time.sleep(0.2 * (attempt + 1))
        self.failed_batches += 1
        self.dropped += len(batch)
        log.error("prediction log: %d records not written: %s", len(batch), self.last_error)

    def _run(self) -> None:
        batch: list[PredictionRecord] = []
        deadline = time.monotonic() + self.flush_interval_s
        while True:
            timeout = max(0.0, deadline - time.monotonic())
            try:
                item = self.queue.get(timeout=timeout)
            except queue.Empty:
                item = ...
            if item is None:  # close(): write what is left and stop
                self._write(batch)
                return
            if item is not ...:
                batch.append(item)
            if len(batch) >= self.batch_size or time.monotonic() >= deadline:
                self._write(batch)
                batch = []
                deadline = time.monotonic() + self.flush_interval_s

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush every queued record and stop the writer (graceful shutdown)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self.queue.put(None)
        self._thread.join(timeout_s)
        self.engine.dispose()

    def stats(self) -> dict[str, Any]:
        return {
            "url": redact(self.url),
            "queued": self.queue.qsize(),
            "written": self.written,
            "dropped": self.dropped,
            "last_error": self.last_error,
        }


def read_predictions(url: str, limit: int | None = None) -> list[dict[str, Any]]:
    """Logged predictions, oldest first (for tests, monitoring and labeling)."""
    from sqlalchemy import MetaData, create_engine, select

    engine = create_engine(url)
    try:
        table = predictions_table(MetaData())
        query = select(table).order_by(table.c.id)
        if limit:
            query = query.limit(limit)
        with engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]
    finally:
        engine.dispose()


def text_id(text: str) -> str:
    """A logged text's id in the labeling pool: the same text always gets the same id."""
    import hashlib

    return "log:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def logged_texts(url: str, model_name: str):
    """Distinct texts the service was asked to classify (id, text, origin), for labeling.

    An absent log (no service has run yet) is an empty pool, not an error.
    """
    import pandas as pd
    from sqlalchemy import MetaData, create_engine, inspect, select

    empty = pd.DataFrame(columns=["id", "text", "origin"])
    engine = create_engine(url)
    try:
        if not inspect(engine).has_table("predictions"):
            return empty
        table = predictions_table(MetaData())
        query = select(table.c.inputs).where(table.c.model_name == model_name)
        with engine.connect() as connection:
            texts = [
                row.inputs["text"]
                for row in connection.execute(query)
                if isinstance(row.inputs, dict) and isinstance(row.inputs.get("text"), str)
            ]
    finally:
        engine.dispose()
    if not texts:
        return empty
    unique = list(dict.fromkeys(texts))
    return pd.DataFrame(
        {"id": [text_id(t) for t in unique], "text": unique, "origin": "prediction_log"}
    )
