"""ASGI pieces of the service: a bearer token (401), a body size limit (413), multipart
checks (400) and a full-duplex NDJSON response."""

from __future__ import annotations

import hmac
import json
import logging
import time

from starlette.requests import ClientDisconnect
from starlette.responses import StreamingResponse

log = logging.getLogger("loopline.serving")


class BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """ASGI middleware: refuse request bodies over `limit` bytes with 413.

    Checks Content-Length up front and counts the bytes of chunked bodies as they arrive.
    `skip_paths` (the NDJSON stream, which is unbounded by design and limited per line
    instead) pass through.
    """

    def __init__(self, app, limit: int, skip_paths: tuple[str, ...] = ()):
        self.app, self.limit, self.skip_paths = app, limit, tuple(skip_paths)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].startswith(self.skip_paths):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._refuse(send)
        seen = 0
        started = False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge
            return message

        async def tracked_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send):
        message = f"request body larger than {self.limit} bytes (serve.max_body_bytes)"
        await send_json(send, 413, {"error": message})


# What stays open whatever the token: health, metrics, the API description, and /metadata
# (which shows internal paths only to an authenticated client).
OPEN_PATHS = frozenset(
    {"/", "/livez", "/readyz", "/healthz", "/metrics", "/docs.json", "/metadata"}
)
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
AUTHENTICATED = "loopline_authenticated"


class TokenAuth:
    """ASGI middleware: with a token set, prediction and operator endpoints need
    `Authorization: Bearer <token>` (401 otherwise). Without one, a loopback client counts
    as authenticated and any other client is served as before, but sees no internal paths.
    Whether a request is authenticated is left in its scope's state for the endpoints."""

    def __init__(self, app, token: str | None):
        self.app = app
        self.token = token.encode() if token else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        authenticated = self._authenticated(scope)
        scope.setdefault("state", {})[AUTHENTICATED] = authenticated
        path = scope["path"]
        if authenticated or self.token is None or path in OPEN_PATHS:
            return await self.app(scope, receive, send)
        if path.startswith("/static_content/"):  # the docs page's scripts
            return await self.app(scope, receive, send)
        message = "this endpoint needs `Authorization: Bearer <token>` (serve.token)"
        await send_json(send, 401, {"error": message}, [(b"www-authenticate", b"Bearer")])

    def _authenticated(self, scope) -> bool:
        if self.token is None:
            client = scope.get("client")
            return bool(client) and client[0] in LOOPBACK
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token)


class MultipartNeedsBoundary:
    """ASGI middleware: a multipart body declared without its boundary is a 400 (BentoML's
    own API handler would answer 500 for the parser's error)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            kind = dict(scope.get("headers") or []).get(b"content-type", b"").lower()
            if kind.startswith(b"multipart/") and b"boundary=" not in kind:
                message = "multipart body without a boundary (Content-Type: ...; boundary=...)"
                return await send_json(send, 400, {"error": message})
        return await self.app(scope, receive, send)


async def send_json(send, status: int, payload: dict, headers: list | None = None) -> None:
    """Answer an ASGI request with a JSON body."""
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": body})


class DuplexStreamingResponse(StreamingResponse):
    """A streaming response whose body iterator reads the request body as it goes.

    Starlette's StreamingResponse listens on `receive` for a disconnect while it streams
    (under ASGI < 2.4, e.g. the test client), which would steal the request's chunks from
    the iterator. Here the iterator is the only reader; it sees a disconnect itself.
    """

    async def __call__(self, scope, receive, send):
        try:
            await self.stream_response(send)
        except (OSError, ClientDisconnect):  # the client went away: nothing to answer
            disconnects.note(scope)
            return
        finally:
            await self.body_iterator.aclose()  # its `finally` runs now, not at collection
        if self.background is not None:
            await self.background()


class QuietDisconnects:
    """Client disconnects are routine for a stream: one INFO line per `every_s` seconds
    saying how many there were, instead of a traceback per disconnect."""

    def __init__(self, every_s: float = 10.0):
        self.every_s, self.count, self.last = every_s, 0, 0.0

    def note(self, scope) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self.last >= self.every_s:
            path = scope.get("path", "?")
            log.info("%d client(s) disconnected mid-stream (last on %s)", self.count, path)
            self.count, self.last = 0, now


disconnects = QuietDisconnects()
