"""Reliability harness helpers: schemathesis over a service's OpenAPI, raw ASGI calls,
crafted images (issue 15's acceptance suite).

The fuzzing runs each operation of the published spec with a bounded, derandomized number
of generated requests and keeps what it found (rather than stopping at the first failure),
so one run per served model answers two questions: any response >= 500, and any 4xx whose
status or body the spec does not describe.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass

import pytest
import schemathesis

# The serving fixtures' registry (v1, v2; v2 champion) and a private copy of it per test.
from tests.serving.conftest import registry_template, served_project  # noqa: F401

EXAMPLES = 25  # generated requests per operation and generation mode: bounded, CI-sized


@schemathesis.serializer("application/x-ndjson")
def _ndjson(ctx, value) -> bytes:
    """One generated stream line (the spec's schema is that of one line)."""
    return (json.dumps(value) + "\n").encode()


@dataclass(frozen=True)
class Finding:
    operation: str
    status: int
    problem: str | None  # None: the response is what the spec says
    request: str  # how to reproduce it (curl)


def fuzz(app, skip: tuple[str, ...] = ("/metrics",), examples: int = EXAMPLES) -> list[Finding]:
    """Every operation of `app`'s OpenAPI spec (`/docs.json`), `examples` generated valid
    and `examples` invalid requests each, sent through the ASGI app (its lifespan started
    once). `skip`: `/metrics` reads the multiprocess folder only a real server sets up."""
    schema = schemathesis.openapi.from_asgi("/docs.json", app)
    findings: list[Finding] = []
    try:
        for result in schema.get_all_operations():
            operation = result.ok()
            if operation.path in skip:
                continue
            modes = [operation.as_strategy()]
            if operation.body:  # only a body can be invalid in a way worth generating
                modes.append(operation.as_strategy(schemathesis.GenerationMode.NEGATIVE))

            run = _fuzz_operation(operation, modes, examples, findings)
            run()
    finally:
        _stop_lifespans()
    return findings


def _fuzz_operation(operation, modes, examples: int, findings: list[Finding]):
    """The hypothesis test that sends `operation`'s generated requests (call it to run)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    @settings(
        max_examples=examples * len(modes),
        derandomize=True,  # the same requests every run
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    @given(st.one_of(modes))
    def run(case):
        response = case.call()
        problem = _problem(case, response)
        curl = case.as_curl_command()[:500]
        findings.append(Finding(operation.label, response.status_code, problem, curl))

    return run


def _problem(case, response) -> str | None:
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        response_schema_conformance,
        status_code_conformance,
    )

    if response.status_code >= 500:
        checks = [not_a_server_error]
    elif response.status_code >= 400:
        checks = [status_code_conformance, response_schema_conformance]
    else:
        return None
    try:
        case.validate_response(response, checks=checks)
    except BaseException as error:  # a FailureGroup is a BaseExceptionGroup
        if isinstance(error, KeyboardInterrupt):
            raise
        parts = getattr(error, "exceptions", None) or [error]
        return " | ".join(" ".join(str(p).split())[:300] for p in parts)
    return None


def _stop_lifespans() -> None:
    # schemathesis keeps an ASGI app's lifespan (the service: its poller, its log writer)
    # running until the process exits; stop it when the run is done.
    from schemathesis.python import asgi

    stop = getattr(asgi, "shutdown_lifespans", None)
    if stop is not None:
        stop()


def summary(findings: list[Finding], kind: str) -> str:
    """The findings of one kind ('5xx' or '4xx'), one line per distinct problem."""
    wanted = [
        f
        for f in findings
        if f.problem and (f.status >= 500 if kind == "5xx" else 400 <= f.status < 500)
    ]
    distinct = {(f.operation, f.status, f.problem[:160]): f for f in wanted}
    return "\n".join(
        f"{op} -> {status}: {problem}\n    {f.request}"
        for (op, status, problem), f in sorted(distinct.items())
    )


# --------------------------------------------------------------------------- crafted PNGs


def png_declaring(width: int, height: int, rows: int | None = None) -> bytes:
    """A greyscale PNG whose header declares `width`×`height` pixels. With `rows` None
    the pixel data is complete (zeros compress ~1000:1, so the file stays small); else
    only `rows` rows are there: Pillow reads the size from the header before any data."""
    raw = zlib.compressobj(9)
    line = b"\x00" * (width + 1)  # filter byte + one byte per pixel
    data = b"".join(raw.compress(line) for _ in range(height if rows is None else rows))
    data += raw.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


# --------------------------------------------------------------------------- raw ASGI calls


def asgi_post(client, path: str, chunks: list[bytes], content_type: str) -> tuple[int, bytes]:
    """POST `chunks` as separate ASGI body messages (as a slow client's packets arrive)
    through the app a started TestClient serves; returns (status, body)."""

    async def call():
        queue = [
            {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
            for i, c in enumerate(chunks)
        ]
        status, body = 0, bytearray()

        async def receive():
            if queue:
                return queue.pop(0)
            return {"type": "http.disconnect"}

        async def send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                body.extend(message.get("body", b""))

        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(b"host", b"testserver"), (b"content-type", content_type.encode())],
            "client": ("127.0.0.1", 1234),
            "server": ("testserver", 80),
            "state": {},
        }
        await client.app(scope, receive, send)
        return status, bytes(body)

    return client.portal.call(call)


@pytest.fixture
def captured_logs(caplog):
    """Every log record of the test (all loggers, DEBUG and up)."""
    import logging

    caplog.set_level(logging.DEBUG)
    return caplog
