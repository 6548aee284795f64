"""Shadow and canary challengers in the service: what is answered, what is logged with
which role, a challenger that fails to load, a restart mid-canary, and a decision taken
once."""

from __future__ import annotations

import time

import pytest

from loopline import registry
from loopline.paths import ProjectPaths
from loopline.watch import deploy
from tests.serving.conftest import service_app
from tests.serving.test_safe_start import model_file
from tests.serving.test_service_api import wait_for, window


def logged(root, timeout_s: float = 10.0, want=lambda rows: True):
    """The prediction log's rows once `want` holds of them (the writer flushes each second)."""
    from loopline.online.predlog import read_predictions
    from loopline.params import load_params

    paths = ProjectPaths.at(root)
    url = paths.prediction_log_url(load_params(paths.params_file))
    deadline = time.monotonic() + timeout_s
    while True:
        rows = read_predictions(url)
        if want(rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def roles(rows):
    return sorted({(r["model_version"], r["role"]) for r in rows})


def test_a_shadow_sees_every_request_and_answers_none(served_project):
    from starlette.testclient import TestClient

    uri = ProjectPaths.at(served_project).tracking_uri()
    deploy.start(uri, "solar", "1", "shadow", reason="try v1 again")
    with TestClient(service_app()) as client:
        meta = wait_for(client, lambda m: m["deployment"] is not None)
        assert meta["deployment"]["mode"] == "shadow" and meta["deployment"]["version"] == "1"
        for start in ("2021-02-01", "2021-02-02", "2021-02-03"):
            answer = client.post("/predict", json={"windows": [window(start=start)]})
            assert answer.status_code == 200
            assert answer.json()[0]["model_version"] == "2"
    rows = logged(served_project, want=lambda r: len(r) >= 6)
    assert roles(rows) == [("1", "shadow"), ("2", "champion")]
    pairs = {(r["key"], r["origin"], r["role"]) for r in rows}
    assert len(pairs) == 6  # each of the 3 windows answered by both


def test_a_canary_answers_its_keys_and_the_champion_controls_them(served_project):
    from starlette.testclient import TestClient

    uri = ProjectPaths.at(served_project).tracking_uri()
    deploy.start(uri, "solar", "1", "canary", 100.0, "all keys of one site")
    with TestClient(service_app()) as client:
        wait_for(client, lambda m: m["deployment"] is not None)
        answer = client.post("/predict", json={"windows": [window()]})
        assert answer.status_code == 200 and answer.json()[0]["model_version"] == "1"
    rows = logged(served_project, want=lambda r: len(r) >= 2)
    assert roles(rows) == [("1", "canary"), ("2", "control")]


def test_a_challenger_that_fails_to_load_is_refused_and_the_champion_answers(served_project):
    uri = ProjectPaths.at(served_project).tracking_uri()
    broken = model_file(uri, "1")  # the artifact store is the session's template's: restore it
    good = broken.read_bytes()
    broken.write_bytes(b"not an onnx model")
    try:
        refused_challenger(served_project, uri)
    finally:
        broken.write_bytes(good)


def refused_challenger(root, uri: str) -> None:
    from starlette.testclient import TestClient

    from loopline.params import load_params

    made = deploy.start(uri, "solar", "1", "canary", 100.0, "broken")
    with TestClient(service_app()) as client:
        meta = wait_for(client, lambda m: m["challenger_error"] is not None)
        assert meta["deployment"] is None and meta["model"]["version"] == "2"
        answer = client.post("/predict", json={"windows": [window()]})
        assert answer.status_code == 200 and answer.json()[0]["model_version"] == "2"
    mark = registry.refusal(registry.client(uri).get_model_version("solar", "1"))
    assert "as a canary challenger" in mark["why"]
    paths = ProjectPaths.at(root)
    decided = deploy.decide(load_params(paths.params_file), paths)
    assert decided[1].decision == "rollback" and "refused" in decided[1].reason
    assert decided[2]["outcome"] == "rolled_back" and deploy.current(uri, "solar") is None
    assert deploy.end(uri, "solar", made.id, "promoted", "again", {}) is None  # decided once
    assert str(registry.champion_version(uri, "solar").version) == "2"


def test_a_restarted_service_resumes_the_canary_from_the_registry(served_project):
    from starlette.testclient import TestClient

    uri = ProjectPaths.at(served_project).tracking_uri()
    made = deploy.start(uri, "solar", "1", "canary", 100.0, "survives restarts")
    for _ in range(2):  # a service, then its replacement
        with TestClient(service_app()) as client:
            meta = wait_for(client, lambda m: m["deployment"] is not None)
            assert meta["deployment"]["id"] == made.id


def test_deploying_the_champion_or_a_refused_version_is_refused(served_project):
    from loopline.errors import RegistryError

    uri = ProjectPaths.at(served_project).tracking_uri()
    with pytest.raises(RegistryError, match="v2 is the champion already"):
        deploy.start(uri, "solar", "2", "shadow")
    with pytest.raises(RegistryError, match=r"no version '9'"):
        deploy.start(uri, "solar", "9", "canary", 10.0)
    with pytest.raises(RegistryError, match=r"share is a percent"):
        deploy.start(uri, "solar", "1", "canary", 0.0)
    registry.mark_refused(uri, "solar", "1", "golden batch differs")
    with pytest.raises(RegistryError, match="refused by a service"):
        deploy.start(uri, "solar", "1", "shadow")
