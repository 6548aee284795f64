"""What keeps services and clients apart: each service its own metrics folder, ..."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def bentoml_metrics_folder():
    from bentoml._internal.configuration.containers import BentoMLContainer

    yield BentoMLContainer.prometheus_multiproc_dir
    BentoMLContainer.prometheus_multiproc_dir.reset()


def test_each_service_gets_its_own_prometheus_folder(bentoml_metrics_folder, tmp_path):
    from bentoml.serving import ensure_prometheus_dir

    from serving.champion import use_own_metrics_folder

    solar, digits = tmp_path / "solar-3000", tmp_path / "digits-3001"
    solar.mkdir()
    (solar / "counter_1.db").write_bytes(b"series")
    assert use_own_metrics_folder("digits", {"LOOPLINE_METRICS_DIR": str(digits)}) == str(digits)
    # What BentoML's main process does at start: create (and wipe) the folder it is given.
    assert ensure_prometheus_dir() == str(digits)
    assert (solar / "counter_1.db").read_bytes() == b"series"  # the other service's, kept
    # A worker is given the folder by its main process: nothing to choose there.
    assert use_own_metrics_folder("digits", {"PROMETHEUS_MULTIPROC_DIR": str(solar)}) is None
    default = use_own_metrics_folder("digits", {})
    assert default.endswith(f"digits-{os.getpid()}")


def test_loopline_serve_names_a_metrics_folder_per_model_and_port(served_project, monkeypatch):
    from typer.testing import CliRunner

    from loopline.cli import app

    started: list[dict[str, str]] = []

    def exec_instead(path, args, env):  # `serve` replaces itself with bentoml: catch that
        started.append(env)
        raise SystemExit(0)

    monkeypatch.setattr(os, "execvpe", exec_instead)
    monkeypatch.setenv("LOOPLINE_TASK", "solar")
    monkeypatch.delenv("LOOPLINE_METRICS_DIR", raising=False)
    for port in ("3100", "3101"):
        CliRunner().invoke(app, ["serve", "--port", port, "--project", str(served_project)])
    folders = [env["LOOPLINE_METRICS_DIR"] for env in started]
    assert folders == [
        str(served_project / ".loopline" / "metrics" / "solar-3100"),
        str(served_project / ".loopline" / "metrics" / "solar-3101"),
    ]


TOKEN = "t0ken-for-tests"


@pytest.fixture
def token_client(served_project, monkeypatch):
    from starlette.testclient import TestClient

    from tests.serving.conftest import service_app

    monkeypatch.setenv("LOOPLINE_SERVE_TOKEN", TOKEN)
    with TestClient(service_app()) as client:
        yield client


def test_a_token_guards_predictions_but_not_health_or_metrics(token_client):
    from tests.serving.test_service_api import window

    body = {"windows": [window()]}
    refused = token_client.post("/predict", json=body)
    assert refused.status_code == 401 and "Bearer" in refused.json()["error"]
    assert refused.headers["www-authenticate"] == "Bearer"
    wrong = {"Authorization": "Bearer not-it"}
    assert token_client.post("/predict", json=body, headers=wrong).status_code == 401
    assert token_client.post("/stream", content=b"{}\n").status_code == 401
    right = {"Authorization": f"Bearer {TOKEN}"}
    assert token_client.post("/predict", json=body, headers=right).status_code == 200
    for path in ("/livez", "/readyz", "/docs.json"):  # (/metrics: the real service, test_secrets)
        assert token_client.get(path).status_code == 200, path


def test_metadata_shows_internal_paths_only_when_authenticated(token_client, served_project):
    anonymous = token_client.get("/metadata")
    assert anonymous.status_code == 200 and anonymous.json()["model"]["version"] == "2"
    assert str(served_project) not in anonymous.text and "<path>" in anonymous.text
    headers = {"Authorization": f"Bearer {TOKEN}"}
    operator = token_client.get("/metadata", headers=headers).json()
    assert str(served_project) in operator["tracking_uri"]
    assert TOKEN not in token_client.get("/metadata", headers=headers).text
