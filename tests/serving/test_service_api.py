"""The service in-process through its ASGI app: APIs, errors, readiness, logging, metrics."""

from __future__ import annotations

import json

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
