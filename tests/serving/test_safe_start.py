"""Safe versions and deadlines in the service: a refused champion is marked and replaced by
the last good one; the registry never holds up the liveness probe."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from loopline import registry
from loopline.paths import ProjectPaths
from tests.serving.conftest import service_app
from tests.serving.test_service_api import wait_for


def model_file(uri: str, version: str):
    from urllib.parse import unquote, urlparse

    mlflow_client = registry.client(uri)
    logged = mlflow_client.get_model_version("solar", version).source.removeprefix("models:/")
    folder = mlflow_client.get_logged_model(logged).artifact_location
    return Path(unquote(urlparse(folder).path)) / "model.onnx"


def test_a_refused_champion_is_marked_and_the_last_good_one_serves(served_project):
    from starlette.testclient import TestClient

    uri = ProjectPaths.at(served_project).tracking_uri()
    champion = model_file(uri, "2")
    good = champion.read_bytes()
    champion.write_bytes(b"not an onnx model")  # v2, the champion, broke in the store
    with TestClient(service_app()) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert "serving v1" in ready.text and "not the champion v2" in ready.text
        assert "not a loadable ONNX model" in ready.text
        meta = client.get("/metadata").json()
        assert meta["model"]["version"] == "1" and meta["fallback"]["champion"] == "2"
        mark = registry.refusal(registry.client(uri).get_model_version("solar", "2"))
        assert "not a loadable ONNX model" in mark["why"]

        # Repaired and retried: the service follows the champion again.
        champion.write_bytes(good)
        registry.move_champion(uri, "solar", "2", "fixed the file", retry=True)
        wait_for(client, lambda m: m["model"]["version"] == "2" and m["fallback"] is None)
        assert client.get("/readyz").text.strip() == ""


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_registry_never_holds_up_livez(served_project, monkeypatch):
    from starlette.testclient import TestClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{closed_port()}")
    for key in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        monkeypatch.delenv(key, raising=False)  # the service's own deadlines apply
    started = time.monotonic()
    with TestClient(service_app(startup_wait_s=0)) as client:
        assert client.get("/livez").status_code == 200
        assert time.monotonic() - started < 10  # MLflow's own retries took minutes
        deadline = time.monotonic() + 60
        while "registry unreachable" not in (ready := client.get("/readyz")).text:
            assert ready.status_code == 503 and time.monotonic() < deadline, ready.text
            time.sleep(0.2)
        assert ready.status_code == 503 and "127.0.0.1" in ready.text
        meta = client.get("/metadata").json()
        assert meta["registry_deadlines"]["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"
