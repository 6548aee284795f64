"""Live inputs: rows stored once whatever sends them again, and read back by
`ingest.source: live` with the watermark and validation of any source."""

from __future__ import annotations

import os
import uuid

import pandas as pd
import pytest

from loopline.offline.ingest import batch_watermarks, fetch_new_rows, read_source
from loopline.online.live import LiveInputLog, LiveRow, live_rows, read_live_inputs
from loopline.params import parse_params
from loopline.tasks import get_task

SOLAR = get_task("solar")
COLUMNS = list(SOLAR.schema)
POSTGRES = os.environ.get("LOOPLINE_TEST_POSTGRES_URL")


def readings(hours: int, start: str = "2021-03-01", site: str = "greensboro") -> list[dict]:
    """Raw solar rows as the forecast adapter's `input_rows` gives them."""
    times = pd.date_range(start, periods=hours, freq="1h", tz="UTC")
    return [
        {
            "site_id": site,
            "timestamp": t.isoformat(),
            "ghi": 100.0 + n,
            "dni": 50.0,
            "dhi": 20.0,
            "temp_air": 5.0,
            "wind_speed": 1.0,
            "power_w": 1000.0 + n,
        }
        for n, t in enumerate(times)
    ]


def store(url: str, rows: list[dict], version: str = "1", **options) -> LiveInputLog:
    log = LiveInputLog(url, **options)
    log.put_many(live_rows(SOLAR, rows, "solar", version, "stream"))
    log.close()
    return log


def test_a_row_sent_again_is_stored_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'predictions.db'}"
    first = store(url, readings(30))
    assert first.stats()["written"] == 30
    # Another process (a restarted service, a retrying client) sends overlapping rows,
    # one batch holding the same row twice: each is stored once, the first version kept.
    rows = readings(40)
    store(url, rows + rows[35:], version="2", batch_size=7)
    frame = read_live_inputs(url, "solar", COLUMNS)
    assert len(frame) == 40 and not frame.duplicated(["site_id", "timestamp"]).any()
    assert list(frame.columns) == COLUMNS
    assert frame["power_w"].tolist() == [1000.0 + n for n in range(40)]
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as connection:
        versions = dict(
            connection.execute(
                text("SELECT model_version, count(*) FROM live_inputs GROUP BY model_version")
            ).all()
        )
        key = connection.execute(text("SELECT row_key, event_time FROM live_inputs")).first()
    engine.dispose()
    assert versions == {"1": 30, "2": 10}
    assert key[0] == "greensboro|2021-03-01T00:00:00+00:00"


def test_rows_queued_recently_are_not_queued_again(tmp_path):
    log = LiveInputLog(f"sqlite:///{tmp_path / 'p.db'}", flush_interval_s=60)
    rows = live_rows(SOLAR, readings(48), "solar", "1", "predict")
    assert log.put_many(rows) == 48
    assert log.put_many(rows[1:] + live_rows(SOLAR, readings(49)[-1:], "solar", "1", "x")) == 1
    assert log.stats()["skipped_as_recent"] == 47
    log.close()
    assert log.stats()["written"] == 49


def test_spooled_rows_round_trip():
    (row,) = live_rows(SOLAR, readings(1), "solar", "3", "stream")
    back = LiveRow.from_spool(row.spooled())
    assert back == row and back.event_time.tzinfo is not None


def test_ingest_live_reads_the_stored_rows_after_the_watermark(tmp_path):
    url = f"sqlite:///{tmp_path / 'state' / 'predictions.db'}"
    (tmp_path / "state").mkdir()
    rows = readings(24)
    rows[5]["ghi"] = -50.0  # out of range: validation quarantines it, as from any source
    store(url, rows[12:])  # a later window first: read back in time order all the same
    store(url, rows[:12])
    store(url, readings(3, site="sand_point"))
    params = parse_params(
        {
            "ingest": {"source": "live"},
            "serve": {"prediction_log": url},
            "solar": {"sites": ["greensboro", "sand_point"]},
        }
    )
    frame = read_source(params, params.plugin, tmp_path)
    assert len(frame) == 27 and set(frame["site_id"]) == {"greensboro", "sand_point"}
    seen = batch_watermarks(frame[frame["timestamp"] < "2021-03-01T10"], SOLAR)
    fresh, total = fetch_new_rows(params, params.plugin, tmp_path, seen)
    assert total == 27 and len(fresh) == 14  # greensboro's hours 10..23
    from loopline.offline.validate import validate_rows

    report = validate_rows(frame, SOLAR.schema_for(params), SOLAR.rules(params), "solar")
    assert len(report.bad) == 1 and len(report.good) == 26


def test_ingest_live_without_a_stored_row_is_empty(tmp_path):
    params = parse_params(
        {"ingest": {"source": "live"}, "serve": {"prediction_log": f"sqlite:///{tmp_path}/x.db"}}
    )
    frame = read_source(params, params.plugin, tmp_path)
    assert frame.empty and list(frame.columns) == COLUMNS


def test_text_rows_come_back_without_a_label(tmp_path):
    from loopline.online.live import content_id

    text = get_task("text")
    url = f"sqlite:///{tmp_path / 'p.db'}"
    log = LiveInputLog(url)
    rows = [{"id": "a", "text": "good"}, {"id": "a", "text": "good"}, {"id": "b", "text": "bad"}]
    log.put_many(live_rows(text, rows, "text", "1", "predict"))
    log.close()
    frame = read_live_inputs(url, "text", list(text.schema))
    assert frame["id"].tolist() == ["a", "b"] and frame["label"].isna().all()
    assert content_id({"x": 1.0, "y": "a"}) == content_id({"y": "a", "x": 1.0})


@pytest.mark.postgres
@pytest.mark.skipif(
    not POSTGRES,
    reason="LOOPLINE_TEST_POSTGRES_URL is not set: no PostgreSQL for the live inputs "
    "(.ci/run sets it)",
)
def test_rows_are_stored_once_in_postgresql():
    import sqlalchemy

    name = f"loopline_live_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(POSTGRES, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    url = sqlalchemy.engine.make_url(POSTGRES).set(database=name).render_as_string(False)
    try:
        store(url, readings(30), batch_size=8)
        rows = readings(40)
        store(url, rows + rows[35:], version="2", batch_size=8)
        frame = read_live_inputs(url, "solar", COLUMNS)
        assert len(frame) == 40 and not frame.duplicated(["site_id", "timestamp"]).any()
    finally:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_rows_of_a_killed_process_are_replayed_from_the_spool_once(tmp_path):
    """A service queues rows and is killed (SIGKILL) before its writer wrote them: the next
    start writes each from the spool; a client sending them again adds nothing."""
    import signal
    import subprocess
    import sys
    import textwrap

    url = f"sqlite:///{tmp_path / 'predictions.db'}"
    spool = tmp_path / "spool-live"
    child = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path[:0] = {sys.path!r}
        from tests.unit.test_live_inputs import SOLAR, readings
        from loopline.online.live import LiveInputLog, live_rows
        log = LiveInputLog({url!r}, flush_interval_s=3600, batch_size=10**6,
                           spool_dir={str(spool)!r})
        log.put_many(live_rows(SOLAR, readings(300), "solar", "1", "stream"))
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert read_live_inputs(url, "solar", COLUMNS).empty

    log = LiveInputLog(url, spool_dir=spool)
    assert log.stats()["replayed"] == 300
    log.close()
    store(url, readings(310))
    assert len(read_live_inputs(url, "solar", COLUMNS)) == 310
    assert list(spool.glob("*.ndjson")) == []
