"""What a shadow challenger costs `/predict`: p99 latency with and without one, side by side.

Run: .venv/bin/python benchmarks/shadow.py [--seconds 20] [--json PATH]
(about three minutes on 2 cores).

One `loopline serve` process (one worker, one onnxruntime thread) serves a small GRU
forecaster (v2); v1, another seed of the same size, is the challenger. Clients post one
48-reading window per request from 1 and 16 threads for `--seconds` each, in three phases
in one run: no deployment, v1 in shadow (every request mirrored to it on the service's
mirror thread, its answers logged, not returned), and no deployment again; the baseline is
the better of the two plain phases. Target (issue 18): shadow adds at most 10% to the p99
at concurrency 1 and 16. Nothing else should run meanwhile.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from loopline.health import free_port  # noqa: E402
from loopline.paths import ProjectPaths  # noqa: E402
from loopline.watch import deploy  # noqa: E402
from tests.conftest import TINY, write_project  # noqa: E402
from tests.serving.conftest import publish_tiny_model, raw_readings, serve_process  # noqa: E402
from tests.ui.conftest import clean_environment  # noqa: E402

BIN = Path(sys.executable).parent


def drive(url: str, body: dict, concurrency: int, seconds: float) -> list[float]:
    """Latencies (ms) of `concurrency` threads posting `body` for `seconds`."""
    latencies: list[float] = []
    failures: list[int] = []
    stop = time.monotonic() + seconds

    def worker() -> None:
        with httpx.Client(timeout=30) as client:
            while time.monotonic() < stop:
                started = time.perf_counter()
                answer = client.post(f"{url}/predict", json=body)
                latencies.append((time.perf_counter() - started) * 1000)
                if answer.status_code != 200:
                    failures.append(answer.status_code)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, f"{len(failures)} failed requests: {failures[:5]}"
    return latencies


def phase(url: str, body: dict, seconds: float) -> dict[int, dict[str, float]]:
    out = {}
    for concurrency in (1, 16):
        drive(url, body, concurrency, 2.0)  # warm
        found = drive(url, body, concurrency, seconds)
        out[concurrency] = {
            "requests": len(found),
            "p50_ms": float(np.percentile(found, 50)),
            "p99_ms": float(np.percentile(found, 99)),
        }
    return out


def wait_deployment(url: str, present: bool) -> None:
    deadline = time.monotonic() + 60
    while (httpx.get(f"{url}/metadata").json().get("deployment") is not None) != present:
        assert time.monotonic() < deadline, "the service did not follow the deployment"
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    readings = [
        {k: v for k, v in r.items() if k != "site_id"} for r in raw_readings("2021-02-01", 48)
    ]
    body = {"windows": [{"site_id": "greensboro", "readings": readings}]}
    with tempfile.TemporaryDirectory(prefix="loopline-bench-shadow-") as scratch:
        root = write_project(Path(scratch) / "proj", {**TINY, "serve": {"poll_interval_s": 0.5}})
        publish_tiny_model(root, seed=1, hidden=16)
        publish_tiny_model(root, seed=2, hidden=16)
        uri = ProjectPaths.at(root).tracking_uri()
        port = free_port()
        command = [str(BIN / "loopline"), "serve", "--host", "127.0.0.1", "--port", str(port)]
        url = f"http://127.0.0.1:{port}"
        with serve_process(command, root, root / "serve.log", url, clean_environment(root)):
            before = phase(url, body, args.seconds)
            made = deploy.start(uri, "solar", "1", "shadow", reason="benchmark")
            wait_deployment(url, True)
            shadow = phase(url, body, args.seconds)
            deploy.end(uri, "solar", made.id, "ended", "benchmark done", {})
            wait_deployment(url, False)
            after = phase(url, body, args.seconds)
            metrics = httpx.get(f"{url}/metrics").text
    dropped = [line for line in metrics.splitlines() if line.startswith("loopline_mirrors_dropped")]
    print(f"\n/predict, one 48-reading window per request, {args.seconds:g} s per row, 2 cores:")
    head = f"{'conc':>5} {'plain p99':>10} {'shadow p99':>11} {'ratio':>6} {'target':>7}"
    print(f"{head}  (p50 plain/shadow)")
    result = {"before": before, "shadow": shadow, "after": after, "mirrors_dropped": dropped}
    for concurrency in (1, 16):
        base = min(before[concurrency]["p99_ms"], after[concurrency]["p99_ms"])
        ratio = shadow[concurrency]["p99_ms"] / base
        verdict = "PASS" if ratio <= 1.10 else "MISS"
        result[f"ratio_{concurrency}"] = ratio
        plain_p50 = min(before[concurrency]["p50_ms"], after[concurrency]["p50_ms"])
        mirrored = shadow[concurrency]
        print(
            f"{concurrency:>5} {base:>9.2f}ms {mirrored['p99_ms']:>9.2f}ms "
            f"{ratio:>6.2f} {verdict:>7}  ({plain_p50:.2f} / {mirrored['p50_ms']:.2f} ms)"
        )
    print(f"mirrored items dropped: {dropped or 'none'}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
