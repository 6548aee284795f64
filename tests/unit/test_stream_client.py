"""The stream client counts answers of any task, and a failing replay says why."""

from __future__ import annotations

import asyncio

import pytest

from loopline.online.stream_client import StreamStats, _count, stream_readings


def test_answers_errors_and_notices_are_told_apart_without_naming_a_task():
    stats = StreamStats()
    for line in (
        {"line": 1, "label": "ok", "model_version": "3"},
        {"line": 2, "error": "bad"},
        {"line": 3, "notice": "gap"},
        {"line": 4, "id": "a", "value": 1.0},
    ):
        _count(stats, line)
    assert (stats.lines, stats.answers, stats.errors) == (4, 2, 1)
    assert stats.versions == ["3"] and stats.answers == 2


def test_a_replay_that_fails_ends_the_stream_with_its_own_error():
    async def silent(reader, writer):  # a service that reads and never answers
        while await reader.read(65536):
            pass
        writer.close()

    def readings():
        yield {"n": 1}
        raise ValueError("the source broke at row 2")

    async def scenario():
        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            await stream_readings(f"http://127.0.0.1:{port}", readings(), print, timeout_s=5)
        finally:
            server.close()

    with pytest.raises(ValueError, match="the source broke at row 2"):
        asyncio.run(scenario())
