"""Nothing writes without leave: a page of another site cannot write through a visitor's
browser (Origin, Sec-Fetch-Site, body types), the operator page answers only the names it
serves (DNS rebinding), /readyz shows no internal path, and a service that is not ready
says why without a traceback (issue 25, items 5 and 9)."""

from __future__ import annotations

import json
import logging

from starlette.testclient import TestClient

from loopline.app.ui.app import Project, create_app
from loopline.online.predlog import read_predictions
from loopline.params import load_params
from loopline.paths import ProjectPaths
from tests.serving.conftest import service_app
from tests.serving.test_service_api import window

CROSS_SITE = [
    {"origin": "http://attacker.example"},
    {"origin": "null"},  # a sandboxed frame, a file:// page
    {"sec-fetch-site": "cross-site"},
    {"sec-fetch-site": "same-site"},  # another port of this host is another origin
]


def logged(root) -> list:
    paths = ProjectPaths.at(root)
    from sqlalchemy import create_engine, inspect

    url = paths.prediction_log_url(load_params(paths.params_file))
    return read_predictions(url) if inspect(create_engine(url)).has_table("predictions") else []


def test_no_other_site_writes_through_a_browser(served_project):
    with TestClient(service_app()) as service:
        browsers_refused(service)
    assert {r["api"] for r in logged(served_project)} == {"predict"}
    assert len(logged(served_project)) == 2


def browsers_refused(service) -> None:
    body = {"windows": [window()]}
    line = json.dumps(window()).encode() + b"\n"
    for headers in CROSS_SITE:
        for path, content, kind in (
            ("/predict", None, None),
            ("/stream", line, "application/x-ndjson"),
        ):
            sent = {**headers, **({"content-type": kind} if kind else {})}
            if content is None:
                refused = service.post(path, json=body, headers=sent)
            else:
                refused = service.post(path, content=content, headers=sent)
            assert refused.status_code == 403, (path, headers, refused.text)
            assert "another site" in refused.json()["error"]
    # What a page may send anywhere without asking: text, forms; never JSON.
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; b=x"):
        for path in ("/predict", "/stream"):
            refused = service.post(path, content=b"{}", headers={"content-type": kind})
            assert refused.status_code == 415, (path, kind, refused.text)
            assert path in refused.json()["error"]
    service.post("/predict", json=body)  # the app itself, and clients that are not browsers
    same = service.post("/predict", json=body, headers={"origin": "http://testserver"})
    assert same.status_code == 200, same.text


def test_an_allowed_origin_may_write(served_project, monkeypatch):
    monkeypatch.setenv("LOOPLINE_SERVE_ALLOWED_ORIGINS", '["https://app.example"]')
    with TestClient(service_app()) as client:
        let_in = client.post(
            "/predict",
            json={"windows": [window()]},
            headers={"origin": "https://app.example", "sec-fetch-site": "cross-site"},
        )
        assert let_in.status_code == 200, let_in.text


def test_a_service_not_ready_says_why_without_paths_or_tracebacks(
    served_project, monkeypatch, caplog
):
    monkeypatch.setenv("LOOPLINE_SERVE_MODEL", "nothing-published")  # never ready
    caplog.set_level(logging.INFO)
    with TestClient(service_app(startup_wait_s=5)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert "no version of 'nothing-published'" in ready.text
        assert str(served_project) not in ready.text  # the registry's path is masked
        for _ in range(20):
            answer = client.post("/predict", json={"windows": [window()]})
            assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
            assert answer.json()["error"].startswith("not ready: no version")
            assert str(served_project) not in answer.text
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


def test_the_operator_page_answers_only_the_names_it_serves(served_project):
    paths = ProjectPaths.at(served_project)
    params = load_params(paths.params_file)
    app = create_app(Project(params, paths, None, services=[]), host="127.0.0.1")
    for name in ("http://attacker.example:8080", "http://10.1.2.3:8080"):
        with TestClient(app, base_url=name) as rebound:
            assert rebound.get("/api/models").status_code == 400
    with TestClient(app, base_url="http://localhost:8080") as local:
        assert local.get("/api/models").status_code == 200

    params = load_params(paths.params_file, ["ui.allowed_hosts=[loopline.internal]"])
    app = create_app(Project(params, paths, None, services=[]), host="0.0.0.0")
    with TestClient(app, base_url="http://loopline.internal") as proxied:
        assert proxied.get("/api/models").status_code == 200
