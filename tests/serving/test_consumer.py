"""`loopline consume` on a real Redis: one answer per message, malformed ones dead-lettered
once, and exactly once through `kill -9`s (issue 18's consumer acceptance).

The Redis URL is `LOOPLINE_TEST_REDIS_URL` (`.ci/run` sets it; the tests skip without it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.ui.conftest import clean_environment

REDIS = os.environ.get("LOOPLINE_TEST_REDIS_URL")
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.skipif(
    not REDIS,
    reason="LOOPLINE_TEST_REDIS_URL is not set: no Redis to consume from (.ci/run sets it)",
)


def readings(count: int) -> list[dict]:
    """`count` hourly readings of one site: the builtin year, repeated a year apart and
    ending with the builtin year itself (times keep increasing, so every reading is new to
    the series, and none is in the future, which the data contract refuses)."""
    from loopline.params import parse_params
    from loopline.tasks import get_task
    from tests.conftest import TINY

    year = get_task("solar").load_builtin(parse_params(TINY))
    blocks = []
    years = count // len(year) + 1
    for n in range(years):
        block = year.copy()
        block["timestamp"] = block["timestamp"] - pd.Timedelta(days=365 * (years - 1 - n))
        blocks.append(block)
    frame = pd.concat(blocks, ignore_index=True).head(count)
    frame["timestamp"] = frame["timestamp"].map(lambda t: t.isoformat())
    return frame.to_dict("records")


@pytest.fixture
def consumed(registry_template, tmp_path):
    """(project root, stream name, Redis client): a copy of the served project whose
    `consume:` section names a fresh stream; the stream's keys are deleted after."""
    import redis

    root = tmp_path / "proj"
    shutil.copytree(registry_template, root)
    stream = f"test-readings-{uuid.uuid4().hex[:8]}"
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["consume"] = {"url": REDIS, "stream": stream, "batch": 500, "block_ms": 200}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    client = redis.Redis.from_url(REDIS)
    yield root, stream, client
    client.delete(stream, f"{stream}:answers", f"{stream}:dead")


def send(client, stream: str, lines: list[bytes]) -> list[str]:
    ids = []
    for first in range(0, len(lines), 5000):
        pipe = client.pipeline(transaction=False)
        for line in lines[first : first + 5000]:
            pipe.xadd(stream, {"data": line})
        ids += [i.decode() for i in pipe.execute()]
    return ids


def consumer(root: Path, name: str, *more: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "loopline"), "consume", "--name", name, *more],
        cwd=root,
        env=clean_environment(root),
        stdout=subprocess.PIPE,
        stderr=open(root / f"consume-{name}.log", "ab"),
    )


def answers(client, stream: str) -> list[tuple[str, dict]]:
    return [
        (fields[b"in_reply_to"].decode(), json.loads(fields[b"data"]))
        for _, fields in client.xrange(f"{stream}:answers")
    ]


def logged(root: Path) -> pd.DataFrame:
    from sqlalchemy import create_engine

    from loopline.params import load_params
    from loopline.paths import ProjectPaths

    paths = ProjectPaths.at(root)
    engine = create_engine(paths.prediction_log_url(load_params(paths.params_file)))
    try:
        return pd.read_sql("SELECT api, key, origin FROM predictions WHERE api = 'consume'", engine)
    finally:
        engine.dispose()


def test_each_message_is_answered_once_and_a_malformed_one_is_dead_lettered(consumed):
    root, stream, client = consumed
    good = [json.dumps(r).encode() for r in readings(60)]
    bad = [b"{not json", json.dumps({"site_id": "greensboro"}).encode()]
    ids = send(client, stream, good[:30] + bad + good[30:])
    done = consumer(root, "solo", "--idle-exit", "2")
    out, _ = done.communicate(timeout=300)
    assert done.returncode == 0, (root / "consume-solo.log").read_text()[-3000:]
    counts = json.loads(out.decode().strip().splitlines()[-1])
    assert counts["messages"] == 62 and counts["dead"] == 2
    replies = answers(client, stream)
    assert sorted(i for i, _ in replies) == sorted(ids[:30] + ids[32:])
    forecasts = [a for _, a in replies if "forecast" in a]
    assert len(forecasts) == 60 - 48 + 1  # a window needs 48 consecutive readings
    dead = client.xrange(f"{stream}:dead")
    assert [f[b"in_reply_to"].decode() for _, f in dead] == ids[30:32]
    assert "json" in json.loads(dead[0][1][b"data"])["error"].lower()
    assert "timestamp" in json.loads(dead[1][1][b"data"])["error"]
    assert len(logged(root)) == len(forecasts)
    pending = client.xpending(stream, "loopline")
    assert pending["pending"] == 0


@pytest.mark.e2e
def test_kill_9_twice_loses_and_duplicates_nothing(consumed):
    root, stream, client = consumed
    total = int(os.environ.get("LOOPLINE_TEST_CONSUME_READINGS", 100_000))
    ids = send(client, stream, [json.dumps(r).encode() for r in readings(total)])
    for share in (0.3, 0.6):  # killed mid-way twice, restarted under the same name
        running = consumer(root, "c1")
        deadline = time.monotonic() + 600
        while client.xlen(f"{stream}:answers") < share * total:
            assert running.poll() is None, (root / "consume-c1.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the consumer fell far behind"
            time.sleep(0.2)
        running.send_signal(signal.SIGKILL)
        running.wait()
    final = consumer(root, "c1", "--idle-exit", "3")
    final.communicate(timeout=900)
    assert final.returncode == 0, (root / "consume-c1.log").read_text()[-3000:]

    replies = answers(client, stream)
    replied = [i for i, _ in replies]
    assert len(replied) == len(set(replied)) == total  # 0 duplicated
    assert set(replied) == set(ids)  # 0 lost
    forecasts = [a for _, a in replies if "forecast" in a]
    others = [a for _, a in replies if "forecast" not in a]
    kinds = Counter(
        next((k for k in ("error", "notice", "buffered") if k in a), "?") for a in others
    )
    # the state survived the kills (refilled): no window restarted
    assert len(forecasts) == total - 48 + 1, (kinds, others[47:50])
    log = logged(root)
    assert len(log) == len(forecasts)
    assert not log.duplicated(["key", "origin"]).any()
    assert client.xpending(stream, "loopline")["pending"] == 0


@contextlib.contextmanager
def own_redis(folder: Path, port: int):
    """A Redis server of this test's own (append-only file in `folder`, so a restart keeps
    the streams), stopped on exit."""
    import redis

    command = [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--dir",
        str(folder),
    ]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.1)
    try:
        yield server
    finally:
        server.terminate()
        server.wait(10)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server to restart")
def test_a_redis_restart_mid_stream_loses_and_duplicates_nothing(consumed, tmp_path):
    import redis

    from loopline.health import free_port

    root, stream, _ = consumed
    port = free_port()
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["consume"]["url"] = f"redis://127.0.0.1:{port}/0"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    client = redis.Redis(port=port)
    total = 5000
    with own_redis(tmp_path, port):
        ids = send(client, stream, [json.dumps(r).encode() for r in readings(total)])
        running = consumer(root, "c1", "--idle-exit", "5")
        deadline = time.monotonic() + 300
        while client.xlen(f"{stream}:answers") < total // 3:
            assert running.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
    time.sleep(2.0)  # the consumer meets a closed port, and backs off
    with own_redis(tmp_path, port):
        running.communicate(timeout=600)
        assert running.returncode == 0, (root / "consume-c1.log").read_text()[-3000:]
        replied = [i for i, _ in answers(client, stream)]
    assert len(replied) == len(set(replied)) == total and set(replied) == set(ids)
    assert "the broker is away" in (root / "consume-c1.log").read_text()
