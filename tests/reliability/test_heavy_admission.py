"""Admission control of the heavy paths (issue 25, item 3): one client cannot hold more
than its share of explanations and uploads in flight, nor all clients more than the bound;
refusals come before any work, with Retry-After, counted rather than traced. The light
paths pass untouched."""

from __future__ import annotations

import asyncio
import json

from serving.asgi import HeavyAdmission, shed


class SlowApp:
    """An ASGI app that answers 200 after `release` is set (work in flight meanwhile)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = 0

    async def __call__(self, scope, receive, send):
        self.started += 1
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


async def call(app, path: str, client: str) -> tuple[int, dict, dict]:
    scope = {"type": "http", "method": "POST", "path": path, "client": (client, 1), "headers": []}
    sent: dict = {}

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            sent["status"], sent["headers"] = message["status"], dict(message["headers"])
        else:
            sent["body"] = json.loads(message.get("body") or b"{}")

    await app(scope, receive, send)
    return sent["status"], sent["headers"], sent["body"]


def test_a_client_past_its_share_gets_429_and_all_past_the_bound_503():
    async def scenario():
        inner = SlowApp()
        app = HeavyAdmission(inner, paths={"/explain"}, per_client=2, limit=3)
        before = shed.total
        taken = [asyncio.create_task(call(app, "/explain", "10.0.0.1")) for _ in range(2)]
        await asyncio.sleep(0.01)
        over_share = await call(app, "/explain", "10.0.0.1")
        third = asyncio.create_task(call(app, "/explain", "10.0.0.2"))
        await asyncio.sleep(0.01)
        over_bound = await call(app, "/explain", "10.0.0.3")
        light = asyncio.create_task(call(app, "/predict", "10.0.0.1"))  # never held back
        await asyncio.sleep(0.01)
        assert inner.started == 4  # two of .1, one of .2, the light one: no refused work
        inner.release.set()
        done = await asyncio.gather(*taken, third, light)
        again = await call(app, "/explain", "10.0.0.1")  # its slots are back
        return over_share, over_bound, done, again, shed.total - before, app

    over_share, over_bound, done, again, counted, app = asyncio.run(scenario())
    assert over_share[0] == 429 and over_share[1][b"retry-after"] == b"1"
    assert "serve.max_heavy_per_client" in over_share[2]["error"]
    assert over_bound[0] == 503 and "serve.max_heavy_waiting" in over_bound[2]["error"]
    assert [d[0] for d in done] == [200, 200, 200, 200] and again[0] == 200
    assert counted == 2
    assert app.in_flight == {} and app.total == 0
