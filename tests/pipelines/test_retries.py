"""Retries: I/O stages retry what a retry can fix, with backoff; the rest fails at once."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time

import pytest

from loopline.errors import SourceError, is_transient


def raised_from(cause: BaseException) -> SourceError:
    try:
        try:
            raise cause
        except BaseException as error:
            raise SourceError("cannot read the source") from error
    except SourceError as wrapped:
        return wrapped


def test_transient_means_io_that_may_come_back():
    assert is_transient(ConnectionRefusedError("db down"))
    assert is_transient(raised_from(TimeoutError("slow")))
    assert is_transient(raised_from(type("OperationalError", (Exception,), {})("locked")))
    assert not is_transient(raised_from(FileNotFoundError("gone")))
    assert not is_transient(SourceError("ingest.source 'x.csv': no such file"))
    assert not is_transient(ValueError("bad value"))


def ingest_once(project, overrides):
    from prefect import flow

    from loopline.params import load_params
    from loopline.paths import ProjectPaths
    from pipelines.offline import ingest

    paths = ProjectPaths.at(project)
    params = load_params(paths.params_file, overrides)

    @flow
    def only_ingest():
        # A key of its own per call: these tests are about retries, not the cache.
        return ingest(params, paths, stage_key=f"ingest-test-{time.time_ns()}")

    return only_ingest


class RetryLines(logging.Handler):
    """Prefect's own line for each retry it schedules ("... - Retry 1/3 will start ..."),
    read from its task-run logger (Prefect's logging set-up drops pytest's root handler)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self.first = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if " will start " in record.getMessage():
            self.lines.append(record.getMessage())
            self.first.set()


@pytest.fixture
def retries():
    import prefect.main  # noqa: F401  its import sets logging up again, levels included

    handler = RetryLines()
    logger = logging.getLogger("prefect.task_runs")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_a_database_that_is_briefly_away_is_retried(project, prefect_harness, tmp_path, retries):
    from loopline.params import parse_params
    from loopline.tasks import get_task
    from tests.conftest import TINY

    rows = get_task("solar").load_builtin(parse_params(TINY)).head(48)
    db = tmp_path / "plant.db"
    db.mkdir()  # a folder where the database should be: "unable to open database file"

    def database_comes_back():
        # Back only once the first attempt has failed and its retry is scheduled: a sleep
        # here would let a slow flow start after the database is back and never retry.
        retries.first.wait(120)
        db.rmdir()
        with sqlite3.connect(db) as connection:
            rows.assign(timestamp=rows["timestamp"].astype(str)).to_sql("readings", connection)

    only_ingest = ingest_once(
        project, [f"ingest.source=sqlite:///{db}", "ingest.query=select * from readings"]
    )
    threading.Thread(target=database_comes_back).start()
    frame, source_count = only_ingest()
    assert source_count == 48 and len(frame) == 48
    assert len(retries.lines) == 1 and "Retry 1/3 will start 2" in retries.lines[0]


def test_a_missing_file_fails_at_once_naming_it(project, prefect_harness, retries):
    only_ingest = ingest_once(project, ["ingest.source=missing.csv"])
    with pytest.raises(SourceError, match=r"missing\.csv"):
        only_ingest()
    # Counted from Prefect's log, not the clock: a busy machine takes seconds either way.
    assert retries.lines == []
