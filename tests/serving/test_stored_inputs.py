"""The service stores each accepted input row once (`serve.store_inputs`), and nothing it
refused; the offline flow's `ingest.source: live` reads them back."""

from __future__ import annotations

import json

from tests.serving.conftest import SITE, raw_readings, service_app
from tests.serving.test_service_api import REQUIRED, post_stream, window


def stored(root):
    from loopline.online.live import read_live_inputs
    from loopline.tasks import get_task

    url = f"sqlite:///{root / '.loopline' / 'predictions.db'}"
    return read_live_inputs(url, "solar", list(get_task("solar").schema))


def test_accepted_readings_are_stored_once_and_refused_ones_never(served_project):
    from starlette.testclient import TestClient

    readings = raw_readings("2021-02-01", REQUIRED + 3)  # hours 0..50
    later = window(start="2021-02-01T01:00")  # hours 1..48: overlaps the first window
    bad = dict(readings[-1], ghi=-5.0)  # hour 50, breaks ghi_in_range: refused
    with TestClient(service_app()) as client:
        answered = client.post("/predict", json={"windows": [window(), later]})
        assert answered.status_code == 200, answered.text
        # The same readings again, one a line: two windows after the first (hours 48, 49)
        # and a refused reading; then a stream whose reading is out of order (an error).
        lines = [json.dumps(r) for r in readings[:-1]] + [json.dumps(bad)]
        out = [json.loads(x) for x in post_stream(client, lines).text.splitlines()]
        assert sum("forecast" in o for o in out) == 3 and "error" in out[-1]
        early = dict(readings[10], timestamp="2021-01-15T00:00:00+00:00")
        post_stream(client, [json.dumps(readings[30]), json.dumps(early)])
        status = client.get("/metadata").json()["live_inputs"]
        assert status["dropped"] == 0 and status["written"] + status["queued"] <= REQUIRED + 2
    rows = stored(served_project)  # the service flushed them at shutdown
    assert len(rows) == REQUIRED + 2 and not rows.duplicated(["site_id", "timestamp"]).any()
    assert set(rows["site_id"]) == {SITE}
    times = sorted(rows["timestamp"])
    assert times[0] == readings[0]["timestamp"] and times[-1] == readings[-2]["timestamp"]
    # Stored as sent: the measured power is there, so the rows are labelled training data.
    first = rows[rows["timestamp"] == readings[7]["timestamp"]].iloc[0]
    assert first["power_w"] == readings[7]["power_w"] and first["ghi"] == readings[7]["ghi"]


def test_nothing_is_stored_with_store_inputs_off(served_project, monkeypatch):
    from starlette.testclient import TestClient

    monkeypatch.setenv("LOOPLINE_SERVE_STORE_INPUTS", "false")
    with TestClient(service_app()) as client:
        assert client.post("/predict", json={"windows": [window()]}).status_code == 200
        assert client.get("/metadata").json()["live_inputs"] is None
    assert stored(served_project).empty


def test_ingest_live_takes_the_served_readings_after_the_snapshot(served_project):
    """The held-out readings a service answered become the next batch: those the
    snapshot holds already (its watermark) are skipped."""
    from starlette.testclient import TestClient

    from loopline.offline.ingest import batch_watermarks, fetch_new_rows
    from loopline.params import load_params
    from loopline.paths import ProjectPaths

    readings = raw_readings("2021-02-27", REQUIRED + 24)  # across the snapshot's end
    with TestClient(service_app()) as client:
        post_stream(client, [json.dumps(r) for r in readings])
    params = load_params(
        ProjectPaths.at(served_project).params_file, ["ingest.source=live", "ingest.end=null"]
    )
    task = params.plugin
    snapshot = task.load_builtin(params)
    snapshot = snapshot[snapshot["timestamp"] < "2021-03-01"]
    fresh, total = fetch_new_rows(params, task, served_project, batch_watermarks(snapshot, task))
    assert total == REQUIRED + 24 and len(fresh) == REQUIRED + 24 - 48
    assert min(fresh["timestamp"]) == "2021-03-01T00:30:00+00:00"  # the first after it
