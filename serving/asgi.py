"""ASGI pieces of the service: a bearer token (401), body size and read-time limits (413,
408), multipart checks (400), admission control (503, 429) and a full-duplex NDJSON
response."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time

from bentoml.exceptions import BentoMLException, ServiceUnavailable
from pydantic import ValidationError
from starlette.requests import ClientDisconnect
from starlette.responses import StreamingResponse

from loopline.health import LOOPBACK_HOSTS
from loopline.redaction import quiet_records

log = logging.getLogger("loopline.serving")


class BodyTooLarge(Exception):
    pass


class BodyTooSlow(Exception):
    pass


class BoundedBody:
    """ASGI middleware: refuse request bodies over `limit` bytes with 413, and bodies still
    unfinished `timeout_s` seconds after their last chunk with 408 (a client that sends half
    a body would otherwise hold a connection and its request for BentoML's hour).

    Checks Content-Length up front and counts the bytes of chunked bodies as they arrive.
    `skip_paths` (the NDJSON stream, which is unbounded by design and limited per line
    instead) pass through; `path_limits` gives a path a smaller limit of its own, with the
    setting that sets it (`/explain`: parsing a body holds the event loop, ~25 ms for
    0.7 MB, so a heavy path's bodies stay small).
    """

    def __init__(
        self,
        app,
        limit: int,
        timeout_s: float,
        skip_paths: tuple[str, ...] = (),
        path_limits: dict[str, tuple[int, str]] | None = None,
    ):
        self.app, self.limit, self.timeout_s = app, limit, timeout_s
        self.skip_paths = tuple(skip_paths)
        self.path_limits = dict(path_limits or {})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].startswith(self.skip_paths):
            return await self.app(scope, receive, send)
        limit, setting = self.path_limits.get(scope["path"], (self.limit, "serve.max_body_bytes"))
        too_large = f"request body larger than {limit} bytes ({setting})"
        length = declared_length(scope.get("headers") or ())
        if length is not None and length > limit:
            return await self._refuse(send, 413, too_large)
        seen, done, started, refused = 0, False, False, False

        async def refuse(status: int, message: str, error: type[Exception]):
            # Answered here, before the app hears of it: BentoML's handler turns any error
            # raised from reading the body into a 500 of its own, which is then dropped.
            nonlocal refused
            if not started:
                refused = True
                await self._refuse(send, status, message)
            raise error

        async def bounded_receive():
            nonlocal seen, done
            if done:  # after the body only a disconnect can come: wait as long as it takes
                return await receive()
            try:
                # (`asyncio.timeout`, not `wait_for`: that makes a task per chunk, ~12 µs)
                async with asyncio.timeout(self.timeout_s):
                    message = await receive()
            except TimeoutError:
                await refuse(408, self._too_slow(), BodyTooSlow)
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                done = not message.get("more_body", False)
                if seen > limit:
                    await refuse(413, too_large, BodyTooLarge)
            return message

        async def tracked_send(message):
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        with contextlib.suppress(BodyTooLarge, BodyTooSlow):  # answered in `refuse`
            await self.app(scope, bounded_receive, tracked_send)

    def _too_slow(self) -> str:
        return (
            f"request body unfinished {self.timeout_s:g} s after its last bytes "
            "(serve.body_timeout_s)"
        )

    async def _refuse(self, send, status: int, message: str):
        # `connection: close`: the rest of the body, if it ever comes, is not read.
        await send_json(send, status, {"error": message}, [(b"connection", b"close")])


# What stays open whatever the token: health, metrics, the API description, and /metadata
# (which shows internal paths only to an authenticated client).
OPEN_PATHS = frozenset(
    {"/", "/livez", "/readyz", "/healthz", "/metrics", "/docs.json", "/metadata"}
)
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
            return bool(client) and client[0] in LOOPBACK_HOSTS
        header = header_values(scope, (b"authorization",)).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token)


class ReadyFirst:
    """ASGI middleware: while no model is served, `paths` (the batched APIs) answer 503 with
    the reason and `Retry-After`, before BentoML's handler runs: from inside a batch the
    reason would reach the client as "An unexpected error has occurred", with a traceback
    logged per request. `not_ready()` gives the reason, None once a model is in."""

    def __init__(self, app, not_ready, paths: tuple[str, ...], retry_after_s: int = 1):
        self.app, self.not_ready, self.paths = app, not_ready, frozenset(paths)
        self.retry_after = str(retry_after_s).encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] in self.paths:
            reason = self.not_ready()
            if reason is not None:
                headers = [(b"retry-after", self.retry_after)]
                return await send_json(send, 503, {"error": reason}, headers)
        return await self.app(scope, receive, send)


class HeavyAdmission:
    """ASGI middleware: admission control for the expensive paths (explanations, uploads),
    before any of their work is done. One client (by address) has at most `per_client` of
    them in flight (429), all clients at most `limit` (503), each refusal with
    `Retry-After`; refusals are counted (`shed`), not traced. The light paths never wait
    behind them: what is admitted then runs `serve.max_heavy_requests` at a time."""

    def __init__(self, app, paths, per_client: int, limit: int, retry_after_s: int = 1):
        self.app, self.paths = app, frozenset(paths)
        self.per_client, self.limit = per_client, limit
        self.retry_after = str(retry_after_s).encode()
        self.in_flight: dict[str, int] = {}
        self.total = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in self.paths:
            return await self.app(scope, receive, send)
        client = (scope.get("client") or ("?",))[0]
        mine = self.in_flight.get(client, 0)
        if mine >= self.per_client or self.total >= self.limit:
            status, setting = (
                (429, "serve.max_heavy_per_client")
                if mine >= self.per_client
                else (503, "serve.max_heavy_waiting")
            )
            shed.note(scope["path"])
            message = f"too many {scope['path']} requests in flight ({setting}): retry later"
            headers = [(b"retry-after", self.retry_after)]
            return await send_json(send, status, {"error": message}, headers)
        self.in_flight[client], self.total = mine + 1, self.total + 1
        try:
            return await self.app(scope, receive, send)
        finally:
            self.total -= 1
            left = self.in_flight[client] - 1
            if left:
                self.in_flight[client] = left
            else:
                del self.in_flight[client]


# The body BentoML's API handler answers a request its batcher shed with (and any other
# 5xx): it names no cause, and comes without `Retry-After`.
BENTOML_5XX_BODY = b'{"error":"An unexpected error has occurred, please check the server log."}'


class BatchAdmission:
    """ASGI middleware: admission control for the batched APIs (`/predict`), before a byte
    of a body is read. It counts the body bytes of this worker's admitted requests not yet
    answered (the declared Content-Length; a chunked body's bytes as they arrive) and
    answers 503 with `Retry-After` when a new request would take them past `limit`
    (`serve.max_predict_bytes_in_flight`). The first request in always passes
    (`serve.max_body_bytes` bounds it).

    Bytes, not requests: one request holds 1 to 1,024 items, and what it costs (parsing,
    the contract, features) grows with its size, which its headers give before any of that
    work; its item count would need the body parsed.

    A request that BentoML's batcher sheds anyway (it expects it to finish later than
    `serve.max_latency_ms`) is answered the same way, not with BentoML's bare 503.
    Both are counted (`overloaded`, `shed_by_batcher`), not traced."""

    def __init__(self, app, paths, limit: int, retry_after_s: int = 1):
        self.app, self.paths, self.limit = app, frozenset(paths), limit
        self.retry_after = [(b"retry-after", str(retry_after_s).encode())]
        self.in_flight = 0  # body bytes admitted and not yet answered

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in self.paths:
            return await self.app(scope, receive, send)
        size = declared_length(scope["headers"])
        if self.in_flight and self.in_flight + (size or 0) > self.limit:
            overloaded.note(scope["path"])
            message = (
                f"overloaded: {self.in_flight} bytes of {scope['path']} bodies in flight "
                "(serve.max_predict_bytes_in_flight): retry later"
            )
            return await send_json(send, 503, {"error": message}, self.retry_after)
        send = self._answering_sheds(scope["path"], send)
        if size is None:
            return await self._counted_as_read(scope, receive, send)
        self.in_flight += size
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= size

    async def _counted_as_read(self, scope, receive, send):
        """Run a request without a declared length, counting its body as it arrives."""
        read = 0

        async def counting_receive():
            nonlocal read
            message = await receive()
            size = len(message.get("body", b""))
            read, self.in_flight = read + size, self.in_flight + size
            return message

        try:
            await self.app(scope, counting_receive, send)
        finally:
            self.in_flight -= read

    def _answering_sheds(self, path: str, send):
        """`send`, except that BentoML's bare 503 becomes a 503 that says why, with
        `Retry-After`: past `ReadyFirst` a model is in, so on these paths that bare 503 is
        the batcher's fallback for a request it shed. Any 503 gets `Retry-After`."""
        held = None  # the start of a 503 without Retry-After, until its body is seen

        async def shed_aware_send(message):
            nonlocal held
            if held is not None:
                start, held = held, None
                if message.get("body") == BENTOML_5XX_BODY and not message.get("more_body"):
                    shed_by_batcher.note(path)
                    error = (
                        f"overloaded: {path} could not be answered within "
                        "serve.max_latency_ms: retry later"
                    )
                    return await send_json(send, 503, {"error": error}, self.retry_after)
                await send({**start, "headers": [*start["headers"], *self.retry_after]})
            elif (
                message["type"] == "http.response.start"
                and message["status"] == 503
                and not any(name == b"retry-after" for name, _ in message["headers"])
            ):
                held = message
                return
            await send(message)

        return shed_aware_send


def declared_length(headers) -> int | None:
    """A request's Content-Length, None without one (a chunked body). A scan, not a dict:
    this runs for every batched request."""
    for name, value in headers:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def header_values(scope, names: tuple[bytes, ...]) -> dict[bytes, bytes]:
    """The request's headers among `names` (a scan, not a copy of them all: every
    middleware asks on every request)."""
    return {name: value for name, value in scope.get("headers") or () if name in names}


_SITE_HEADERS = (b"origin", b"sec-fetch-site", b"host", b"content-type")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
JSON_TYPES = (b"application/json",)


class SameSiteWrites:
    """ASGI middleware: no other site writes through a visitor's browser. A request that
    changes state (any method but GET, HEAD, OPTIONS) is a 403 when the browser says it
    comes from another site or origin (`Sec-Fetch-Site`, `Origin`), unless its origin is
    one of `allowed_origins` (`serve.allowed_origins`); and a 415 when its declared body
    type is not one the endpoint takes (`body_types` by path, JSON elsewhere): a page can
    send `text/plain` or a form anywhere without asking, never JSON. Clients that are not
    browsers send neither header, and may leave the type out."""

    def __init__(self, app, allowed_origins=(), body_types=None):
        self.app = app
        self.allowed = frozenset(o.rstrip("/").encode() for o in allowed_origins)
        self.body_types: dict[str, tuple[bytes, ...]] = dict(body_types or {})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            return await self.app(scope, receive, send)
        headers = header_values(scope, _SITE_HEADERS)
        origin = headers.get(b"origin")
        if origin is not None and origin.rstrip(b"/") in self.allowed:
            pass
        elif headers.get(b"sec-fetch-site") in (b"cross-site", b"same-site") or (
            origin is not None and not _same_origin(origin, headers.get(b"host", b""))
        ):
            message = "refused: a write from another site (serve.allowed_origins lets one in)"
            return await send_json(send, 403, {"error": message})
        declared = headers.get(b"content-type")
        taken = self.body_types.get(scope["path"], JSON_TYPES)
        if declared is not None and declared.split(b";")[0].strip().lower() not in taken:
            wanted = " or ".join(t.decode() for t in taken)
            message = f"{scope['path']} takes {wanted} bodies, not {declared.decode('latin-1')}"
            return await send_json(send, 415, {"error": message})
        return await self.app(scope, receive, send)


def _same_origin(origin: bytes, host: bytes) -> bool:
    """Whether a browser's `Origin` (scheme://host[:port]) names the host it was sent to."""
    return origin.partition(b"://")[2].lower() == host.lower()


class MultipartNeedsBoundary:
    """ASGI middleware: a multipart body declared without its boundary is a 400 (BentoML's
    own API handler would answer 500 for the parser's error)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            kind = header_values(scope, (b"content-type",)).get(b"content-type", b"").lower()
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
            disconnects.note(scope.get("path", "?"))
            return
        finally:
            await self.body_iterator.aclose()  # its `finally` runs now, not at collection
        if self.background is not None:
            await self.background()


class QuietCount:
    """Routine client trouble (a stream's client going away, a body that fails validation)
    as one INFO line per `every_s` seconds saying how many there were, instead of a
    traceback each: a client cannot flood the log or slow the loop with them."""

    def __init__(self, what: str, every_s: float = 10.0):
        self.what, self.every_s, self.count, self.last = what, every_s, 0, 0.0
        self.total = 0  # since the process started (`count` restarts at each line)

    def note(self, path: str) -> None:
        self.count += 1
        self.total += 1
        now = time.monotonic()
        if now - self.last >= self.every_s:
            log.info("%d %s (last on %s)", self.count, self.what, path)
            self.count, self.last = 0, now


disconnects = QuietCount("client(s) disconnected mid-stream")
refusals = QuietCount("request(s) refused: invalid, too large or too slow bodies")
shed = QuietCount("heavy request(s) refused: too many in flight")
overloaded = QuietCount("batched request(s) refused: too many body bytes in flight")
shed_by_batcher = QuietCount("batched request(s) shed by BentoML's batcher (serve.max_latency_ms)")


HANDLER_LOGGER = "bentoml._internal.server.http_app"  # BentoML's API handler logs here


def is_client_error(record: logging.LogRecord) -> bool:
    """Whether `record` is BentoML's API handler logging a request it refused with a 4xx
    (a body that fails validation, or that `BoundedBody` cut off)."""
    if record.name != HANDLER_LOGGER or not record.exc_info:
        return False
    error = record.exc_info[1]
    return isinstance(error, ValidationError | BodyTooLarge | BodyTooSlow) or (
        isinstance(error, BentoMLException) and error.error_code < 500
    )


def is_batcher_shed(record: logging.LogRecord) -> bool:
    """Whether `record` is BentoML's API handler logging a request its adaptive batcher
    shed: the batcher cancels the request's future, and its fallback raises
    `ServiceUnavailable` while handling that `CancelledError`."""
    if record.name != HANDLER_LOGGER or not record.exc_info:
        return False
    error = record.exc_info[1]
    return isinstance(error, ServiceUnavailable) and isinstance(
        error.__context__, asyncio.CancelledError
    )


class QuietClientErrors(logging.Filter):
    """BentoML logs a traceback at ERROR for every request body that fails validation or is
    cut off by `BoundedBody` (a 4xx), counted by `refusals` instead, and for every request
    its batcher sheds under load (a 503), counted by `BatchAdmission`. Server errors are
    logged as they were."""

    def filter(self, record: logging.LogRecord) -> bool:
        if is_client_error(record):
            path = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            refusals.note(str(path))
            return False
        return not is_batcher_shed(record)


def quiet_client_errors() -> None:
    """Install `QuietClientErrors` on the logger of BentoML's API handler (once), and keep
    the tracebacks of what it drops from being formatted at all."""
    quiet_records(is_client_error)
    quiet_records(is_batcher_shed)
    handler_log = logging.getLogger(HANDLER_LOGGER)
    if not any(isinstance(f, QuietClientErrors) for f in handler_log.filters):
        handler_log.addFilter(QuietClientErrors())
