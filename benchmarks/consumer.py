"""`loopline consume` (a Redis stream) beside `/stream` (HTTP), on the same readings.

Run: .venv/bin/python benchmarks/consumer.py [--readings 50000] [--redis URL] [--json PATH]
(about two minutes on 2 cores; Redis at 127.0.0.1:6379 by default, database 15).

One project with a small seeded GRU forecaster as champion. The same hourly readings of one
site (the builtin year, repeated a year later each time) go (a) into a Redis stream, all
at once, then `loopline consume` answers them (one answer per message in the output
stream, every prediction and reading committed to the SQLite prediction log before its
acknowledgement); its rate is readings over the span between its first and last answer
(read from the answers' stream ids, which are Redis's clock in ms); and (b) to
`loopline serve`'s `/stream` in one request without pacing (`loopline stream`'s client),
its rate readings over the time to the last answer line. Both store the readings as live
inputs (`serve.store_inputs`). Nothing else should run meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from loopline.health import free_port  # noqa: E402
from tests.conftest import TINY, write_project  # noqa: E402
from tests.serving.conftest import publish_tiny_model, serve_process  # noqa: E402
from tests.serving.test_consumer import readings, send  # noqa: E402
from tests.ui.conftest import clean_environment  # noqa: E402

BIN = Path(sys.executable).parent


def project(folder: Path, redis_url: str, stream: str) -> Path:
    params = {**TINY, "consume": {"url": redis_url, "stream": stream, "batch": 500}}
    root = write_project(folder, params)
    publish_tiny_model(root, seed=1)
    return root


def consume_rate(root: Path, client, stream: str, lines: list[bytes]) -> dict:
    send(client, stream, lines)
    started = time.perf_counter()
    done = subprocess.run(
        [str(BIN / "loopline"), "consume", "--name", "bench", "--idle-exit", "2"],
        cwd=root,
        env=clean_environment(root),
        capture_output=True,
        check=True,
    )
    wall = time.perf_counter() - started
    first = client.xrange(f"{stream}:answers", count=1)[0][0]
    last = client.xrevrange(f"{stream}:answers", count=1)[0][0]
    span_s = (int(last.split(b"-")[0]) - int(first.split(b"-")[0])) / 1000
    counts = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return {
        "readings": len(lines),
        "span_s": span_s,
        "per_s": len(lines) / span_s,
        "process_wall_s": wall,
        "counts": counts,
    }


def stream_rate(root: Path, rows: list[dict]) -> dict:
    from loopline.online.stream_client import stream_readings

    port = free_port()
    command = [str(BIN / "loopline"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with serve_process(command, root, root / "serve.log", url, clean_environment(root)):
        answered: list[dict] = []
        started = time.perf_counter()
        asyncio.run(stream_readings(url, rows, answered.append, rate=0))
        seconds = time.perf_counter() - started
    return {"readings": len(rows), "seconds": seconds, "per_s": len(rows) / seconds}


def main() -> None:
    import redis

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--readings", type=int, default=50_000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    client = redis.Redis.from_url(args.redis)
    stream = f"bench-{uuid.uuid4().hex[:8]}"
    rows = readings(args.readings)
    try:
        with tempfile.TemporaryDirectory(prefix="loopline-bench-consume-") as scratch:
            consumed = consume_rate(
                project(Path(scratch) / "a", args.redis, stream),
                client,
                stream,
                [json.dumps(r).encode() for r in rows],
            )
            streamed = stream_rate(project(Path(scratch) / "b", args.redis, stream), rows)
    finally:
        client.delete(stream, f"{stream}:answers", f"{stream}:dead")
    print(f"\n{args.readings:,} readings, one site, one worker each, 2 cores:")
    print(
        f"  loopline consume (Redis): {consumed['per_s']:8,.0f} readings/s "
        f"({consumed['span_s']:.1f} s first to last answer; "
        f"process {consumed['process_wall_s']:.1f} s with start-up)"
    )
    print(
        f"  /stream (HTTP, bulk):     {streamed['per_s']:8,.0f} readings/s "
        f"({streamed['seconds']:.1f} s)"
    )
    print(f"  ratio consume / stream:   {consumed['per_s'] / streamed['per_s']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"consume": consumed, "stream": streamed}, indent=1))


if __name__ == "__main__":
    main()
