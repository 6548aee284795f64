"""A full-duplex NDJSON client for the service's `/stream`: send readings, read answers.

HTTP clients such as httpx upload the whole request body before they read the response, so a
live stream would see no answer until it ended. This client speaks HTTP/1.1 through h11's
protocol state machine over an asyncio connection: one task writes chunked readings at a
given rate while another reads answer lines as they arrive.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from loopline.errors import LooplineError


class StreamFailed(LooplineError):
    """The service refused the stream or the connection broke."""


@dataclass
class StreamStats:
    sent: int = 0
    lines: int = 0  # every answer line: answers, errors and notices
    answers: int = 0  # lines that answer a reading (neither an error nor a notice)
    errors: int = 0
    versions: list[str] = field(default_factory=list)  # model version of each answer, if told


def parse_rate(text: str) -> float:
    """'20/s', '5/min' or '20' → readings per second (0 = as fast as possible)."""
    value, _, unit = text.partition("/")
    per = {"": 1.0, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0}.get(unit.strip())
    try:
        rate = float(value)
    except ValueError:
        rate = -1
    if per is None or rate < 0:
        raise ValueError(f"rate {text!r} must look like 20/s, 300/min or 0 (no limit)")
    return rate / per


# Lines per HTTP chunk when sending as fast as possible: a chunk per line is an HTTP frame
# to write and to parse per reading (15 µs of CPU per reading on both ends, against 4).
LINES_PER_CHUNK = 64


async def _paced(readings: Iterable[dict[str, Any]], rate: float) -> AsyncIterator[list[bytes]]:
    """The readings as NDJSON lines, in chunks: one line each at `rate` per second, else
    (0) `LINES_PER_CHUNK` lines each."""
    lines = ((json.dumps(reading, default=str) + "\n").encode() for reading in readings)
    if rate <= 0:
        while chunk := list(itertools.islice(lines, LINES_PER_CHUNK)):
            yield chunk
        return
    start = time.monotonic()
    for n, line in enumerate(lines):
        delay = start + n / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        yield [line]


async def stream_readings(
    url: str,
    readings: Iterable[dict[str, Any]],
    on_answer: Callable[[dict[str, Any]], None],
    rate: float = 0.0,
    timeout_s: float = 60.0,
) -> StreamStats:
    """POST `readings` as NDJSON to `<url>/stream`, calling `on_answer` per answer line."""
    import h11

    parts = urlsplit(url.rstrip("/") + "/stream")
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, TimeoutError) as error:
        raise StreamFailed(f"cannot connect to {host}:{port}: {error}") from None
    connection = h11.Connection(h11.CLIENT)
    stats = StreamStats()

    def send(event) -> None:
        data = connection.send(event)
        if data:
            writer.write(data)

    send(
        h11.Request(
            method="POST",
            target=parts.path,
            headers=[
                ("Host", f"{host}:{port}"),
                ("Content-Type", "application/x-ndjson"),
                ("Transfer-Encoding", "chunked"),
                ("Accept", "application/x-ndjson"),
            ],
        )
    )

    async def upload() -> None:
        try:
            async for lines in _paced(readings, rate):
                send(h11.Data(data=b"".join(lines)))
                await writer.drain()
                stats.sent += len(lines)
        except Exception:
            writer.close()  # the readings failed: end the exchange, and say why below
            raise
        send(h11.EndOfMessage())
        await writer.drain()

    async def download() -> None:
        pending = b""
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                data = await asyncio.wait_for(reader.read(65536), timeout_s)
                connection.receive_data(data)
                continue
            if isinstance(event, h11.Response) and event.status_code != 200:
                status, body = event.status_code, b""
                while not isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    event = connection.next_event()
                    if event is h11.NEED_DATA:
                        connection.receive_data(await reader.read(65536))
                    elif isinstance(event, h11.Data):
                        body += event.data
                raise StreamFailed(f"service answered {status}: {body.decode(errors='replace')}")
            elif isinstance(event, h11.Data):
                pending += event.data
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        answer = json.loads(line)
                        _count(stats, answer)
                        on_answer(answer)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return

    uploader = asyncio.create_task(upload())
    try:
        await download()
        await uploader
    except (h11.RemoteProtocolError, OSError) as error:
        if uploader.done() and not uploader.cancelled() and uploader.exception() is not None:
            raise uploader.exception() from None
        raise StreamFailed(f"protocol error: {error}") from None
    finally:
        uploader.cancel()
        writer.close()
    return stats


def is_answer(line: dict[str, Any]) -> bool:
    """An answer line of `/stream`: the task's `Response` fields, not an error or notice."""
    return "error" not in line and "notice" not in line


def _count(stats: StreamStats, answer: dict[str, Any]) -> None:
    stats.lines += 1
    if "error" in answer:
        stats.errors += 1
    elif is_answer(answer):
        stats.answers += 1
        if "model_version" in answer:
            stats.versions.append(str(answer["model_version"]))
