"""The service for real: the Docker image's start command, outside Docker, on loopback.

A client streams readings continuously while operators run `loopline rollback` and
`loopline promote`: no request fails, and the version in the answers follows the alias
within the poll interval.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from loopline.health import free_port
from tests.serving.conftest import SITE, raw_readings, serve_process
from tests.serving.test_packaging import docker_cmd

BIN = Path(sys.executable).parent
POLL_S = 1.0


@pytest.fixture
def live_service(served_project):
    """`loopline serve` started with the image's CMD, host set to loopback."""
    command = docker_cmd()
    port = free_port()
    command[command.index("--host") + 1] = "127.0.0.1"
    command[command.index("--port") + 1] = str(port)
    command[0] = str(BIN / command[0])
    command += ["--poll-interval", str(POLL_S)]
    url = f"http://127.0.0.1:{port}"
    with serve_process(command, served_project, served_project / "serve.log", url):
        yield url


def cli(project: Path, *args: str) -> float:
    """Run a `loopline` command; returns the time it finished."""
    done = subprocess.run(
        [str(BIN / "loopline"), *args], cwd=project, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return time.monotonic()


def test_streaming_through_rollback_and_promote(live_service, served_project):
    from loopline.online.stream_client import stream_readings

    # At 40 readings/s the stream runs until a few polls after the promote, however long the two
    # CLI moves take on a busy machine (up to 120 days of readings).
    readings = raw_readings("2021-03-01", 24 * 120)
    sent: list[dict] = []
    answers: list[tuple[float, dict]] = []
    predict_failures: list[str] = []
    stop_streaming = threading.Event()
    stop = threading.Event()

    def until_stopped():
        for reading in readings:
            if stop_streaming.is_set():
                return
            sent.append(reading)
            yield reading

    def stream() -> None:
        def on_answer(answer: dict) -> None:
            answers.append((time.monotonic(), answer))

        asyncio.run(stream_readings(live_service, until_stopped(), on_answer, rate=40))

    def predict_loop() -> None:
        window = [{k: v for k, v in r.items() if k != "site_id"} for r in readings[:48]]
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                response = client.post(
                    f"{live_service}/predict",
                    json={"windows": [{"site_id": SITE, "readings": window}]},
                )
                if response.status_code != 200:
                    predict_failures.append(response.text)
                time.sleep(0.05)

    streamer = threading.Thread(target=stream)
    predictor = threading.Thread(target=predict_loop)
    streamer.start()
    predictor.start()
    time.sleep(3)
    rolled_back = cli(served_project, "rollback", "solar", "--reason", "live test")
    time.sleep(3)
    promoted = cli(served_project, "promote", "solar", "2", "--reason", "live test")
    time.sleep(POLL_S + 4.0)
    stop_streaming.set()
    streamer.join(120)
    stop.set()
    predictor.join(30)

    assert len(sent) < len(readings), "the stream ran out before the promote was seen"
    assert not predict_failures
    errors = [a for _, a in answers if "error" in a]
    assert not errors
    forecasts = [(t, a["model_version"]) for t, a in answers if "forecast" in a]
    assert len(forecasts) == len(sent) - 48 + 1  # every complete window answered
    versions = [v for _, v in forecasts]
    # 2 → 1 → 2, in that order, each change within the poll interval (plus the swap).
    changes = [versions[0]] + [b for a, b in itertools.pairwise(versions) if a != b]
    assert changes == ["2", "1", "2"], changes
    first_v1 = next(t for t, v in forecasts if v == "1")
    back_to_v2 = next(t for t, v in forecasts if t > first_v1 and v == "2")
    assert first_v1 - rolled_back <= POLL_S + 2.0
    assert back_to_v2 - promoted <= POLL_S + 2.0

    metrics = httpx.get(f"{live_service}/metrics").text
    assert "loopline_model_version" in metrics and "loopline_predictions_total" in metrics
    assert "bentoml_service_request_total" in metrics


def test_loopline_stream_replays_held_out_data_with_live_forecasts(live_service, served_project):
    done = subprocess.run(
        [str(BIN / "loopline"), "stream", "--url", live_service, "--rate", "0", "--limit", "60"],
        cwd=served_project,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    forecasts = [line for line in done.stdout.splitlines() if line.startswith(SITE)]
    # 60 readings, of which the first 48 fill the window: 13 forecasts, all from v2
    assert len(forecasts) == 13 and all(" v2 " in line for line in forecasts), done.stdout
    assert "sent 60 readings · 13 forecasts · 0 errors · model versions 2" in done.stderr
