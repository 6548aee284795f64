"""The prediction log: every served prediction, written to a database off the request path.

This is the "live data" later stages read (monitoring, active learning). Requests only put a
record on a bounded in-memory queue; one background thread writes batches through
SQLAlchemy (SQLite by default, any URL such as PostgreSQL by config) and `close()` flushes
what is left on a graceful shutdown. When the database falls behind so far that the queue is
full, records are counted as dropped rather than slowing every request down.

With a spool folder, every queued record is first appended to a local file (one `write` to
the operating system per answered batch, no fsync: a killed process loses nothing the OS
has, only a machine crash could), and a segment is deleted once all its records are in the
database. A new PredictionLog replays the segments of processes that are gone (kill -9,
a crash, a database that stayed away) before it takes new records.

The writer shares the interpreter with the requests, so what it does in Python per record
is taken from them: a batch goes to the database driver as one executemany of plain
tuples (`DriverInsert`), not through SQLAlchemy's per-row parameter handling, which cost
twice the database's own insert.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from operator import attrgetter
from pathlib import Path
from typing import Any, ClassVar

import orjson

from loopline.redaction import redact

log = logging.getLogger(__name__)

# A spool line: one record per line, numpy scalars as numbers.
_SPOOL_OPTIONS = orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def json_line(value: Any) -> bytes:
    """`value` as one line of JSON (a spool line, an NDJSON answer), UTF-8."""
    try:
        return orjson.dumps(value, default=str, option=_SPOOL_OPTIONS)
    except TypeError:  # what orjson cannot write (an integer past 64 bits)
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
        return (text + "\n").encode()


def json_text(value: Any) -> str:
    """`value` as JSON text, the way the prediction log's JSON columns store it."""
    try:
        return orjson.dumps(value, default=str, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    except TypeError:  # what orjson cannot write (an integer past 64 bits)
        return json.dumps(value, default=str)


def json_value(text: str | bytes) -> Any:
    """What `json_text` stored, read back (the monitor's reads): orjson's parser, several
    times the standard library's, and the standard library's for what orjson refuses (NaN,
    which `json_text`'s fallback may write). An integer past 64 bits comes back a float:
    the monitor reads numbers as floats."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


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
        # Who answered: "champion"; while a challenger is deployed also "shadow" (mirrored,
        # not returned), "canary" (returned) or "control" (the champion on a canary's
        # items, not returned). None: logged before roles were recorded.
        Column("role", String(20)),
        # Each answer's own id: a spool replayed after a crash inserts what the database
        # lacks and skips what it holds (records are written in batches, a segment is
        # deleted only once all of it is in). None: logged before answers had ids.
        Column("answer_id", String(32), unique=True),
    )


def upgrade_predictions(engine) -> None:
    """Add what later versions added to an existing `predictions` table (its `role`, its
    `answer_id` and that column's unique index)."""
    from sqlalchemy import inspect, text

    inspector = inspect(engine)
    if not inspector.has_table("predictions"):
        return
    have = {c["name"] for c in inspector.get_columns("predictions")}
    with engine.begin() as connection:
        for name, kind in (("role", "VARCHAR(20)"), ("answer_id", "VARCHAR(32)")):
            if name not in have:
                connection.execute(text(f"ALTER TABLE predictions ADD COLUMN {name} {kind}"))
        if "answer_id" not in have:  # (a table made with the column has its index)
            connection.execute(
                text(
                    "CREATE UNIQUE INDEX IF NOT EXISTS ix_predictions_answer_id "
                    "ON predictions (answer_id)"
                )
            )


def new_answer_id() -> str:
    """A record's id: 128 random bits (unique without coordination between workers)."""
    return os.urandom(16).hex()


class SpooledRecord:
    """What a record of a `PredictionLog` (a dataclass) shares: its row for the table, and
    its spool line (one JSON line) and back. `TIMES` names its datetime fields."""

    TIMES: ClassVar[tuple[str, ...]] = ()
    # Records are slotted dataclasses: no dict per record (a bulk stream logs thousands a
    # second, and the garbage collector walks each object that lives through a batch).
    __slots__ = ()

    def row(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._names()}

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        names = cls.__dict__.get("_field_names")
        if names is None:  # once per class: `fields` on every record cost a hot path
            names = tuple(f.name for f in fields(cls))
            cls._field_names = names
        return names

    def spooled(self) -> bytes:
        """The record as one JSON line (for the spool): orjson writes the dataclass and its
        datetimes (ISO 8601, as `isoformat`) itself, without a dict per record."""
        try:
            return orjson.dumps(self, default=str, option=_SPOOL_OPTIONS)
        except TypeError:  # what orjson cannot write (an integer past 64 bits)
            row = self.row()
            for key in self.TIMES:
                row[key] = row[key].isoformat() if row[key] is not None else None
            return json_line(row)

    @classmethod
    def from_spool(cls, line: str):
        row = json.loads(line)  # (replay is rare; orjson would turn a huge integer to a float)
        for key in cls.TIMES:
            row[key] = datetime.fromisoformat(row[key]) if row[key] else None
        return cls(**row)


@dataclass(slots=True)
class PredictionRecord(SpooledRecord):
    TIMES: ClassVar[tuple[str, ...]] = ("logged_at", "origin")

    model_name: str
    model_version: str
    api: str
    key: str | None
    origin: datetime | None
    inputs: dict[str, Any]
    output: Any
    latency_ms: float | None = None
    logged_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    role: str | None = None
    answer_id: str = field(default_factory=new_answer_id)

    @classmethod
    def of(
        cls,
        model: Any,
        api: str,
        answer: Any,
        latency_ms: float | None,
        role: str | None,
        logged_at: datetime | None = None,
    ):
        """The record of one `serving_adapter.Answer` by a loaded `model` (an error
        answer's record holds its message as the output). `logged_at`: now by default (a
        batch's records may share one)."""
        output = answer.output if not answer.error else {"error": answer.response.get("error")}
        return cls(
            model.name,
            model.version,
            api,
            answer.key,
            answer.origin,
            answer.inputs,
            output,
            latency_ms,
            logged_at or datetime.now(UTC),
            role,
        )


# Bound parameters per SQLite statement: the oldest limit SQLite builds with (3.32 raised it).
SQLITE_VARIABLES = 999


class DriverInsert:
    """`statement` (an insert of `names`) compiled once for `engine`'s dialect and run with
    plain tuples through the driver: on SQLite as statements of many rows each (the
    driver lets the interpreter go once per statement, not once per row, so the requests
    and the insert run side by side), elsewhere as one executemany (psycopg pipelines
    it). Each value passes its column type's bind processor, as SQLAlchemy would pass it
    (a datetime as SQLite's text, JSON serialized), so what is stored is the same."""

    def __init__(self, engine, statement, names: tuple[str, ...]) -> None:
        dialect = engine.dialect
        compiled = statement.compile(dialect=dialect, column_keys=list(names))
        self.sql = compiled.string
        order = list(compiled.positiontup) if compiled.positional else list(names)
        self.values = attrgetter(*order)
        self.keys = None if compiled.positional else tuple(order)
        columns = statement.table.c
        self.processors = [
            (n, remembering(processor))
            for n, name in enumerate(order)
            if (processor := columns[name].type.dialect_impl(dialect).bind_processor(dialect))
        ]
        self.rows_per_statement = 1
        if dialect.name == "sqlite" and compiled.positional:
            head, _, rest = self.sql.partition(" VALUES ")
            end = rest.index(")") + 1  # qmark placeholders: the row's group ends here
            self.head, self.row, self.tail = f"{head} VALUES ", rest[:end], rest[end:]
            self.rows_per_statement = max(1, SQLITE_VARIABLES // len(order))
        self.statements: dict[int, str] = {}

    def parameters(self, record: Any) -> tuple | dict:
        values = self.values(record)
        if self.processors:
            values = list(values)
            for n, processor in self.processors:
                values[n] = processor(values[n])
        return tuple(values) if self.keys is None else dict(zip(self.keys, values, strict=True))

    def run(self, connection, records: list[Any]) -> None:
        step = self.rows_per_statement
        if step == 1:
            connection.exec_driver_sql(self.sql, [self.parameters(r) for r in records])
            return
        # A statement's rows are converted just before it runs, which lets the interpreter
        # go: a request never waits for the whole batch's conversion.
        for start in range(0, len(records), step):
            part = records[start : start + step]
            flat = tuple(value for record in part for value in self.parameters(record))
            connection.exec_driver_sql(self._statement(len(part)), flat)

    def _statement(self, rows: int) -> str:
        sql = self.statements.get(rows)
        if sql is None:
            sql = self.statements[rows] = self.head + ", ".join([self.row] * rows) + self.tail
        return sql


def remembering(processor: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """`processor` that returns its last result again for the same object: the records of
    one answered batch share their `logged_at`, converted once."""
    last: list[Any] = [_NOTHING, None]

    def process(value: Any) -> Any:
        if value is not last[0]:
            last[0], last[1] = value, processor(value)
        return last[1]

    return process


_NOTHING = object()


def insert_skipping_conflicts(table, dialect: str, index_elements: list[str] | None = None):
    """An insert that leaves a row whose unique key is stored already as it was (SQLite's
    and PostgreSQL's ON CONFLICT DO NOTHING); None for another database."""
    if dialect not in ("sqlite", "postgresql"):
        return None
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        from sqlalchemy.dialects.postgresql import insert
    return insert(table).on_conflict_do_nothing(index_elements=index_elements)


class PredictionLog:
    """A bounded queue drained by one writer thread in batches: the writer wakes once
    `batch_size` records wait, or every `flush_interval_s` (a wake-up per answered batch
    handed the interpreter to it in the middle of the request: a stream answering one
    reading at a time paid for it in latency).

    A subclass writes other records the same way (`loopline.online.live.LiveInputLog`): it sets
    `record_type` (with `spooled`, `from_spool` and `row`) and overrides `define` and
    `statement`."""

    record_type: ClassVar[type] = PredictionRecord
    thread_name: ClassVar[str] = "prediction-log"

    def __init__(
        self,
        url: str,
        batch_size: int = 256,
        flush_interval_s: float = 1.0,
        queue_size: int = 100_000,
        spool_dir: Path | None = None,
        spool_segment_bytes: int = 8 * 1024 * 1024,
    ):
        from sqlalchemy import MetaData, create_engine

        self.url = url
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        # orjson for the JSON columns: the stdlib encoder was a fifth of a bulk stream's CPU.
        self.engine = create_engine(url, pool_pre_ping=True, json_serializer=json_text)
        metadata = MetaData()
        self.table = self.define(metadata)
        metadata.create_all(self.engine)
        self.upgrade()
        self.insert = self.statement()
        self.inserter = DriverInsert(self.engine, self.insert, self.record_type._names())
        # Batches of records, as `put_many` took them (an item per record cost the request
        # path more than its spool line); `queued` counts their records, bounded.
        self.pending: list[list[PredictionRecord]] = []
        self.queue_size = queue_size
        self.queued = 0
        self._lock = threading.Lock()  # pending, queued, dropped, and the spool's order
        self._wake = threading.Event()
        self.written = 0
        self.dropped = 0
        self.failed_batches = 0
        self.last_error: str | None = None
        self.replayed = 0
        self.spool = Spool(spool_dir, spool_segment_bytes) if spool_dir else None
        if self.spool is not None:
            self.replayed = self._replay(self.spool.orphans())
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def define(self, metadata):
        """The table the records go to (created if absent)."""
        return predictions_table(metadata)

    def upgrade(self) -> None:
        """Bring a table an earlier version created up to `define`'s."""
        upgrade_predictions(self.engine)

    def statement(self):
        """The statement each batch is written with (an executemany of `record.row()`s):
        insert-or-ignore on the answer's id, so a replay never writes an answer twice."""
        skipping = insert_skipping_conflicts(self.table, self.engine.dialect.name, ["answer_id"])
        return skipping if skipping is not None else self.table.insert()

    def put(self, record: PredictionRecord) -> bool:
        """Queue one record without blocking; False (and counted) when the queue is full."""
        return self.put_many([record]) == 1

    def put_many(self, records: list[PredictionRecord]) -> int:
        """Queue records (spooled first, in one write); returns how many were taken."""
        with self._lock:  # the spool's order is the queue's: segments empty in order
            if self._closed.is_set():
                return 0
            room = self.queue_size - self.queued if self.queue_size else len(records)
            taken = records[: max(0, room)]
            self.dropped += len(records) - len(taken)
            if not taken:
                return 0
            if self.spool is not None:
                self.spool.append(taken)
            self.pending.append(taken)
            self.queued += len(taken)
            full = self.queued >= self.batch_size
        if full:
            self._wake.set()
        return len(taken)

    def _taken(self) -> list[PredictionRecord]:
        """Every queued record, oldest first, now the writer's."""
        with self._lock:
            batches, self.pending, self.queued = self.pending, [], 0
        return [record for batch in batches for record in batch]

    def _replay(self, segments: list[Path]) -> int:
        """Write the records of dead processes' spool segments; delete each once written."""
        replayed = 0
        for n, orphan in enumerate(segments):
            # Claimed by renaming: of workers starting together, one replays each segment.
            segment = orphan.with_name(f"{os.getpid()}-replaying-{n}.ndjson")
            try:
                orphan.rename(segment)
            except FileNotFoundError:
                continue
            records = []
            for line in segment.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    records.append(self.record_type.from_spool(line))
                except (ValueError, TypeError, KeyError):  # a line cut short by the crash
                    continue
            for start in range(0, len(records), self.batch_size):
                if not self._write(records[start : start + self.batch_size], spooled=False):
                    log.error("%s: spool %s kept for the next start", self.thread_name, segment)
                    return replayed
            replayed += len(records)
            segment.unlink(missing_ok=True)
        if replayed:
            log.warning("%s: %d records replayed from the spool", self.thread_name, replayed)
        return replayed

    def _write(self, batch: list[PredictionRecord], spooled: bool = True) -> bool:
        if not batch:
            return True
        for attempt in range(3):
            try:
                with self.engine.begin() as connection:
                    self.inserter.run(connection, batch)
                self.written += len(batch)
                if spooled and self.spool is not None:
                    self.spool.written(len(batch))
                return True
            except Exception as error:  # the database may be briefly away: retry, then report
                self.last_error = redact(f"{type(error).__name__}: {error}")[:500]
                time.sleep(0.2 * (attempt + 1))
        self.failed_batches += 1
        self.dropped += len(batch)
        log.error("%s: %d records not written: %s", self.thread_name, len(batch), self.last_error)
        if spooled and self.spool is not None:  # kept on disk: the next start replays them
            self.spool.keep(batch)
        return False

    def _run(self) -> None:
        """Write what is queued when `batch_size` records wait or the flush interval is up
        (at close(), the rest), in transactions of at most `batch_size` records: a crash
        loses no more than one uncommitted batch's work, which the spool replays."""
        deadline = time.monotonic() + self.flush_interval_s
        while True:
            self._wake.wait(max(0.0, deadline - time.monotonic()))
            self._wake.clear()
            closing = self._closed.is_set()  # (put_many takes nothing once it is set)
            if closing or self.queued >= self.batch_size or time.monotonic() >= deadline:
                taken = self._taken()
                for start in range(0, len(taken), self.batch_size):
                    self._write(taken[start : start + self.batch_size])
                deadline = time.monotonic() + self.flush_interval_s
            if closing:
                return

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush every queued record and stop the writer (graceful shutdown)."""
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
        self._wake.set()
        self._thread.join(timeout_s)
        if self.spool is not None:
            self.spool.close()
        self.engine.dispose()

    def stats(self) -> dict[str, Any]:
        return {
            "url": redact(self.url),
            "queued": self.queued,
            "written": self.written,
            "dropped": self.dropped,
            "replayed": self.replayed,
            "last_error": self.last_error,
        }


class Spool:
    """This process's write-ahead files: segments `<pid>-<n>.ndjson` in `folder`, each
    deleted once every record in it is in the database (records are written in the order
    they were spooled, so the oldest segment empties first)."""

    def __init__(self, folder: Path, segment_bytes: int):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self.lock = threading.Lock()
        # [path, file, records not yet written, bytes] (counted: a `tell` per append is a
        # system call, which lets another thread take the interpreter mid-request)
        self.segments: deque[list] = deque()
        self.count = 0
        self._open_segment()

    def _open_segment(self) -> None:
        self.count += 1
        path = self.folder / f"{os.getpid()}-{self.count}.ndjson"
        self.segments.append([path, open(path, "ab", buffering=0), 0, 0])  # noqa: SIM115

    def orphans(self) -> list[Path]:
        """Segments of processes that no longer run (oldest first)."""
        found = []
        for path in sorted(self.folder.glob("*.ndjson"), key=lambda p: p.stat().st_mtime):
            pid = int(path.name.split("-")[0]) if path.name.split("-")[0].isdigit() else 0
            if pid != os.getpid() and not _alive(pid):
                found.append(path)
        return found

    def append(self, records: list[PredictionRecord]) -> None:
        """Spool `records` (in one write)."""
        data = b"".join([r.spooled() for r in records])
        with self.lock:
            current = self.segments[-1]
            if current[3] > self.segment_bytes:
                self._open_segment()
                current = self.segments[-1]
            current[1].write(data)  # unbuffered: in the OS once this returns
            current[2] += len(records)
            current[3] += len(data)

    def written(self, n: int) -> None:
        """`n` more records (the oldest spooled) are in the database."""
        with self.lock:
            while n > 0 and self.segments:
                oldest = self.segments[0]
                done = min(n, oldest[2])
                oldest[2] -= done
                n -= done
                if oldest[2] == 0:
                    if len(self.segments) > 1:
                        oldest[1].close()
                        oldest[0].unlink(missing_ok=True)
                        self.segments.popleft()
                    elif oldest[3]:  # the current one: emptied in place
                        oldest[1].truncate(0)
                        oldest[1].seek(0)
                        oldest[3] = 0

    def keep(self, records: list[PredictionRecord]) -> None:
        """`records` could not be written: moved to a file of their own, which this process
        never touches again and the next start replays."""
        with self.lock:
            self.count += 1
            kept = self.folder / f"{os.getpid()}-kept-{self.count}.ndjson"
            kept.write_bytes(b"".join([r.spooled() for r in records]))
        self.written(len(records))

    def close(self) -> None:
        with self.lock:
            for path, file, pending, _ in self.segments:
                file.close()
                if pending == 0:
                    path.unlink(missing_ok=True)
            self.segments.clear()


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def read_predictions(url: str, limit: int | None = None) -> list[dict[str, Any]]:
    """Logged predictions, oldest first (for tests, monitoring and labeling)."""
    from sqlalchemy import MetaData, create_engine, select

    engine = create_engine(url)
    try:
        upgrade_predictions(engine)
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
