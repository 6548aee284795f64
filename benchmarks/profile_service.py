"""Where the service's CPU goes under one kind of `/predict` load, profiled on the real process.

Run: .venv/bin/python benchmarks/profile_service.py BATCH CONCURRENCY [--seconds S]
     [--bare] [--py-spy PATH] [--top N]

Publishes `benchmarks/serving.py`'s seeded GRU into a temporary project, starts
`loopline serve` on it (or, with --bare, the bare BentoML service on the same ONNX file),
sends every window once (as a service that has run a while has), then drives `/predict`
with BATCH windows per request from CONCURRENCY threads for S seconds and prints the
service's CPU per request. With --py-spy (a py-spy executable: `pip download py-spy`
gives a wheel), it samples the worker while the load runs, `--gil` (only while it holds
the interpreter lock, so the shares are of CPU the request path competes for), and prints
each function's inclusive and own share of the samples.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import threading
import time
from pathlib import Path

from bench_modules import published_project, serving_benchmark

REPO = Path(__file__).resolve().parents[1]


def bodies(bench, root: Path, batch: int, bare: bool) -> list[bytes]:
    """Request bodies of `batch` windows each: columns for Loopline, model inputs for bare."""
    from loopline import registry
    from loopline.online.models import load_version
    from loopline.params import load_params
    from loopline.paths import ProjectPaths
    from loopline.tasks.solar.serving import Window, readings_columns, window_inputs

    paths = ProjectPaths.at(root)
    params = load_params(paths.params_file)
    task, uri = params.plugin, paths.tracking_uri()
    version = registry.champion_version(uri, params.model_name)
    model = load_version(uri, version, "champion", paths.state / "profile-cache", 1)
    readings = bench.site_readings(root)
    columns = [c for c in task.schema if c != task.key_columns[0]]
    required = model.spec.options.window + max(model.spec.options.lags or [0])
    starts = list(range(0, len(readings) - required, 33))[:256]
    records = [[{k: r[k] for k in columns} for r in readings[s : s + required]] for s in starts]
    groups = bench.chunks(records, batch)
    if not bare:
        return [
            json.dumps(
                {"windows": [{"site_id": bench.SITE, "columns": bench.as_columns(r)} for r in g]}
            ).encode()
            for g in groups
        ]
    window = model.spec.options.window
    out = []
    for group in groups:
        windows = [Window(bench.SITE, readings_columns(r, task.schema)) for r in group]
        x = window_inputs(task, model.spec, windows, window).round(6).tolist()
        out.append(json.dumps({"windows": [{"x": w} for w in x]}).encode())
    return out


def drive(url: str, payloads: list[bytes], concurrency: int, seconds: float) -> int:
    """POST `payloads` in turn from `concurrency` threads for `seconds`; requests answered."""
    import httpx

    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    client = httpx.Client(base_url=url, timeout=120, limits=limits)
    headers = {"content-type": "application/json"}
    deadline, counts = time.perf_counter() + seconds, []

    def worker(offset: int) -> None:
        n = 0
        while time.perf_counter() < deadline:
            client.post("/predict", content=payloads[(offset + n) % len(payloads)], headers=headers)
            n += 1
        counts.append(n)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client.close()
    return sum(counts)


def warm(url: str, payloads: list[bytes]) -> None:
    """Every window once, as through a service that has run a while: no clear-sky month
    is computed during the measurement."""
    import httpx

    with httpx.Client(base_url=url, timeout=120) as client:
        for body in payloads:
            response = client.post("/predict", content=body, headers=JSON)
            response.raise_for_status()


JSON = {"content-type": "application/json"}


def thread_cpu(process, before: dict[int, float] | None = None):
    """CPU seconds of each thread of `process` by id; with `before` (an earlier reading),
    what each spent since, busiest first (the event loop, the request threads, the writers
    behind them)."""
    now = {t.id: t.user_time + t.system_time for t in process.threads()}
    if before is None:
        return now
    return sorted((cpu - before.get(tid, 0.0) for tid, cpu in now.items()), reverse=True)


def frame_name(frame: str) -> str:
    """`function (file)` of a py-spy frame `function (path/file.py:line)`."""
    function, _, where = frame.partition(" (")
    return f"{function} ({where.rsplit('/', 1)[-1].split(':')[0]})"


def summarise(raw: Path, top: int) -> None:
    """Inclusive and own shares of functions in py-spy's raw (collapsed) stacks."""
    inclusive, own, total = collections.Counter(), collections.Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [frame_name(f) for f in stack.split(";")]
        total += int(count)
        for name in set(frames):
            inclusive[name] += int(count)
        own[frames[-1]] += int(count)
    for title, counter in (("inclusive", inclusive), ("own", own)):
        print(f"--- {title} share of {total} samples")
        for name, count in counter.most_common(top):
            print(f"{100 * count / total:5.1f}%  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("batch", type=int, help="windows per request")
    parser.add_argument("concurrency", type=int)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--bare", action="store_true", help="the bare BentoML service instead")
    parser.add_argument("--py-spy", type=Path, help="a py-spy executable: sample the worker")
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    import psutil

    from loopline.paths import ProjectPaths

    bench = serving_benchmark()
    root = published_project("loopline-profile-")
    paths = ProjectPaths.at(root)
    payloads = bodies(bench, root, args.batch, args.bare)
    bare = ("BareForecast", bench.model_file(paths)) if args.bare else None
    service = bench.Service(root, root.parent / "service.log", bare)
    try:
        service.wait_ready()
        main_process = psutil.Process(service.proc.pid)
        processes = [main_process, *main_process.children(recursive=True)]
        warm(service.url, payloads)
        raw = root.parent / "py-spy.txt"
        spy = None
        if args.py_spy:
            command = [str(args.py_spy), "record", "--gil", "--nonblocking", "-f", "raw"]
            command += ["-r", "200", "-d", str(int(args.seconds)), "-o", str(raw)]
            spy = subprocess.Popen([*command, "-p", str(processes[-1].pid)])
        before = sum(sum(p.cpu_times()[:2]) for p in processes)
        threads_before = thread_cpu(processes[-1])
        answered = drive(service.url, payloads, args.concurrency, args.seconds)
        used = sum(sum(p.cpu_times()[:2]) for p in processes) - before
        print(
            f"{answered} requests of {args.batch} window(s) at concurrency {args.concurrency} "
            f"in {args.seconds:g} s: {answered / args.seconds:.1f} req/s; service CPU "
            f"{1000 * used / max(1, answered):.2f} ms per request (load average "
            f"{os.getloadavg()[0]:.2f})"
        )
        spent = thread_cpu(processes[-1], threads_before)
        print(
            "the worker's threads, CPU ms per request (busiest first):",
            ", ".join(f"{1000 * cpu / max(1, answered):.2f}" for cpu in spent if cpu > 0.01),
        )
        if spy is not None:
            spy.wait()
            summarise(raw, args.top)
    finally:
        service.stop()


if __name__ == "__main__":
    main()
