"""The operator page's actions through its HTTP API: the token, other sites, stale pages,
the CLI's refusals; and reads on a project whose log is empty."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from loopline import registry
from loopline.app.ui.app import Project, create_app
from loopline.params import load_params
from loopline.paths import ProjectPaths

TOKEN = "a-token-of-sixteen-or-more"
MOVES = "/api/models/solar/moves"


@pytest.fixture
def client(served_project):
    paths = ProjectPaths.at(served_project)
    project = Project(load_params(paths.params_file), paths, TOKEN, services=[])
    with TestClient(create_app(project), base_url="http://127.0.0.1:8080") as test_client:
        yield test_client, paths.tracking_uri()


def rollback(**extra):
    return {"action": "rollback", "reason": "v2 drifts", "operator": "alice", **extra}


BEARER = {"authorization": f"Bearer {TOKEN}"}


def test_a_move_needs_the_token_compared_whole(client):
    test_client, uri = client
    for headers in ({}, {"authorization": "Bearer a-token"}, {"authorization": TOKEN}):
        refused = test_client.post(MOVES, json=rollback(), headers=headers)
        assert refused.status_code == 401, headers
        assert "operator token" in refused.json()["detail"]
    assert str(registry.champion_version(uri, "solar").version) == "2"


def test_other_sites_and_other_bodies_are_refused(client):
    test_client, uri = client
    for headers in ({"origin": "http://evil.example"}, {"sec-fetch-site": "cross-site"}):
        refused = test_client.post(MOVES, json=rollback(), headers={**BEARER, **headers})
        assert refused.status_code == 403 and "another site" in refused.json()["detail"]
    form = test_client.post(
        MOVES,
        content='{"action": "rollback", "reason": "v2 drifts", "operator": "alice"}',
        headers={**BEARER, "content-type": "text/plain"},
    )
    assert form.status_code in (415, 422)
    short = test_client.post(MOVES, json=rollback(reason=""), headers=BEARER)
    assert short.status_code == 422 and "reason" in short.text
    assert str(registry.champion_version(uri, "solar").version) == "2"


def test_the_clis_refusals_and_a_stale_page(client):
    test_client, _ = client
    typo = test_client.post(
        MOVES, json={**rollback(), "action": "promote", "version": "9"}, headers=BEARER
    )
    assert typo.status_code == 400 and "no version '9' (versions: 1, 2)" in typo.json()["detail"]
    stale = test_client.post(MOVES, json=rollback(expect="1"), headers=BEARER)
    assert stale.status_code == 409 and "is v2 now, not v1" in stale.json()["detail"]
    moved = test_client.post(MOVES, json=rollback(expect="2"), headers=BEARER)
    assert moved.status_code == 200, moved.text
    assert moved.json()["to"] == "1" and moved.json()["via"] == "loopline ui"
    again = test_client.post(MOVES, json=rollback(expect="1"), headers=BEARER)
    assert again.status_code == 400 and "no earlier champion" in again.json()["detail"]
    history = test_client.get("/api/models/solar/history").json()["moves"]
    assert history[0]["who"] == "alice" and history[0]["why"] == "v2 drifts"


def test_reads_say_what_is_missing(client):
    test_client, _ = client
    assert "no prediction of 'solar'" in test_client.get("/api/models/solar/live").json()["missing"]
    assert test_client.get("/api/models/solar/predictions").json() == {"rows": []}
    assert "monitor has not run" in test_client.get("/api/models/solar/health").json()["missing"]
    assert "no registered model 'wind'" in test_client.get("/api/models/wind/now").json()["missing"]
    now = test_client.get("/api/models/solar/now").json()
    assert now["champion"]["version"] == "2" and now["champion"]["move"]["why"] == "fixture seed 2"
    assert "no service listed" in now["services_missing"]
    diff = test_client.get("/api/models/solar/diff?a=2&b=1").json()
    data = {row["field"]: row for row in diff["rows"] if row["group"] == "lineage"}
    assert data["data_version"]["changed"] and data["data_version"]["b"] == "fixture-1"
    assert "no version '7'" in test_client.get("/api/models/solar/diff?a=2&b=7").json()["missing"]
    page = test_client.get("/models/<img src=x onerror=alert(1)>")
    assert page.status_code == 200 and "<img src=x" not in page.text
    assert "&lt;img src=x onerror=alert(1)&gt;" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]


def test_a_registry_that_is_down_is_named_and_the_page_still_loads(served_project, monkeypatch):
    from loopline.health import free_port
    from loopline.online.models import use_service_deadlines

    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    for key, value in use_service_deadlines({}).items():
        monkeypatch.setenv(key, value)
    paths = ProjectPaths.at(served_project)
    project = Project(load_params(paths.params_file), paths, TOKEN, services=[])
    with TestClient(create_app(project), base_url="http://localhost:8080") as test_client:
        for panel in ("now", "history"):
            said = test_client.get(f"/api/models/solar/{panel}").json()["missing"]
            assert f"the registry at {dead} did not answer" in said, said
        assert test_client.get("/models/solar").status_code == 200
        moved = test_client.post(MOVES, json=rollback(), headers=BEARER)
        assert moved.status_code == 503, moved.text
        assert f"the registry at {dead} did not answer; nothing moved" in moved.json()["detail"]
