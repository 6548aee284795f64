"""The service in-process through its ASGI app: APIs, errors, readiness, logging, metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.serving.conftest import SITE, raw_readings, service_app

REQUIRED = 48  # window 24 + lag 24


def window(site=SITE, start="2021-02-01", hours=REQUIRED):
    rows = raw_readings(start, hours, site)
    for row in rows:
        row.pop("site_id")
    return {"site_id": site, "readings": rows}


@pytest.fixture
def client(served_project):
    from starlette.testclient import TestClient

    with TestClient(service_app()) as test_client:
        yield test_client


def test_ready_and_metadata_describe_the_champion(client):
    assert client.get("/readyz").status_code == 200
    meta = client.get("/metadata").json()
    assert meta["ready"] and meta["model"]["version"] == "2"
    assert meta["model"]["alias"] == "champion"
    assert meta["model"]["data_version"] == "fixture-2"
    assert meta["model"]["required_readings"] == REQUIRED
    assert meta["model"]["providers"][-1] == "CPUExecutionProvider"


def test_predict_forecasts_each_window(client):
    body = {"windows": [window(), window(start="2021-02-03")]}
    response = client.post("/predict", json=body)
    assert response.status_code == 200, response.text
    out = response.json()
    assert len(out) == 2 and out[0]["model_version"] == "2"
    assert len(out[0]["forecast"]) == 24 and len(out[0]["timestamps"]) == 24
    assert out[0]["origin"].startswith("2021-02-02T23:30")


def test_stream_answers_per_line(client):
    lines = raw_readings("2021-02-01", REQUIRED + 3)
    payload = [json.dumps(r) for r in lines]
    payload.insert(50, json.dumps(lines[49]))  # a duplicate
    payload.insert(10, "{not json")
    response = client.post(
        "/stream",
        content="\n".join(payload) + "\n",
        headers={"content-type": "application/x-ndjson"},
    )
    assert response.status_code == 200
    answers = [json.loads(line) for line in response.text.splitlines()]
    forecasts = [a for a in answers if "forecast" in a]
    errors = [a for a in answers if "error" in a]
    assert len(forecasts) == 4, answers
    assert [f["origin"] for f in forecasts] == sorted(f["origin"] for f in forecasts)
    assert len(errors) == 2
    assert any("duplicate" in e["error"] for e in errors)


def lines_of(response):
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def post_stream(client, lines):
    return client.post(
        "/stream",
        content="\n".join(lines) + "\n",
        headers={"content-type": "application/x-ndjson"},
    )


# ------------------------------------------------------------------ bad input: 4xx naming it


def test_malformed_json_is_400(client):
    response = client.post(
        "/predict", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400


def test_missing_field_is_400_naming_it(client):
    body = {"windows": [window()]}
    del body["windows"][0]["readings"][3]["ghi"]
    response = client.post("/predict", json=body)
    assert response.status_code == 400
    assert any(d["loc"][-1] == "ghi" for d in response.json()["detail"]), response.text


def test_wrong_type_is_400_naming_it(client):
    body = {"windows": [window()]}
    body["windows"][0]["readings"][0]["power_w"] = "lots"
    response = client.post("/predict", json=body)
    assert response.status_code == 400 and "power_w" in response.text


def test_short_window_is_400_naming_the_length(client):
    response = client.post("/predict", json={"windows": [window(hours=REQUIRED - 1)]})
    assert response.status_code == 400
    assert "readings" in response.text and f"needs {REQUIRED}" in response.text


def test_gap_in_window_is_400(client):
    body = {"windows": [window(hours=REQUIRED + 1)]}
    del body["windows"][0]["readings"][20]
    response = client.post("/predict", json=body)
    assert response.status_code == 400 and "consecutive" in response.text


def test_a_nan_is_400_naming_it_as_a_wrong_length_is(client):
    body = {"windows": [window()]}
    body["windows"][0]["readings"][7]["ghi"] = float("nan")  # json.dumps writes NaN
    response = client.post(
        "/predict", content=json.dumps(body), headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    (problem,) = response.json()["detail"]
    assert problem["loc"] == ["windows", 0, "readings", 7, "ghi"], problem
    assert problem["msg"] == "Input should be a finite number"


def test_an_empty_batch_is_answered_with_no_items(client):
    response = client.post("/predict", json={"windows": []})
    assert response.status_code == 200 and response.json() == [], response.text


def test_unknown_site_is_400(client):
    body = {"windows": [window()]}
    body["windows"][0]["site_id"] = "atlantis"
    response = client.post("/predict", json=body)
    assert response.status_code == 400 and "atlantis" in response.text


def test_oversized_body_is_413(client, served_project):
    response = client.post(
        "/predict",
        content=b"x" * (8 * 1024 * 1024 + 1),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert "max_body_bytes" in response.json()["error"]


def test_stream_errors_name_the_problem_and_the_stream_goes_on(client):
    rows = raw_readings("2021-02-01", REQUIRED + 2)
    bad_type = dict(rows[5], ghi="bright")
    missing = {k: v for k, v in rows[6].items() if k != "dni"}
    lines = [json.dumps(r) for r in rows[:5]]
    lines += [json.dumps(bad_type), json.dumps(missing), json.dumps(rows[3])]  # + out of order
    lines += [json.dumps(r) for r in rows[5:]]
    lines.append(json.dumps(rows[-1]))  # duplicate
    lines.append(json.dumps(dict(rows[0], site_id="atlantis")))
    answers = lines_of(post_stream(client, lines))
    errors = {a["line"]: a["error"] for a in answers if "error" in a}
    assert "ghi" in errors[6] and "dni" in errors[7]
    assert "out of order" in errors[8] and "duplicate" in errors[len(lines) - 1]
    assert "atlantis" in errors[len(lines)]
    forecasts = [a for a in answers if "forecast" in a]
    assert len(forecasts) == 3  # the bad lines did not break the site's window


def test_stream_gap_restarts_the_window_with_a_notice(client):
    rows = raw_readings("2021-02-01", REQUIRED + 10)
    answers = lines_of(post_stream(client, [json.dumps(r) for r in rows[:30] + rows[31:]]))
    assert any("gap" in a.get("notice", "") for a in answers)
    assert not [a for a in answers if "forecast" in a]  # 29 after the gap: not complete yet


def test_stream_keeps_sites_apart_and_in_order(client):
    a = raw_readings("2021-02-01", REQUIRED + 2, "greensboro")
    b = raw_readings("2021-02-10", REQUIRED + 1, "greensboro")
    for row in b:
        row["site_id"] = "greensboro"
    # Two sites would need two locations; the tiny model knows one, so interleave two
    # streams of the same site in two requests and check each is in order on its own.
    for rows in (a, b):
        answers = lines_of(post_stream(client, [json.dumps(r) for r in rows]))
        origins = [x["origin"] for x in answers if "forecast" in x]
        assert origins == sorted(origins) and len(origins) == len(rows) - REQUIRED + 1


# ------------------------------------------------------------------ readiness and model swaps


def test_without_champion_the_service_is_up_but_not_ready(tmp_path, monkeypatch):
    from starlette.testclient import TestClient

    from tests.conftest import TINY, write_project

    root = write_project(tmp_path / "empty", TINY)
    monkeypatch.setenv("LOOPLINE_PROJECT", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with TestClient(service_app()) as empty:
        assert empty.get("/livez").status_code == 200
        ready = empty.get("/readyz")
        assert ready.status_code == 503 and "has alias 'champion'" in ready.text
        assert empty.post("/predict", json={"windows": [window()]}).status_code == 503
        assert post_stream(empty, ["{}"]).status_code == 503


def test_hot_swap_follows_the_alias_and_refuses_a_corrupt_version(client, served_project):
    from loopline import registry
    from loopline.paths import ProjectPaths
    from tests.serving.conftest import publish_tiny_model

    uri = ProjectPaths.at(served_project).tracking_uri()
    assert client.get("/metadata").json()["model"]["version"] == "2"
    registry.move_champion(uri, "solar", "1", reason="test")
    wait_for_version(client, "1")

    # A corrupt model file in a new champion: the swap is refused, v1 keeps serving.
    version = publish_tiny_model(served_project, seed=3, promote=False)
    corrupt_model_file(uri, "solar", version)
    registry.move_champion(uri, "solar", version, reason="test corrupt")
    meta = wait_for(client, lambda m: m["last_swap_error"] is not None)
    assert meta["model"]["version"] == "1"
    assert meta["last_swap_error"]["version"] == version
    assert client.post("/predict", json={"windows": [window()]}).json()[0]["model_version"] == "1"
    assert 'loopline_model_swaps_total{outcome="failed"}' in process_metrics()


def test_registry_unreachable_keeps_serving_and_reports_it(client, served_project):
    from loopline.paths import ProjectPaths

    db = ProjectPaths.at(served_project).mlflow_db
    saved = db.read_bytes()
    db.write_bytes(b"this is not a database" * 4096)  # every poll now fails
    try:
        meta = wait_for(client, lambda m: m["last_poll_error"] is not None)
        assert meta["model"]["version"] == "2"
        response = client.post("/predict", json={"windows": [window()]})
        assert response.status_code == 200
    finally:
        db.write_bytes(saved)
    wait_for(client, lambda m: m["last_poll_error"] is None)


def corrupt_model_file(uri, name, version):
    """Overwrite a registered version's model.onnx in the (local) artifact store."""
    from urllib.parse import unquote, urlparse

    from loopline import registry

    mlflow_client = registry.client(uri)
    logged = mlflow_client.get_model_version(name, version).source.removeprefix("models:/")
    folder = mlflow_client.get_logged_model(logged).artifact_location
    model = Path(unquote(urlparse(folder).path)) / "model.onnx"
    assert model.is_file()
    model.write_bytes(b"not an onnx model")


def wait_for(client, condition, timeout_s=30.0):
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        meta = client.get("/metadata").json()
        if condition(meta):
            return meta
        assert time.monotonic() < deadline, meta
        time.sleep(0.2)


def wait_for_version(client, version):
    return wait_for(client, lambda m: m["model"] and m["model"]["version"] == version)


# ------------------------------------------------------------------ logging, metrics, OpenAPI


def test_every_prediction_is_logged_and_flushed_on_shutdown(served_project):
    from starlette.testclient import TestClient

    from loopline.online.predlog import read_predictions

    with TestClient(service_app()) as one:
        one.post("/predict", json={"windows": [window(), window(start="2021-02-05")]})
        post_stream(one, [json.dumps(r) for r in raw_readings("2021-02-01", REQUIRED + 1)])
    rows = read_predictions(f"sqlite:///{served_project / '.loopline' / 'predictions.db'}")
    assert [r["api"] for r in rows].count("predict") == 2
    assert [r["api"] for r in rows].count("stream") == 2
    assert {r["model_version"] for r in rows} == {"2"} and {r["key"] for r in rows} == {SITE}
    assert len(rows[0]["output"]) == 24 and rows[0]["inputs"]["readings"] == REQUIRED


def process_metrics() -> str:
    """This process's Prometheus metrics. (BentoML's `/metrics` route reads the multiprocess
    files its server sets up; the real-server test checks that route.)"""
    import prometheus_client

    return prometheus_client.generate_latest().decode()


def test_metrics_and_openapi(client):
    client.post("/predict", json={"windows": [window()]})
    metrics = process_metrics()
    assert "loopline_model_version" in metrics and "loopline_predictions_total" in metrics
    assert "loopline_batch_size" in metrics
    spec = client.get("/docs.json").json()
    assert {"/predict", "/stream", "/metadata"} <= set(spec["paths"])
    assert "application/x-ndjson" in spec["paths"]["/stream"]["post"]["requestBody"]["content"]


def columnar(item):
    """A per-reading window in the columnar form (one list per field)."""
    fields = item["readings"][0].keys()
    return {
        "site_id": item["site_id"],
        "columns": {f: [r[f] for r in item["readings"]] for f in fields},
    }


def test_the_columnar_form_answers_as_the_per_reading_one(client):
    readings = [window(), window(start="2021-02-03")]
    body = {"windows": [readings[0], columnar(readings[1]), columnar(readings[0])]}
    response = client.post("/predict", json=body)
    assert response.status_code == 200, response.text
    out = response.json()
    assert out[0] == out[2] and out[1]["origin"].startswith("2021-02-04T23:30")
    short = columnar(window(hours=REQUIRED - 1))
    response = client.post("/predict", json={"windows": [short]})
    assert response.status_code == 400 and "columns: needs 48" in response.text
    ragged = columnar(window())
    ragged["columns"]["ghi"].pop()
    response = client.post("/predict", json={"windows": [ragged]})
    assert response.status_code == 400 and "one value per reading" in response.text
    spec = client.get("/docs.json").json()
    schemas = spec["components"]["schemas"]
    assert {"ForecastWindow", "ForecastColumns", "ReadingColumns"} <= set(schemas)
    assert schemas["ForecastWindow"]["required"] == ["site_id", "readings"]


def test_monitor_gauges_follow_the_monitoring_table(tmp_path):
    """At each alias poll the service reads the monitoring table's latest windows into
    Prometheus gauges (one per signal and version)."""
    from datetime import UTC, datetime

    from loopline.watch.monitor import MonitoringStore
    from serving.metrics import service_metrics, show_monitoring

    url = f"sqlite:///{tmp_path / 'predictions.db'}"
    now = datetime(2026, 1, 2, tzinfo=UTC)
    row = {
        "model_name": "solar", "model_version": "2", "signal": "live_quality", "feature": "*",
        "period_start": now, "period_end": now, "rows": 48, "statistic": 1.5, "threshold": 1.0,
        "exceeded": True, "streak": 2, "alarm": True, "note": None, "pass_id": "p",
        "computed_at": now,
    }  # fmt: skip
    MonitoringStore(url).add([row])
    show_monitoring(service_metrics(), url, "solar")
    metrics = process_metrics()
    assert 'loopline_monitor_ratio{signal="live_quality",version="2"} 1.5' in metrics
    assert 'loopline_monitor_alarm{signal="live_quality",version="2"} 1.0' in metrics
