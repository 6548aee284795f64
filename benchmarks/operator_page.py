"""The operator page's load time with 100,000 rows in the prediction log, beside an empty log.

Run: .venv/bin/python benchmarks/operator_page.py [--rows 100000] [--loads 7] [--json PATH]
(about two minutes on 2 cores; needs Debian's chromium: `make browser`).

Two projects, each with the same two registered forecasters (v2 the champion, two moves in
the history) and the same 2,000 monitor windows; one prediction log holds `--rows`
forecasts of two sites (one an hour each, with the readings the service stored, so the
live picture joins forecasts to measured power), the other none. A `loopline ui` process
serves each. Headless Chromium opens each page `--loads` times, in turn, with a fresh
profile each time, and the load time is from navigation until every panel has drawn its
facts (the Now, Live, Health and History panels out of "loading", the live and health
pictures drawn, the latest predictions listed). Also printed: each panel's JSON answer
time (median of 10, httpx), to show where the time goes. Target: under 1 s with 100,000
rows. Nothing else should run meanwhile: the browser, the page's server and this script
share the 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from loopline.health import free_port, wait_until_ok  # noqa: E402
from tests.conftest import TINY, write_project  # noqa: E402
from tests.serving.conftest import publish_tiny_model  # noqa: E402
from tests.ui.conftest import CHROMIUM, CHROMIUM_FLAGS, monitored_day  # noqa: E402

BIN = Path(sys.executable).parent
PANELS = ("#now .body", "#live .body", "#health .body", "#history .body")
DRAWN = ("#live-chart .uplot", "#health-chart .uplot", "#predictions tbody tr")


def project(folder: Path) -> Path:
    root = write_project(folder, TINY)
    publish_tiny_model(root, seed=1)
    publish_tiny_model(root, seed=2)
    return root


def log_url(root: Path) -> str:
    from loopline.params import load_params
    from loopline.paths import ProjectPaths

    paths = ProjectPaths.at(root)
    return paths.prediction_log_url(load_params(paths.params_file))


def fill_log(root: Path, rows: int, seed: int = 0) -> None:
    """`rows` hourly forecasts of two sites, each with its newest reading, and the readings
    stored as live inputs (what a service answering every hour writes)."""
    from sqlalchemy import MetaData, create_engine

    from loopline.online.live import live_inputs_table
    from loopline.online.predlog import json_text, predictions_table

    rng = np.random.default_rng(seed)
    engine = create_engine(log_url(root), json_serializer=json_text)
    metadata = MetaData()
    predictions, inputs = predictions_table(metadata), live_inputs_table(metadata)
    metadata.create_all(engine)
    start = datetime(2015, 1, 1, tzinfo=UTC)
    chunk = 10_000
    with engine.begin() as connection:
        for first in range(0, rows, chunk):
            batch, readings = [], []
            for n in range(first, min(rows, first + chunk)):
                site, hour = ("greensboro", "sand_point")[n % 2], n // 2
                origin = start + timedelta(hours=hour)
                power = float(max(0.0, 3000 * np.sin(np.pi * (hour % 24) / 24)))
                reading = {
                    "site_id": site,
                    "timestamp": origin.isoformat(),
                    "power_w": power,
                    "ghi": power / 4,
                    "dni": power / 5,
                    "dhi": power / 10,
                    "temp_air": 10.0,
                    "wind_speed": 2.0,
                }
                batch.append(
                    {
                        "logged_at": origin,
                        "model_name": "solar",
                        "model_version": "2",
                        "api": "stream",
                        "key": site,
                        "origin": origin,
                        "inputs": {"last": reading},
                        "output": (power + rng.normal(0, 200, 24)).round(1).tolist(),
                        "latency_ms": 2.0,
                    }
                )
                readings.append(
                    {
                        "task": "solar",
                        "row_key": f"{site}|{origin.isoformat()}",
                        "event_time": origin,
                        "fields": reading,
                        "model_name": "solar",
                        "model_version": "2",
                        "api": "stream",
                        "logged_at": origin,
                    }
                )
            connection.execute(predictions.insert(), batch)
            connection.execute(inputs.insert(), readings)
    engine.dispose()


def fill_monitoring(root: Path, windows: int = 2000) -> None:
    from loopline.watch.monitor import MonitoringStore

    store = MonitoringStore(log_url(root))
    start = datetime(2015, 1, 1, tzinfo=UTC)
    rng = np.random.default_rng(1)
    rows = []
    for signal in ("feature_drift", "prediction_drift", "live_quality"):
        for day in range(windows // 3):
            ratio = float(rng.uniform(0.1, 1.2))
            rows.append(
                monitored_day(signal, start + timedelta(days=day), ratio, int(ratio > 1), False)
            )
    store.add(rows)
    store.close()


@contextlib.contextmanager
def ui(root: Path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "LOOPLINE_HOME")}
    env["LOOPLINE_PROJECT"] = str(root)
    log = open(root / "ui.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [str(BIN / "loopline"), "ui", "--port", str(port)],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ok(f"{url}/healthz", process)
        yield url
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def load_time(browser, url: str, drawn: tuple[str, ...]) -> float:
    """Seconds from navigation until every panel has drawn its facts (`drawn`: the
    pictures and rows there are facts for)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    started = time.perf_counter()
    page.goto(f"{url}/models/solar")
    for panel in PANELS:
        page.wait_for_selector(f"{panel}:not([data-state=loading])", timeout=60_000)
    for selector in drawn:
        page.wait_for_selector(selector, timeout=60_000, state="attached")
    seconds = time.perf_counter() - started
    context.close()
    return seconds


def panel_times(url: str) -> dict[str, float]:
    import httpx

    out = {}
    with httpx.Client(base_url=f"{url}/api/models/solar", timeout=60) as client:
        for panel in ("now", "live", "health", "history", "predictions?limit=50"):
            client.get(f"/{panel}")  # warm: a version's spec is read once
            times = []
            for _ in range(10):
                started = time.perf_counter()
                client.get(f"/{panel}").raise_for_status()
                times.append(time.perf_counter() - started)
            out[panel.split("?")[0]] = statistics.median(times) * 1000
    return out


def main() -> None:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--loads", type=int, default=7)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="loopline-bench-ui-") as scratch:
        full, empty = project(Path(scratch) / "full"), project(Path(scratch) / "empty")
        started = time.perf_counter()
        fill_log(full, args.rows)
        took = time.perf_counter() - started
        print(f"filled the log with {args.rows:,} predictions in {took:.0f} s")
        for root in (full, empty):
            fill_monitoring(root)
        with ui(full) as full_url, ui(empty) as empty_url, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            pages = {"full": (full_url, DRAWN), "empty": (empty_url, DRAWN[1:2])}
            loads = {"full": [], "empty": []}
            for n in range(args.loads + 1):  # the first load of each warms its server
                for name, (url, drawn) in pages.items():
                    seconds = load_time(browser, url, drawn)
                    if n:
                        loads[name].append(seconds)
            browser.close()
            panels = {"full": panel_times(full_url), "empty": panel_times(empty_url)}
    result = {
        "rows": args.rows,
        "load_s": {k: {"median": statistics.median(v), "max": max(v)} for k, v in loads.items()},
        "panel_ms": panels,
    }
    full_s, empty_s = result["load_s"]["full"]["median"], result["load_s"]["empty"]["median"]
    print(f"\npage load, median of {args.loads} (max):")
    print(f"  {args.rows:>7,} rows: {full_s:.3f} s ({result['load_s']['full']['max']:.3f} s)")
    print(f"  {0:>7,} rows: {empty_s:.3f} s ({result['load_s']['empty']['max']:.3f} s)")
    print(f"  ratio: {full_s / empty_s:.2f}x · target < 1 s: {'PASS' if full_s < 1 else 'MISS'}")
    print("\npanel answers, median of 10 (ms):")
    for panel in panels["full"]:
        print(
            f"  {panel:<12} {panels['full'][panel]:8.1f}  (empty log: {panels['empty'][panel]:.1f})"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
