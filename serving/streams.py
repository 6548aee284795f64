"""`/stream`'s NDJSON: lines read as they arrive, answered chunk by chunk, in line order."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from loopline.online.adapter import (
    Answer,
    BadInput,
    Refused,
    Serving,
    StreamState,
    describe_validation,
)
from loopline.online.models import LoadedModel
from loopline.online.predlog import json_line
from serving.bodies import describe_nonfinite, may_hold_nonfinite


class LineTimeout(Exception):
    """A line was begun and not finished within the line timeout."""


async def ndjson_batches(request, max_line_bytes: int, line_timeout_s: float | None = None):
    """The request body's NDJSON lines as they arrive: one list of (line number, bytes) per
    chunk. A line longer than `max_line_bytes` comes once, as (its line number, None), and
    the rest of it is skipped: one bad line never ends a stream nor shifts the numbers of
    the lines after it. A line begun and left unfinished for `line_timeout_s` raises
    LineTimeout (a client between lines may wait as long as it likes)."""
    chunks = request.stream().__aiter__()
    pending, line_no, skipping = b"", 0, False
    while True:
        partial = bool(pending) or skipping
        try:
            chunk = await asyncio.wait_for(anext(chunks), line_timeout_s if partial else None)
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise LineTimeout(line_no + 1) from None
        batch: list[tuple[int, bytes | None]] = []
        *ends, rest = chunk.split(b"\n")
        for piece in ends:
            if skipping:  # the end of the over-long line, already answered
                skipping = False
                continue
            line, pending = pending + piece, b""
            line_no += 1
            batch.append((line_no, line if len(line) <= max_line_bytes else None))
        if not skipping:
            pending += rest
            if len(pending) > max_line_bytes:
                line_no += 1
                batch.append((line_no, None))
                pending, skipping = b"", True
        if batch:
            yield batch
    if pending.strip() and not skipping:
        yield [(line_no + 1, pending)]


def ndjson(payloads: list[dict[str, Any]]) -> bytes:
    """NDJSON lines (orjson: the stdlib encoder cost a tenth of a bulk stream's CPU)."""
    return b"".join(map(json_line, payloads))


Answering = Callable[[str, LoadedModel, list[Any], Callable], list[Answer]]


class StreamAnswers:
    """The answers of one stream connection, chunk by chunk. Each line is parsed as the
    task's `StreamLine` (a non-finite number refused as `/predict` refuses it) and pushed
    into the connection's `StreamState`; each item the state hands on passes the task's
    `check` as a `/predict` item does (where it is of a kind `/predict` takes or the line
    itself: items a state assembles, say a run of readings per key, it checks as it builds
    them). A refused line gets its error line; the stream goes on."""

    def __init__(
        self,
        state: StreamState,
        answer: Answering,
        max_line_bytes: int,
        metrics: dict[str, Any],
    ) -> None:
        serving = state.serving
        self.state, self.answer, self.serving = state, answer, serving
        self.line_type = type(serving).StreamLine
        self.max_line_bytes, self.errors = max_line_bytes, metrics["stream_errors"]
        kinds = [type(serving).Request, type(serving).ColumnarRequest, self.line_type]
        self.checked_kinds = tuple(k for k in kinds if k is not None)
        self.checks = type(serving).check is not Serving.check

    def chunk(self, model: LoadedModel, batch: list[tuple[int, bytes | None]]) -> bytes:
        """The answer lines for one chunk of input lines, in line order (what a line
        made ready is answered after that line's own events). Every line is parsed before
        the state takes the parsed ones: a line that does not parse changes no state."""
        out: list[tuple[int, int, dict[str, Any]]] = []
        parsed: list[tuple[int, Any]] = []
        for line, raw in batch:
            if raw is None:
                message = f"line longer than {self.max_line_bytes} bytes (serve.max_line_bytes)"
                self._refused(out, line, message, "too_long")
                continue
            if not raw.strip():
                continue
            item = self._parsed(out, line, raw)
            if item is not None:
                parsed.append((line, item))
        ready: list[tuple[int, Any]] = []
        for (line, _), (items, events) in zip(parsed, self.state.push_many(parsed), strict=True):
            for event in events:
                out.append((line, 0, {"line": line, **event}))
                if "error" in event:
                    self.errors.labels("rejected").inc()
            ready += [(n, self._checked(model, found)) for n, found in items]
        if ready:
            self._answered(out, model, ready)
        out.sort(key=lambda a: (a[0], a[1]))
        return ndjson([payload for _, _, payload in out])

    def _parsed(self, out: list, line: int, raw: bytes) -> Any:
        """The line as a `StreamLine`, or None after its error line."""
        try:
            item = self.line_type.model_validate_json(raw)
        except ValidationError as error:
            self._refused(out, line, describe_validation(error), "malformed")
            return None
        if may_hold_nonfinite(raw):
            problem = describe_nonfinite(raw)
            if problem:
                self._refused(out, line, problem, "malformed")
                return None
        return item

    def _checked(self, model: LoadedModel, item: Any) -> Any:
        """`item`, or `Refused` with why the task's `check` refuses it for `model`."""
        if not self.checks or not isinstance(item, self.checked_kinds):
            return item
        try:
            self.serving.check(item, model)
        except BadInput as error:
            return Refused(Answer({"error": str(error)}, error=True))
        return item

    def _answered(self, out: list, model: LoadedModel, ready: list[tuple[int, Any]]) -> None:
        items = [item for _, item in ready]
        try:
            found = self.answer("stream", model, items, self.serving.predict)
            replies = [(a.response, a.error) for a in found]
        except BadInput as error:  # the batch as a whole: each of its lines says so
            replies = [({"error": str(error)}, True)] * len(ready)
        for (line, _), (response, error) in zip(ready, replies, strict=True):
            out.append((line, 1, {"line": line, **response}))
            if error:
                self.errors.labels("bad_input").inc()

    def _refused(self, out: list, line: int, message: str, kind: str) -> None:
        out.append((line, 0, {"line": line, "error": message}))
        self.errors.labels(kind).inc()
