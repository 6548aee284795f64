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

    from serving.metrics import use_own_metrics_folder

    solar, digits = tmp_path / "solar-3000", tmp_path / "digits-3001"
    solar.mkdir()
    (solar / "counter_1.db").write_bytes(b"series")
    assert use_own_metrics_folder("digits", {"PROMETHEUS_MULTIPROC_DIR": str(digits)}) == str(
        digits
    )
    # What BentoML's main process does at start: create (and wipe) the folder it is given.
    assert ensure_prometheus_dir() == str(digits)
    assert (solar / "counter_1.db").read_bytes() == b"series"  # the other service's, kept
    # Without the variable (plain `bentoml serve`): one folder per server process.
    assert use_own_metrics_folder("digits", {}).endswith(f"digits-{os.getpid()}")


def test_loopline_serve_names_a_metrics_folder_per_model_and_port(served_project, monkeypatch):
    from typer.testing import CliRunner

    from loopline.app.cli import app

    started: list[dict[str, str]] = []

    def exec_instead(path, args, env):  # `serve` replaces itself with bentoml: catch that
        started.append(env)
        raise SystemExit(0)

    monkeypatch.setattr(os, "execvpe", exec_instead)
    monkeypatch.setenv("LOOPLINE_TASK", "solar")
    for port in ("3100", "3101"):
        CliRunner().invoke(app, ["serve", "--port", port, "--project", str(served_project)])
    folders = [env["PROMETHEUS_MULTIPROC_DIR"] for env in started]
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


def body_of(chunks: list[bytes], then_wait: bool = False):
    """A Starlette request whose body arrives in `chunks` (then, with `then_wait`, nothing
    more: a client that stopped mid-line)."""
    import asyncio

    from starlette.requests import Request

    messages = [{"type": "http.request", "body": c, "more_body": True} for c in chunks]

    async def receive():
        if messages:
            return messages.pop(0)
        if then_wait:
            await asyncio.sleep(3600)
        return {"type": "http.request", "body": b"", "more_body": False}

    return Request({"type": "http", "method": "POST", "path": "/stream", "headers": []}, receive)


def lines_of(chunks: list[bytes], limit: int = 64, then_wait: bool = False, timeout=None):
    import asyncio

    from serving.streams import ndjson_batches

    async def collect():
        request = body_of(chunks, then_wait)
        return [b async for b in ndjson_batches(request, limit, timeout)]

    return [line for batch in asyncio.run(collect()) for line in batch]


def test_an_over_long_line_is_one_error_and_later_lines_keep_their_numbers():
    chunks = [b'{"a":1}\n' + b"x" * 50, b"x" * 50, b"x" * 50, b"x\n" + b'{"b":2}\n{"c"', b":3}\n"]
    assert lines_of(chunks) == [(1, b'{"a":1}'), (2, None), (3, b'{"b":2}'), (4, b'{"c":3}')]
    # A whole over-long line in one chunk, and one at the very end without a newline.
    assert lines_of([b"y" * 100 + b"\n{}\n", b"z" * 100]) == [(1, None), (2, b"{}"), (3, None)]


def test_a_line_left_unfinished_times_out_and_a_quiet_client_does_not():
    from serving.streams import LineTimeout

    with pytest.raises(LineTimeout) as stopped:
        lines_of([b"{}\n", b'{"half'], then_wait=True, timeout=0.2)
    assert stopped.value.args == (2,)
    # Between lines nothing times out (the body's end comes after the chunks here).
    assert lines_of([b"{}\n", b"{}\n"], timeout=0.2) == [(1, b"{}"), (2, b"{}")]


def open_stream(port: int, first: bytes):
    """A raw `/stream` connection (chunked body) that has sent `first`."""
    import socket

    conn = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = (
        "POST /stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    conn.sendall(head.encode() + f"{len(first):x}\r\n".encode() + first + b"\r\n")
    return conn


def half_sent_predict(port: int) -> bytes:
    """What the service answers a `/predict` whose body stops halfway (read until it
    closes the connection)."""
    import socket

    conn = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    conn.sendall(f"{head}Content-Length: 1000\r\n\r\n".encode() + b'{"windows": [')
    answer = b""
    while chunk := conn.recv(65536):
        answer += chunk
    conn.close()
    return answer


def test_streams_are_capped_timed_out_and_their_disconnects_quiet(served_project, tmp_path):
    """The real service: `serve.max_streams` open streams, the next one a 503; a half line
    closes its stream after `serve.line_timeout_s`, a half body gets 408 after
    `serve.body_timeout_s`; clients that vanish mid-stream and bodies that fail validation
    leave no traceback in the log."""
    import sys
    import time
    from pathlib import Path

    import httpx

    from loopline.health import free_port
    from tests.serving.conftest import serve_process

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    env |= {"LOOPLINE_SERVE_MAX_STREAMS": "2", "LOOPLINE_SERVE_LINE_TIMEOUT_S": "1"}
    env |= {"LOOPLINE_SERVE_BODY_TIMEOUT_S": "1"}
    command = [str(Path(sys.executable).parent / "loopline"), "serve", "--port", str(port)]
    log_path = tmp_path / "serve.log"
    with serve_process(command, served_project, log_path, url, env):
        quiet = open_stream(port, b"\n")
        half = open_stream(port, b'{"site_id": "greens')
        time.sleep(0.5)
        third = httpx.post(f"{url}/stream", content=b"\n", timeout=30)
        assert third.status_code == 503 and "serve.max_streams" in third.json()["error"]
        answer = b""
        while b"serve.line_timeout_s" not in answer:  # the half line: closed after ~1 s
            answer += half.recv(65536) or b"#closed"
            assert b"#closed" not in answer, answer
        assert b'"line":1' in answer
        half.close()
        quiet.close()  # gone mid-stream, without ending its body
        time.sleep(1.0)
        again = httpx.post(f"{url}/stream", content=b"\n", timeout=30)
        assert again.status_code == 200  # the closed streams no longer count
        assert httpx.get(f"{url}/livez").status_code == 200
        started = time.monotonic()
        answer = half_sent_predict(port)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b"serve.body_timeout_s" in answer and time.monotonic() - started < 10
        for _ in range(3):  # invalid bodies: 400s, counted, not logged as tracebacks
            bad = httpx.post(f"{url}/predict", json={"windows": [{"site_id": 1}]}, timeout=30)
            assert bad.status_code == 400
    output = log_path.read_text()
    assert "Traceback" not in output and "ClientDisconnect" not in output, output[-3000:]
