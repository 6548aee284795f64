"""Each answer is in the prediction log once: a process killed while its writer had written
part of its spool leaves a spool that the next start replays, inserting what the database
lacks and skipping what it holds (issue 25, item 4)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter

import pytest
from sqlalchemy import create_engine, text

from loopline.online.predlog import PredictionLog, read_predictions, upgrade_predictions
from tests.serving.test_prediction_log import record

POSTGRES = os.environ.get("LOOPLINE_TEST_POSTGRES_URL")
RECORDS = 3000


def killed_mid_write(url: str, spool) -> None:
    """A process that queues RECORDS records while its writer commits batches, SIGKILLed
    once about a third are in the database (the rest, and the committed ones, still in
    its spool segment)."""
    child = textwrap.dedent(
        f"""
        import os, signal, sys, time
        sys.path[:0] = {sys.path!r}
        from tests.serving.test_prediction_log import record
        from loopline.online.predlog import PredictionLog
        log = PredictionLog({url!r}, flush_interval_s=0.01, batch_size=100,
                            spool_dir={str(spool)!r})
        for start in range(0, {RECORDS}, 30):
            log.put_many([record(n) for n in range(start, start + 30)])
        while log.written < {RECORDS} // 3:
            time.sleep(0.001)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_replayed_spool_writes_each_answer_once(tmp_path, database):
    if database == "postgresql":
        if not POSTGRES:
            pytest.skip(
                "LOOPLINE_TEST_POSTGRES_URL is not set: no PostgreSQL to replay into "
                "(.ci/run sets it)"
            )
        url = POSTGRES
        with create_engine(url).begin() as connection:
            connection.execute(text("DROP TABLE IF EXISTS predictions"))
    else:
        url = f"sqlite:///{tmp_path / 'predictions.db'}"
    spool = tmp_path / "spool"
    killed_mid_write(url, spool)
    before = len(read_predictions(url))
    assert 0 < before < RECORDS  # killed mid-way: some written, some only spooled

    log = PredictionLog(url, spool_dir=spool)
    log.close()
    rows = read_predictions(url)
    outputs = Counter(r["output"][0] for r in rows)
    assert sorted(outputs) == [float(n) for n in range(RECORDS)]  # 0 lost
    assert max(outputs.values()) == 1  # 0 duplicated
    assert len({r["answer_id"] for r in rows}) == RECORDS


def test_a_log_from_before_answer_ids_is_upgraded_and_replays_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'predictions.db'}"
    engine = create_engine(url)
    with engine.begin() as connection:  # the table as the previous version made it
        connection.execute(
            text(
                "CREATE TABLE predictions (id INTEGER PRIMARY KEY, logged_at DATETIME NOT NULL,"
                " model_name VARCHAR(200) NOT NULL, model_version VARCHAR(50) NOT NULL,"
                " api VARCHAR(50) NOT NULL, key VARCHAR(200), origin DATETIME, inputs JSON,"
                " output JSON NOT NULL, latency_ms FLOAT, role VARCHAR(20))"
            )
        )
        connection.execute(
            text(
                "INSERT INTO predictions (logged_at, model_name, model_version, api, output)"
                " VALUES ('2021-01-01 00:00:00', 'solar', '1', 'predict', '[1.0]')"
            )
        )
    upgrade_predictions(engine)
    upgrade_predictions(engine)  # twice: a no-op the second time
    engine.dispose()
    log = PredictionLog(url)
    same = record(1)
    log.put_many([same, same, record(2)])  # one answer queued twice (as a replay would)
    log.close()
    rows = read_predictions(url)
    assert [r["answer_id"] is None for r in rows] == [True, False, False]
