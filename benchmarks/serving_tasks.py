"""Serving overhead of the review and digit services: in-process adapter vs the real service.

Run: .venv/bin/python benchmarks/serving_tasks.py [--quick] [--json PATH] [--only reviews|digits]
(--quick: about 4 minutes on 2 cores, most of it the two tiny offline runs that publish the
champions; the full run measures longer rows).

For each task one run publishes a champion through the real offline flow (tiny data: the
tests' recipes), starts the real service on it (`loopline serve`), loads the same version
in-process the way the service loads it, and measures, one after the other, as
`benchmarks/serving.py` does for the forecaster:

  reviews  (b) in-process `Serving.predict` on 256 texts  vs  POST /predict {"texts": [256]}
  digits   (b) in-process `item_from_file` + `predict` on one PNG  vs  POST /predict_image

at concurrency 1 and 8 (threads). Printed per pair: throughput (items/s), p50/p99 per call,
CPU ms per item (the service's for service rows), other processes' CPU, and the service's
throughput ratio and p50 overhead against (b), with the forecaster's yardsticks (>= 0.9x,
<= +1 ms) as PASS/MISS for reference: the issue sets no separate targets for them.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BATCH_TEXTS = 256
CONCURRENCY = (1, 8)
FULL = {"seconds": 6.0, "warmup": 1.5}
QUICK = {"seconds": 2.0, "warmup": 0.5}


def forecaster_bench():
    """benchmarks/serving.py as a module (its Service, drive and report helpers)."""
    spec = importlib.util.spec_from_file_location("serving_bench", REPO / "benchmarks/serving.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["serving_bench"] = module
    spec.loader.exec_module(module)
    return module


def publish(root: Path, params: dict[str, Any]) -> None:
    """The real offline flow on tiny data publishes the champion."""
    import yaml
    from prefect.testing.utilities import prefect_test_harness

    from pipelines.offline import offline_flow

    root.mkdir(parents=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if params["task"] == "reviews":
        from tests.reviews_data import reviews_frame, write_reviews

        write_reviews(root / "reviews.tsv", reviews_frame())
    with prefect_test_harness(server_startup_timeout=120):
        summary = offline_flow(root=str(root))
    if not summary.get("promoted"):
        raise SystemExit(f"the {params['task']} flow published no champion: {summary}")


def review_texts() -> list[str]:
    from tests.reviews_data import reviews_frame

    texts = [str(t) for t in reviews_frame()["document"]]
    return [texts[i % len(texts)] for i in range(BATCH_TEXTS * 4)]


def digit_uploads() -> list[bytes]:
    """Training digits as a person would upload them: dark ink on white, 32 px PNGs."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    out = []
    for image in digits.images[:64]:
        grey = Image.fromarray((255 * (1 - image / 16.0)).astype(np.uint8), "L")
        buffer = io.BytesIO()
        grey.resize((32, 32)).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def measure_task(bench, task_name: str, params: dict[str, Any], base: Path, config) -> list:
    import httpx

    from loopline import registry
    from loopline.online.models import default_threads, load_version
    from loopline.params import load_params
    from loopline.paths import ProjectPaths, apply_environment

    root = base / task_name
    print(f"[{task_name}] publishing a champion with the offline flow ...", flush=True)
    publish(root, params)
    paths = ProjectPaths.at(root)
    apply_environment(paths)
    loaded = load_params(paths.params_file)
    task = loaded.plugin
    adapter = task.Serving(task, loaded)
    uri = paths.tracking_uri()
    threads = loaded.serve.threads or default_threads(loaded.serve.workers)
    version = registry.champion_version(uri, loaded.served_model)
    model = load_version(uri, version, "champion", paths.state / "bench-cache", threads)
    service = bench.Service(root, base / f"{task_name}.log")
    rows = []
    seconds, warmup = config["seconds"], config["warmup"]
    statuses: collections.Counter[int] = collections.Counter()
    refused: list[str] = []

    def counted(response) -> bool:
        statuses[response.status_code] += 1
        if response.status_code != 200 and not refused:
            refused.append(f"HTTP {response.status_code}: {response.text[:300]}")
        return response.status_code == 200

    try:
        print(f"[{task_name}] service ready after {service.wait_ready():.1f}s", flush=True)
        client = httpx.Client(base_url=service.url, timeout=120)
        if task_name == "reviews":
            texts = review_texts()
            groups = bench.chunks(texts, BATCH_TEXTS)
            items = [[adapter.Request(t) for t in group] for group in groups]
            bodies = [json.dumps({"texts": group}).encode() for group in groups]

            def in_process(batch) -> int:
                return len(adapter.predict(model, batch))

            def served(body: bytes) -> int:
                response = client.post(
                    "/predict", content=body, headers={"content-type": "application/json"}
                )
                return BATCH_TEXTS if counted(response) else 0

            batch, label = BATCH_TEXTS, f"{BATCH_TEXTS} texts"
            inputs_b, inputs_s = items, bodies
        else:
            uploads = digit_uploads()

            def in_process(data: bytes) -> int:
                return len(adapter.predict(model, [adapter.item_from_file(data, model)]))

            def served(data: bytes) -> int:
                files = {"file": ("digit.png", data, "image/png")}
                return 1 if counted(client.post("/predict_image", files=files)) else 0

            batch, label = 1, "1 PNG upload"
            inputs_b, inputs_s = uploads, uploads
        for conc in CONCURRENCY:
            row = bench.Row("inproc", f"{task_name}: (b) in-process, {label}", batch, conc)
            rows.append(bench.measure(row, in_process, inputs_b, seconds, warmup))
            row = bench.Row("predict", f"{task_name}: service over HTTP, {label}", batch, conc)
            rows.append(
                bench.measure(row, served, inputs_s, seconds, warmup, service, statuses.clear)
            )
            row.notes["statuses"] = {str(k): v for k, v in sorted(statuses.items())}
        client.close()
        if refused:
            print(f"[{task_name}] first refused request: {refused[0]}\n{service.tail(40)}")
    finally:
        service.stop()
    return rows


def report(bench, rows) -> list[dict[str, Any]]:
    bench.print_table(rows)
    print()
    out = []
    for n in range(0, len(rows), 2):
        b, s = rows[n], rows[n + 1]
        ratio = s.throughput / b.throughput if b.throughput else 0.0
        overhead = (s.p50_ms or 0.0) - (b.p50_ms or 0.0)
        line = {
            "pair": s.path,
            "concurrency": s.concurrency,
            "throughput_ratio": ratio,
            "p50_overhead_ms": overhead,
            "cpu_ms_per_item_service": s.notes["cpu_ms_per_forecast"],
            "cpu_ms_per_item_inprocess": b.notes["cpu_ms_per_forecast"],
        }
        out.append(line)
        print(
            f"{s.path:48s} conc {s.concurrency:2d}: throughput {ratio:5.2f}x (b) "
            f"[{'PASS' if ratio >= 0.9 else 'MISS'} vs 0.9x], p50 {overhead:+7.2f} ms over (b) "
            f"[{'PASS' if overhead <= 1.0 else 'MISS'} vs +1 ms]; CPU per item "
            f"{line['cpu_ms_per_item_service']:.2f} ms served vs "
            f"{line['cpu_ms_per_item_inprocess']:.2f} ms in-process"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short measurements (smoke)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    parser.add_argument("--only", choices=("reviews", "digits"))
    args = parser.parse_args()
    config = QUICK if args.quick else FULL
    started, load_before = time.perf_counter(), os.getloadavg()
    sys.path.insert(0, str(REPO))
    for var in ("MLFLOW_TRACKING_URI", "LOOPLINE_HOME"):
        os.environ.pop(var, None)
    base = Path(tempfile.mkdtemp(prefix="loopline-bench-tasks-"))
    os.environ.setdefault("PREFECT_HOME", str(base / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    bench = forecaster_bench()
    from tests.pipelines.test_digits_flow import TINY_DIGITS
    from tests.reviews_data import TINY_REVIEWS

    projects = {"reviews": TINY_REVIEWS, "digits": TINY_DIGITS}
    rows = []
    for name, params in projects.items():
        if args.only in (None, name):
            rows += measure_task(bench, name, params, base, config)
    pairs = report(bench, rows)
    print(
        f"setup: {os.cpu_count()} cores; load generator on the same machine; "
        f"{'quick' if args.quick else 'full'} run, {config['seconds']:g}s per row, "
        f"{time.perf_counter() - started:.0f}s in all; load average (1 min) "
        f"{load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after"
    )
    if args.json:
        from dataclasses import asdict

        args.json.write_text(
            json.dumps({"rows": [asdict(r) for r in rows], "pairs": pairs}, indent=2)
        )
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
