"""Overload (issue 27): above a worker's capacity `/predict` answers 503 with Retry-After
before any work, from admission control (`serve.max_predict_bytes_in_flight`, counted from
the declared body sizes) or, for what BentoML's batcher sheds past `serve.max_latency_ms`,
instead of its bare 503 and a traceback; below it no request gets a 5xx."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from serving.asgi import (
    BENTOML_5XX_BODY,
    BatchAdmission,
    QuietClientErrors,
    overloaded,
    shed_by_batcher,
)
from tests.serving.conftest import serve_process, service_app
from tests.serving.test_service_api import window

# ------------------------------------------------------------------ the middleware alone


class HeldApp:
    """An ASGI app that reads its body, then answers `status` with `body` once `release`
    is set (its work in flight meanwhile)."""

    def __init__(self, status: int = 200, body: bytes = b"[]", headers=()) -> None:
        self.release = asyncio.Event()
        self.status, self.body, self.headers = status, body, list(headers)
        self.bodies_read = 0

    async def __call__(self, scope, receive, send):
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        self.bodies_read += 1
        await self.release.wait()
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


async def call(app, size: int | None, chunks=(b"",)) -> tuple[int, dict, bytes, bool]:
    """POST /predict declaring `size` bytes (None: chunked, sent as `chunks`); returns the
    status, headers, body, and whether the app asked for the body at all."""
    headers = [(b"content-type", b"application/json")]
    if size is not None:
        headers.append((b"content-length", str(size).encode()))
    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": headers}
    left, asked, sent = list(chunks), [], {"body": b""}

    async def receive():
        asked.append(True)
        chunk = left.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(left)}

    async def send(message):
        if message["type"] == "http.response.start":
            sent["status"], sent["headers"] = message["status"], dict(message["headers"])
        else:
            sent["body"] += message.get("body", b"")

    await app(scope, receive, send)
    return sent["status"], sent["headers"], sent["body"], bool(asked)


def test_a_request_past_the_bytes_in_flight_gets_503_before_its_body_is_read():
    async def scenario():
        inner = HeldApp()
        app = BatchAdmission(inner, paths=("/predict",), limit=100)
        before = overloaded.total
        first = asyncio.create_task(call(app, 60))
        await asyncio.sleep(0.01)
        over = await call(app, 50)  # 60 + 50 > 100
        fits = asyncio.create_task(call(app, 40))  # 60 + 40 = 100
        chunked = asyncio.create_task(call(app, None, [b"x" * 30, b"y" * 30]))
        await asyncio.sleep(0.01)
        held = app.in_flight  # the chunked body is admitted (nothing declared), then counted
        inner.release.set()
        done = await asyncio.gather(first, fits, chunked)
        alone = await call(app, 500)  # larger than the limit, but nothing else in flight
        return over, done, held, alone, overloaded.total - before, app

    over, done, held, alone, counted, app = asyncio.run(scenario())
    status, headers, body, asked = over
    assert status == 503 and headers[b"retry-after"] == b"1" and not asked
    assert "serve.max_predict_bytes_in_flight" in json.loads(body)["error"]
    assert [d[0] for d in done] == [200, 200, 200] and alone[0] == 200
    assert held == 60 + 40 + 60 and counted == 1 and app.in_flight == 0


def test_a_bare_503_from_the_batcher_is_answered_with_retry_after_and_a_reason():
    async def answered(inner):
        inner.release.set()
        return await call(BatchAdmission(inner, paths=("/predict",), limit=100), 10)

    before = shed_by_batcher.total
    length = (b"content-length", str(len(BENTOML_5XX_BODY)).encode())
    shed = asyncio.run(answered(HeldApp(503, BENTOML_5XX_BODY, [length])))
    assert shed[0] == 503 and shed[1][b"retry-after"] == b"1"
    assert "serve.max_latency_ms" in json.loads(shed[2])["error"]
    assert b"content-length" not in shed[1]  # BentoML's length was for its own body
    assert shed_by_batcher.total - before == 1
    # Any other 503 keeps its body and gains Retry-After; one that has it, and 200s, pass.
    other = asyncio.run(answered(HeldApp(503, b'{"error": "not ready: loading"}')))
    assert other[1][b"retry-after"] == b"1" and b"loading" in other[2]
    own = [(b"retry-after", b"7")]
    assert asyncio.run(answered(HeldApp(503, b"{}", own)))[1][b"retry-after"] == b"7"
    assert b"retry-after" not in asyncio.run(answered(HeldApp()))[1]


def handler_record(error: BaseException) -> logging.LogRecord:
    """The record BentoML's API handler logs for `error` (`log_exception`)."""
    return logging.LogRecord(
        "bentoml._internal.server.http_app",
        logging.ERROR,
        __file__,
        1,
        "Exception on %s [%s]",
        ("/predict", "POST"),
        (type(error), error, error.__traceback__),
    )


def test_only_the_batchers_shed_is_kept_out_of_the_log():
    from bentoml.exceptions import ServiceUnavailable

    try:  # what BentoML's batcher does with a request it sheds
        try:
            raise asyncio.CancelledError
        except asyncio.CancelledError:
            raise ServiceUnavailable("process is overloaded") from None
    except ServiceUnavailable as error:
        shed = error
    assert isinstance(shed.__context__, asyncio.CancelledError)
    quiet = QuietClientErrors()
    assert not quiet.filter(handler_record(shed))
    # The same error without a cancelled batch behind it is a fault: logged as it was.
    assert quiet.filter(handler_record(ServiceUnavailable("not ready")))


# ------------------------------------------------------------------ BentoML's batcher


def test_what_the_real_batcher_sheds_is_a_503_with_retry_after_and_no_traceback(
    served_project, monkeypatch, caplog
):
    """In-process, with `serve.max_latency_ms` at 1 ms: concurrent requests queue behind a
    batch in progress, and the batcher sheds them."""
    from starlette.testclient import TestClient

    monkeypatch.setenv("LOOPLINE_SERVE_MAX_LATENCY_MS", "1")
    body = {"windows": [window(start=f"2021-02-0{day}") for day in range(1, 9)]}
    answers, before = [], shed_by_batcher.total
    with TestClient(service_app()) as client, ThreadPoolExecutor(16) as pool:
        for _ in range(5):  # until a burst overlaps a batch (the first one does, in practice)
            answers += pool.map(lambda _: client.post("/predict", json=body), range(16))
            if any(a.status_code == 503 for a in answers):
                break
    shed = [a for a in answers if a.status_code == 503]
    assert shed and {a.status_code for a in answers} <= {200, 503}
    assert shed_by_batcher.total - before == len(shed)
    for answer in shed:
        assert answer.headers["retry-after"] == "1"
        assert "serve.max_latency_ms" in answer.json()["error"]
    traced = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not traced, traced


# ------------------------------------------------------------------ the real service


def raw_request(port: int, head_length: int, body: bytes = b"") -> socket.socket:
    """A `/predict` connection declaring `head_length` body bytes that has sent `body`."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    conn.sendall(f"{head}Content-Length: {head_length}\r\n\r\n".encode() + body)
    return conn


def answer_of(conn: socket.socket) -> tuple[bytes, bytes]:
    """An HTTP/1.1 response's head and body (as far as its Content-Length or chunks go)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    while not (body.endswith(b"0\r\n\r\n") or _complete(head, body)):
        body += conn.recv(65536)
    conn.close()
    return head, body


def _complete(head: bytes, body: bytes) -> bool:
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


@pytest.mark.e2e
def test_the_service_refuses_past_its_bytes_in_flight_and_serves_below_them(
    served_project, tmp_path
):
    """`loopline serve` with 64 KiB of /predict bodies in flight per worker: while one
    request's body is half sent, a request that would pass the limit gets 503 with
    Retry-After from its headers alone; once it is answered, concurrent requests under the
    limit all get 200, and a lone request over it too; the log has no traceback."""
    from loopline.health import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "LOOPLINE_SERVE_MAX_PREDICT_BYTES_IN_FLIGHT": str(64 * 1024)}
    command = [str(Path(sys.executable).parent / "loopline"), "serve", "--port", str(port)]
    log_path = tmp_path / "serve.log"
    held = json.dumps({"windows": [window(start=f"2021-02-0{d}") for d in range(1, 8)]})
    held = held.encode()  # ~43 KB
    small = {"windows": [window()]}  # ~6 KB
    large = {"windows": [window(start=f"2021-02-{d:02}") for d in range(1, 13)]}  # ~74 KB
    with serve_process(command, served_project, log_path, url, env):
        assert len(held) < 64 * 1024 < len(held) + 30_000 < len(json.dumps(large)) + 30_000
        half = len(held) // 2
        in_flight = raw_request(port, len(held), held[:half])
        head, body = answer_of(raw_request(port, 30_000))  # no body sent: refused from headers
        assert head.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in head.lower()
        assert b"serve.max_predict_bytes_in_flight" in body
        in_flight.sendall(held[half:])
        head, body = answer_of(in_flight)
        assert head.startswith(b"HTTP/1.1 200"), head + body
        with httpx.Client(base_url=url, timeout=60) as client, ThreadPoolExecutor(8) as pool:
            burst = list(pool.map(lambda _: client.post("/predict", json=small), range(8)))
            assert [a.status_code for a in burst] == [200] * 8
            assert client.post("/predict", json=large).status_code == 200
    output = log_path.read_text()
    assert "Traceback" not in output and "ERROR" not in output, output[-3000:]
