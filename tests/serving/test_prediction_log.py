"""The prediction log: batched writes off the request path, flushed on close, any database."""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime

import pytest

from loopline.online.predlog import PredictionLog, PredictionRecord, read_predictions

POSTGRES = os.environ.get("LOOPLINE_TEST_POSTGRES_URL")


def record(n: int) -> PredictionRecord:
    return PredictionRecord(
        model_name="solar",
        model_version="3",
        api="stream",
        key="greensboro",
        origin=datetime(2021, 2, 1, n % 24, 30, tzinfo=UTC),
        inputs={"readings": 48},
        output=[float(n)] * 24,
        latency_ms=1.5,
    )


def test_records_are_written_in_batches_and_flushed_on_close(tmp_path):
    url = f"sqlite:///{tmp_path / 'predictions.db'}"
    log = PredictionLog(url, batch_size=50, flush_interval_s=60.0)
    for n in range(120):
        assert log.put(record(n))
    log.close()  # 120 = two full batches + 20 flushed at shutdown, long before 60 s
    rows = read_predictions(url)
    assert [r["output"][0] for r in rows] == [float(n) for n in range(120)]
    assert rows[0]["model_version"] == "3" and rows[0]["inputs"] == {"readings": 48}
    assert log.stats()["written"] == 120 and log.stats()["dropped"] == 0
    assert not log.put(record(0))  # closed: refused, not silently queued


def test_a_full_queue_counts_drops_instead_of_blocking(tmp_path):
    import threading

    class StalledDatabase(PredictionLog):
        """A log whose writer waits until released, as behind a slow database."""

        release = threading.Event()

        def _run(self) -> None:
            self.release.wait()
            super()._run()

    url = f"sqlite:///{tmp_path / 'p.db'}"
    log = StalledDatabase(url, queue_size=10)
    accepted = [log.put(record(n)) for n in range(25)]
    assert accepted == [True] * 10 + [False] * 15  # never blocks the request path
    assert log.stats()["dropped"] == 15
    StalledDatabase.release.set()
    log.close()
    assert len(read_predictions(url)) == 10


@pytest.mark.postgres
@pytest.mark.skipif(
    not POSTGRES,
    reason="LOOPLINE_TEST_POSTGRES_URL is not set: no PostgreSQL for the prediction log "
    "(.ci/run sets it)",
)
def test_the_log_writes_to_postgresql():
    import sqlalchemy

    name = f"loopline_predlog_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(POSTGRES, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    url = sqlalchemy.engine.make_url(POSTGRES).set(database=name).render_as_string(False)
    try:
        log = PredictionLog(url, batch_size=10)
        for n in range(25):
            log.put(record(n))
        log.close()
        rows = read_predictions(url)
        assert len(rows) == 25 and rows[-1]["output"][0] == 24.0
        assert rows[0]["origin"].tzinfo is not None
    finally:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_records_of_a_killed_process_are_replayed_from_the_spool(tmp_path):
    """A process queues 3,000 records and is killed (SIGKILL) before its writer wrote them:
    the next PredictionLog on the same spool writes every one, once."""
    import signal
    import subprocess
    import sys
    import textwrap

    url = f"sqlite:///{tmp_path / 'predictions.db'}"
    spool = tmp_path / "spool"
    child = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path[:0] = {sys.path!r}
        from tests.serving.test_prediction_log import record
        from loopline.online.predlog import PredictionLog
        log = PredictionLog({url!r}, flush_interval_s=3600, batch_size=10**6,
                            spool_dir={str(spool)!r}, spool_segment_bytes=200_000)
        for start in range(0, 3000, 30):
            log.put_many([record(n) for n in range(start, start + 30)])
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert len(list(spool.glob("*.ndjson"))) > 1  # several segments
    assert read_predictions(url) == []

    log = PredictionLog(url, spool_dir=spool)
    assert log.stats()["replayed"] == 3000
    log.put(record(3000))
    log.close()
    rows = read_predictions(url)
    assert [r["output"][0] for r in rows] == [float(n) for n in range(3001)]
    assert rows[5]["origin"] == record(5).origin.replace(tzinfo=None)  # SQLite drops the zone
    assert list(spool.glob("*.ndjson")) == []  # all written: nothing left to replay


def test_the_spool_is_emptied_as_records_are_written(tmp_path):
    url = f"sqlite:///{tmp_path / 'predictions.db'}"
    log = PredictionLog(url, batch_size=50, flush_interval_s=0.05, spool_dir=tmp_path / "spool")
    for n in range(200):
        log.put(record(n))
    deadline = time.monotonic() + 20
    while log.written < 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    segments = list((tmp_path / "spool").glob("*.ndjson"))
    assert len(segments) == 1 and segments[0].stat().st_size == 0
    log.close()
    assert len(read_predictions(url)) == 200
