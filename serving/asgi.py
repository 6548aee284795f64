"""ASGI pieces of the service: a body size limit (413), multipart checks (400) and a
full-duplex NDJSON response."""

from __future__ import annotations

import json

from starlette.requests import ClientDisconnect
from starlette.responses import StreamingResponse


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


async def send_json(send, status: int, payload: dict) -> None:
    """Answer an ASGI request with a JSON body."""
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
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
        except OSError:
            raise ClientDisconnect() from None
        if self.background is not None:
            await self.background()
