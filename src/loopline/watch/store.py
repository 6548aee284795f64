"""The monitoring table: every period the monitor tested (or passed as too small), one
row per signal and column plus the signal's own row (`feature` "*"), and the retrains it
requested. It lives in the prediction log's database (SQLite or PostgreSQL); the latest
period per (model, version, signal) is the monitor's watermark.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pandas as pd
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    create_engine,
    func,
    inspect,
    select,
    text,
)

from loopline.online.predlog import insert_skipping_conflicts

log = logging.getLogger(__name__)

TABLE = "monitoring"
SUMMARY = "*"  # the `feature` of a signal's own row per period
RETRAIN = "retrain"  # the `signal` of the row for a requested retrain
PERIOD_COLUMNS = ("period_start", "period_end")
_UPGRADED: set[str] = set()  # databases `latest_signals` has upgraded in this process


def monitoring_table(metadata: MetaData) -> Table:
    """The table's layout (a period is counted once: its unique key)."""
    return Table(
        TABLE,
        metadata,
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
        Column("model_name", String(200), nullable=False),
        Column("model_version", String(50), nullable=False),
        Column("signal", String(50), nullable=False),
        Column("feature", String(200), nullable=False),  # "*": the signal's own row
        Column("period_start", DateTime(timezone=True), nullable=False),
        Column("period_end", DateTime(timezone=True), nullable=False),
        Column("rows", Integer, nullable=False),
        Column("statistic", Float),
        Column("threshold", Float),
        Column("exceeded", Boolean, nullable=False),
        Column("streak", Integer, nullable=False),  # consecutive tested periods exceeded
        Column("alarm", Boolean, nullable=False),
        Column("note", String(500)),
        Column("pass_id", String(50), nullable=False),
        Column("computed_at", DateTime(timezone=True), nullable=False),
        # A period is counted once, whatever passes race or repeat.
        UniqueConstraint("model_name", "model_version", "signal", "feature", "period_start"),
    )


def _renames(have: set[str]) -> list[tuple[str, str]]:
    """(old, new) for each period column an existing table holds under an earlier name:
    tables made before the rename called them `<earlier word>_start` and `_end`."""
    out = []
    for new in PERIOD_COLUMNS:
        suffix = new[new.index("_") :]
        if new in have:
            continue
        older = [c for c in have if c.endswith(suffix) and c not in PERIOD_COLUMNS]
        if len(older) == 1:
            out.append((older[0], new))
    return out


def upgrade_monitoring(engine) -> None:
    """Rename an existing table's period columns to today's names, in place (SQLite 3.25+
    and PostgreSQL keep its rows, unique key and indexes). A table already upgraded, or
    none yet: nothing. Another process upgrading at the same moment: its rename stands."""
    inspector = inspect(engine)
    if not inspector.has_table(TABLE):
        return
    renames = _renames({c["name"] for c in inspector.get_columns(TABLE)})
    if not renames:
        return
    try:
        with engine.begin() as connection:
            for old, new in renames:
                connection.execute(text(f"ALTER TABLE {TABLE} RENAME COLUMN {old} TO {new}"))
    except Exception:
        have = {c["name"] for c in inspect(engine).get_columns(TABLE)}
        if not set(PERIOD_COLUMNS) <= have:
            raise
    log.warning(
        "monitoring table: renamed %s (an earlier release's names)",
        ", ".join(f"{old} to {new}" for old, new in renames),
    )


def as_utc(value: Any) -> pd.Timestamp | None:
    if value is None or pd.isna(value):
        return None
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


class MonitoringStore:
    """The `monitoring` table in the prediction-log database: the monitor's rows and its
    watermark per (model, version, signal)."""

    def __init__(self, url: str, attempts: int = 3, backoff_s: float = 0.5):
        self.url = url
        self.attempts, self.backoff_s = attempts, backoff_s
        self.engine = create_engine(url, pool_pre_ping=True)
        metadata = MetaData()
        self.table = monitoring_table(metadata)
        self._retry(lambda: upgrade_monitoring(self.engine))
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
        """(the watermark: the last period tested or passed, the streak it left)."""
        t = self.table
        query = (
            select(t.c.period_start, t.c.streak)
            .where(
                t.c.model_name == model_name,
                t.c.model_version == str(version),
                t.c.signal == signal,
                t.c.feature == SUMMARY,
            )
            .order_by(t.c.period_start.desc())
            .limit(1)
        )

        def read():
            with self.engine.connect() as connection:
                return connection.execute(query).first()

        row = self._retry(read)
        return (as_utc(row.period_start), int(row.streak)) if row else (None, 0)

    def marks(self, model_name: str, signals: tuple[str, ...]) -> dict[str, pd.Timestamp]:
        """Per version of `model_name` whose every one of `signals` has a watermark, the
        earliest of them: no period of that version starting at or before it is tested
        again, so a pass reads only the predictions after it. A version with a signal never
        recorded (say, live quality before any truth) is left out: it is read whole."""
        t = self.table
        query = (
            select(t.c.model_version, t.c.signal, func.max(t.c.period_start))
            .where(
                t.c.model_name == model_name,
                t.c.feature == SUMMARY,
                t.c.signal.in_(list(signals)),
            )
            .group_by(t.c.model_version, t.c.signal)
        )

        def read():
            with self.engine.connect() as connection:
                return connection.execute(query).all()

        found: dict[str, dict[str, pd.Timestamp]] = {}
        for version, signal, start in self._retry(read):
            found.setdefault(str(version), {})[signal] = as_utc(start)
        return {
            version: min(starts.values())
            for version, starts in found.items()
            if set(starts) == set(signals)
        }

    def last_retrain(self, model_name: str) -> pd.Timestamp | None:
        """When the monitor last started a retrain of `model_name` (any version)."""
        t = self.table
        query = select(func.max(t.c.period_start)).where(
            t.c.model_name == model_name, t.c.signal == RETRAIN
        )

        def read():
            with self.engine.connect() as connection:
                return connection.execute(query).scalar()

        return as_utc(self._retry(read))

    def add(self, rows: list[dict[str, Any]]) -> int:
        """Insert rows; one already there (same period, signal, feature) is left as it was."""
        if not rows:
            return 0
        dialect = self.engine.dialect.name
        statement = insert_skipping_conflicts(self.table, dialect)
        if statement is None:  # another database: a repeated period fails on the unique key
            statement = self.table.insert()

        def write():
            with self.engine.begin() as connection:
                return connection.execute(statement, rows).rowcount

        return self._retry(write)

    def rows(self, model_name: str | None = None) -> pd.DataFrame:
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
    """Each (version, signal)'s latest tested period in the monitoring table: its ratio
    (statistic over threshold: 1 = at the threshold) and whether it alarmed (for the
    service's Prometheus gauges). No table yet: none."""
    engine = create_engine(url)
    try:
        if not inspect(engine).has_table(TABLE):
            return []
        if url not in _UPGRADED:  # once per process: a service asks at every alias poll
            upgrade_monitoring(engine)
            _UPGRADED.add(url)
        t = monitoring_table(MetaData())
        query = (
            select(t.c.model_version, t.c.signal, t.c.statistic, t.c.threshold, t.c.alarm)
            .where(t.c.model_name == model_name, t.c.feature == SUMMARY, t.c.statistic.isnot(None))
            .order_by(t.c.period_start.desc())
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
