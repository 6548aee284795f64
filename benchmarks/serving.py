"""Serving overhead: the real service against a bare BentoML service on the same model.

Run: .venv/bin/python benchmarks/serving.py [--quick] [--json PATH] [--seconds S] [--soak S]
(--quick is a short run, about 2 minutes on 2 cores; the full run about 5, with a 60 s soak;
`LOOPLINE_SERVE_<KEY>` variables reach the service, e.g. LOOPLINE_SERVE_MAX_LATENCY_MS=5000
to compare a serving setting).

One run publishes a small seeded, untrained GRU forecaster (hidden 32, window 24, 48
readings per forecast) as the champion of a fresh project in a temporary folder, starts
the real service on it (`loopline serve`, as users do) and a bare BentoML service on the
same ONNX file (`benchmarks/bare_service.py`, `bentoml serve`), and measures on the same
windows of the greensboro site, one after the other:

  PyTorch eager           the model's torch module on prepared inputs (and + features)
  (a) onnxruntime alone   `session.run` on prepared inputs: the model call only
  (b) in-process library  `forecast_windows(task, model, windows)`: the task's features
                          + onnxruntime, what a user embedding the model runs
  bare BentoML            POST /predict of a hand-written service: one batchable API over
                          a typed list of windows of model inputs, onnxruntime with one
                          thread, access log and tracing off, max_batch_size 64,
                          max_latency_ms 2000; no contract, features, log or live inputs
  service predict         POST /predict over HTTP (httpx, pooled), N windows per request,
                          in the columnar form (`{"site_id", "columns": {...}}`); the
                          per-reading form (`{"site_id", "readings": [...]}`) at
                          concurrency 1 for reference
  service stream          POST /stream, full-duplex NDJSON: one reading in flight per
                          stream (per-message latency), and bulk (`stream_readings`,
                          rate=0) for throughput, live inputs stored
  soak                    POST /predict, 32 windows x concurrency 32 for --soak seconds

each at concurrency 1 and 32 (threads, or asyncio streams); each bare row right before
the service row it is compared with. Targets (issue 27), ratios to the bare service:

  /predict throughput, 1 and 32 windows, conc 1 and 32   >= 0.8x bare
  /predict p50, conc 1                                    <= bare p50 + 1 ms
  /stream p99, one reading in flight, conc 1              <= 2x bare 1-window p50
  /stream bulk, one worker, live inputs stored            >= 10,000 readings/s
  /predict responses >= 500 (every row; the soak)         0

PASS/MISS per target. The load generator runs on the same machine as the service and takes
CPU from it: its CPU, the service's, and other processes' are printed per row, with CPU ms
per forecast (robust to a busy machine); say the machine's load (`uptime`) beside numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SITE = "greensboro"
HIDDEN, WINDOW, SEED = 32, 24, 7
BIG = 32  # windows per request for the batched rows; also the high concurrency
# The project: one site, the builtin source (TMY3 weather → AC power), default `serve:`.
PROJECT = {
    "task": "solar",
    "seed": SEED,
    "ingest": {"source": "builtin:solar", "start": "2021-01-01", "end": "2021-03-01"},
    "solar": {"sites": [SITE]},
}
FULL = {"seconds": 6.0, "warmup": 1.5, "bulk_readings": 8000}
QUICK = {"seconds": 1.5, "warmup": 0.5, "bulk_readings": 4000}
JSON_HEADERS = {"content-type": "application/json"}


# ----------------------------------------------------------------------------- set-up


def publish_model(root: Path):
    """Export a seeded, untrained GRU forecaster and make it the champion (the serving
    tests' recipe: the library calls the offline flow uses). Returns its torch module."""
    import mlflow
    import torch

    from loopline import registry
    from loopline.offline.export import export_and_check
    from loopline.offline.features import fit_normalization
    from loopline.onnx_runtime import SPEC_KEY, onnx_session, run_onnx
    from loopline.params import load_params
    from loopline.paths import ProjectPaths
    from loopline.tasks.forecast.options import with_window
    from loopline.tasks.forecast.windows import make_windows
    from loopline.tasks.solar.model import Predictor

    paths = ProjectPaths.at(root)
    params = load_params(paths.params_file)
    task = params.plugin
    raw = task.load_builtin(params)
    raw = raw[raw["timestamp"] < "2021-03-01"].reset_index(drop=True)
    spec = task.new_feature_spec(params)
    frame = task.add_features(raw, spec)
    spec = with_window(fit_normalization(spec, frame), WINDOW)
    torch.manual_seed(SEED)
    hparams = task.Hyperparameters(
        learning_rate=1e-3,
        batch_size=64,
        hidden_size=HIDDEN,
        num_layers=1,
        dropout=0.0,
        window=WINDOW,
        cell="gru",
    )
    model = task.build_model(hparams, spec)
    golden = make_windows(task.add_labels(frame, spec), spec, WINDOW).x[:8]
    onnx_path = model_file(paths)
    scratch = onnx_path.parent
    scratch.mkdir(parents=True, exist_ok=True)
    export_and_check(model, golden, onnx_path, {SPEC_KEY: spec.to_json()}, 1e-2, 1e-4)
    golden_out = run_onnx(onnx_session(onnx_path), golden)
    files = registry.write_model_files(scratch, spec, params.to_dict(), golden, golden_out)
    uri = paths.tracking_uri()
    experiment = registry.ensure_experiment(uri, params.experiment_name, paths.mlflow_artifacts)
    run_id = mlflow.MlflowClient(uri).create_run(experiment).info.run_id
    published = registry.log_onnx_model(
        uri,
        run_id,
        onnx_path,
        params.model_name,
        files,
        metadata={},
        signature=None,
        tags={"loopline.data_version": "bench", "loopline.metric.test_rmse": "1.0"},
    )
    registry.move_champion(uri, params.model_name, published.version, reason="benchmark")
    return Predictor(model).eval()


def model_file(paths) -> Path:
    """Where `publish_model` writes the champion's ONNX file (the bare service loads it)."""
    return paths.state / "bench-model" / "model.onnx"


def site_readings(root: Path) -> list[dict[str, Any]]:
    """The site's raw builtin rows as JSON-ready reading dicts (with site_id), in time order."""
    from loopline.params import load_params

    params = load_params(root / "params.yaml")
    raw = params.plugin.load_builtin(params)
    raw = raw[raw["site_id"] == SITE].sort_values("timestamp")
    return json.loads(raw.to_json(orient="records", date_format="iso", date_unit="s"))


class Service:
    """`loopline serve` in a subprocess, on a free port, until `stop`."""

    def __init__(self, root: Path, log_path: Path, bare: tuple[str, Path] | None = None):
        """`loopline serve` in project `root`; with `bare` (a class of
        `benchmarks/bare_service.py` and its ONNX file), that bare BentoML service instead,
        started with `bentoml serve` as a hand-written service is."""
        from loopline.health import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI",)}
        env.update(LOOPLINE_PROJECT=str(root), BENTOML_DO_NOT_TRACK="true")
        self.log_path = log_path
        self._log = log_path.open("wb")
        where = ["--port", str(self.port), "--host", "127.0.0.1"]
        if bare is None:
            command, cwd = [str(Path(sys.executable).with_name("loopline")), "serve", *where], root
        else:
            name, model = bare
            env.update(BARE_MODEL=str(model), BENTOML_HOME=str(root / ".bentoml-bare"))
            bentoml = str(Path(sys.executable).with_name("bentoml"))
            command, cwd = [bentoml, "serve", f"benchmarks.bare_service:{name}", *where], REPO
        self.proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as one below
        )

    def wait_ready(self, timeout_s: float = 180.0) -> float:
        from loopline.health import NotHealthy, wait_until_ok

        try:
            return wait_until_ok(f"{self.url}/readyz", self.proc, timeout_s, interval_s=0.25)
        except NotHealthy as error:
            raise SystemExit(f"{error}:\n{self.tail()}") from None

    def cpu_seconds(self) -> float:
        """User + system CPU of the service's processes (the server and its workers)."""
        import psutil

        try:
            main = psutil.Process(self.proc.pid)
            total = 0.0
            for proc in [main, *main.children(recursive=True)]:
                try:
                    times = proc.cpu_times()
                    total += times.user + times.system
                except psutil.NoSuchProcess:
                    pass
            return total
        except psutil.NoSuchProcess:
            return 0.0

    def tail(self, lines: int = 30) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the group started above
                self.proc.wait(10)
        self._log.close()


def scrape(url: str) -> dict[tuple[str, str], float]:
    """The service's own batch-size and features+model-time histograms, per api."""
    import httpx

    wanted = ("loopline_batch_size_sum", "loopline_batch_size_count")
    wanted += ("loopline_inference_seconds_sum", "loopline_inference_seconds_count")
    out: dict[tuple[str, str], float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        name, _, rest = line.partition("{")
        if name in wanted and 'api="' in rest:
            api = rest.split('api="', 1)[1].split('"', 1)[0]
            out[(name, api)] = out.get((name, api), 0.0) + float(line.rsplit(" ", 1)[1])
    return out


# ----------------------------------------------------------------------------- measuring

GROUPS = ("eager", "ort", "inproc", "bare", "predict", "predict_rows", "stream", "soak")
SERVED = ("bare", "predict", "predict_rows", "stream", "soak")


@dataclass
class Row:
    group: str  # one of GROUPS
    path: str
    batch: int  # windows per call / request (stream: per message)
    concurrency: int
    requests: int = 0  # answered calls / requests / messages (bulk stream: readings sent)
    windows: int = 0  # forecasts made
    errors: int = 0
    wall_s: float = 0.0
    throughput: float = 0.0  # forecasts per second
    p50_ms: float | None = None
    p99_ms: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)


def system_busy_s() -> float:
    import psutil

    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


def snapshot(service: Service | None) -> dict[str, float]:
    """Clocks at the start of a measurement: wall, this process's CPU, the service's CPU,
    the whole machine's busy CPU (the rest is other processes: noise, printed per row)."""
    return {
        "wall": time.perf_counter(),
        "own": time.process_time(),
        "service": service.cpu_seconds() if service else 0.0,
        "busy": system_busy_s(),
    }


def drive(call, items: list, concurrency: int, seconds: float, service=None) -> dict[str, Any]:
    """Call `call(item)` (→ windows done, 0 on error) from `concurrency` threads, items in
    turn, until `seconds` have passed; calls in flight at the deadline finish and count."""
    counter = itertools.count()
    results: list[tuple[list[float], int, int]] = []

    def worker() -> None:
        latencies, done, errors = [], 0, 0
        while time.perf_counter() < deadline:
            item = items[next(counter) % len(items)]
            started = time.perf_counter()
            windows = call(item)
            elapsed = time.perf_counter() - started
            if windows:
                latencies.append(elapsed)
                done += windows
            else:
                errors += 1
        results.append((latencies, done, errors))

    before = snapshot(service)
    deadline = before["wall"] + seconds
    if concurrency == 1:
        worker()
    else:
        threads = [threading.Thread(target=worker) for _ in range(concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return {
        "latencies": [x for lat, _, _ in results for x in lat],
        "windows": sum(d for _, d, _ in results),
        "errors": sum(e for _, _, e in results),
        "before": before,
    }


def percentiles(latencies: list[float]) -> tuple[float | None, float | None]:
    import numpy as np

    if not latencies:
        return None, None
    values = np.asarray(latencies) * 1000
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def finish(row: Row, result: dict[str, Any], service=None, metrics_before=None) -> Row:
    """Fill `row` from a measurement; with a service, its CPU and its own histograms."""
    after = snapshot(service)
    before = result["before"]
    row.wall_s = result.get("wall") or after["wall"] - before["wall"]
    row.requests = len(result["latencies"])
    row.windows, row.errors = result["windows"], result["errors"]
    row.throughput = row.windows / row.wall_s
    row.p50_ms, row.p99_ms = percentiles(result["latencies"])
    span = after["wall"] - before["wall"]
    own, busy = after["own"] - before["own"], after["busy"] - before["busy"]
    served = after["service"] - before["service"]
    row.notes["own_cpu_cores"] = own / span  # the in-process work, or the load generator
    row.notes["service_cpu_cores"] = served / span
    row.notes["other_cpu_cores"] = max(0.0, busy - own - served) / span
    # CPU per forecast: robust to what else the machine does, unlike wall-clock rates.
    work = served if row.group in SERVED else own
    row.notes["cpu_ms_per_forecast"] = work / max(1, row.windows) * 1000
    if row.group in SERVED:
        row.notes["client_cpu_ms_per_forecast"] = own / max(1, row.windows) * 1000
    if service is not None and metrics_before is not None:
        metrics = scrape(service.url)
        api = "stream" if row.group == "stream" else "predict"

        def delta(name: str) -> float:
            return metrics.get((name, api), 0.0) - metrics_before.get((name, api), 0.0)

        calls = delta("loopline_batch_size_count")
        if calls:
            row.notes["model_calls"] = int(calls)
            row.notes["windows_per_model_call"] = delta("loopline_batch_size_sum") / calls
            row.notes["service_compute_ms_per_call"] = (
                delta("loopline_inference_seconds_sum") / calls * 1000
            )
    return row


def measure(row: Row, call, items, seconds: float, warmup: float, service=None, reset=None):
    """Warm up, then measure `call` over `items` at the row's concurrency."""
    drive(call, items, row.concurrency, warmup)
    if reset is not None:
        reset()
    metrics_before = scrape(service.url) if service else None
    result = drive(call, items, row.concurrency, seconds, service)
    return finish(row, result, service, metrics_before)


# ----------------------------------------------------------------------------- stream


class DuplexStream:
    """One `/stream` request over h11: send NDJSON lines, read answer lines as they come
    (what `loopline.online.stream_client` does, one message at a time so each can be timed)."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.lines: list[bytes] = []
        self.pending = b""

    async def open(self) -> None:
        import h11

        self.h11 = h11
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.conn = h11.Connection(h11.CLIENT)
        self._write(
            h11.Request(
                method="POST",
                target="/stream",
                headers=[
                    ("Host", f"{self.host}:{self.port}"),
                    ("Content-Type", "application/x-ndjson"),
                    ("Transfer-Encoding", "chunked"),
                ],
            )
        )
        await self.writer.drain()

    def _write(self, event) -> None:
        data = self.conn.send(event)
        if data:
            self.writer.write(data)

    async def send(self, line: bytes) -> None:
        self._write(self.h11.Data(data=line))
        await self.writer.drain()

    async def answer(self) -> dict[str, Any]:
        h11 = self.h11
        while not self.lines:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                data = await asyncio.wait_for(self.reader.read(65536), 60)
                self.conn.receive_data(data)
            elif isinstance(event, h11.Response) and event.status_code != 200:
                raise RuntimeError(f"/stream answered {event.status_code}")
            elif isinstance(event, h11.Data):
                self.pending += event.data
                *lines, self.pending = self.pending.split(b"\n")
                self.lines.extend(line for line in lines if line.strip())
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                raise RuntimeError("/stream ended before the answer came")
        return json.loads(self.lines.pop(0))

    async def close(self) -> None:
        try:
            self._write(self.h11.EndOfMessage())
            await self.writer.drain()
        finally:
            self.writer.close()


async def stream_one_at_a_time(
    service: Service, lines: list[bytes], required: int, streams: int, seconds: float
) -> dict[str, Any]:
    """`streams` concurrent streams; each primes its window with `required - 1` readings,
    then sends one reading at a time and waits for its forecast: the per-message latency
    is send → forecast line. The clock starts once every stream is primed."""
    results: list[tuple[list[float], int, int]] = []
    first: list[dict[str, Any]] = []
    start = asyncio.Event()
    primed = 0
    state: dict[str, Any] = {}

    async def one() -> None:
        nonlocal primed
        stream = DuplexStream("127.0.0.1", service.port)
        await stream.open()
        latencies, errors = [], 0
        try:
            await stream.send(b"".join(lines[: required - 1]))
            primed += 1
            if primed == streams:
                state["before"] = snapshot(service)
                state["deadline"] = state["before"]["wall"] + seconds
                start.set()
            await start.wait()
            for n in range(required - 1, len(lines)):
                if time.perf_counter() >= state["deadline"]:
                    break
                started = time.perf_counter()
                await stream.send(lines[n])
                answer = await stream.answer()
                if "forecast" in answer and answer["line"] == n + 1:
                    latencies.append(time.perf_counter() - started)
                    if not first:
                        first.append(answer)
                else:
                    errors += 1
        finally:
            await stream.close()
        results.append((latencies, len(latencies), errors))

    await asyncio.gather(*(one() for _ in range(streams)))
    return {
        "latencies": [x for lat, _, _ in results for x in lat],
        "windows": sum(d for _, d, _ in results),
        "errors": sum(e for _, _, e in results),
        "before": state["before"],
        "first": first[0] if first else None,
    }


async def stream_bulk(service: Service, readings: list[dict[str, Any]]) -> dict[str, Any]:
    """All readings at once through the library's client (rate=0): forecasts per second
    from the first byte sent to the last forecast received."""
    from loopline.online.stream_client import stream_readings

    answers: list[float] = []

    def on_answer(answer: dict[str, Any]) -> None:
        if "forecast" in answer:
            answers.append(time.perf_counter())

    before = snapshot(service)
    stats = await stream_readings(service.url, readings, on_answer, rate=0)
    return {
        "latencies": [],
        "windows": stats.answers,
        "errors": stats.errors,
        "before": before,
        "wall": (answers[-1] if answers else time.perf_counter()) - before["wall"],
    }


def measure_stream(service: Service, row: Row, run, warmup_run=None) -> tuple[Row, Any]:
    if warmup_run is not None:
        asyncio.run(warmup_run)
    metrics_before = scrape(service.url)
    result = asyncio.run(run)
    return finish(row, result, service, metrics_before), result.get("first")


# ----------------------------------------------------------------------------- report


def fmt(value: float | None, width: int = 8) -> str:
    return f"{value:{width}.2f}" if value is not None else f"{'-':>{width}s}"


def print_table(rows: list[Row]) -> None:
    print()
    print(
        f"{'path':44s} {'batch':>5s} {'conc':>4s} {'requests':>8s} {'err':>5s} "
        f"{'windows/s':>10s} {'p50 ms':>8s} {'p99 ms':>8s} {'cpu ms':>6s} {'other':>5s}  notes"
    )
    ordered = sorted(rows, key=lambda r: GROUPS.index(r.group))
    for n, row in enumerate(ordered):
        if n and row.group != ordered[n - 1].group:
            print()
        notes = []
        failed = {k: v for k, v in row.notes.get("statuses", {}).items() if k != "200"}
        if failed:
            notes.append("HTTP " + ", ".join(f"{k} x{v}" for k, v in failed.items()))
        if "windows_per_model_call" in row.notes:
            notes.append(
                f"in service: {row.notes['windows_per_model_call']:.1f} windows/call, "
                f"{row.notes['service_compute_ms_per_call']:.1f} ms/call"
            )
        if "readings_per_s" in row.notes:
            notes.append(f"{row.notes['readings_per_s']:.0f} readings/s")
        if row.group in SERVED:
            notes.append(
                f"cpu: service {row.notes['service_cpu_cores']:.2f}, "
                f"client {row.notes['own_cpu_cores']:.2f}"
            )
        print(
            f"{row.path:44s} {row.batch:5d} {row.concurrency:4d} {row.requests:8d} "
            f"{row.errors:5d} {row.throughput:10.1f} {fmt(row.p50_ms)} {fmt(row.p99_ms)} "
            f"{row.notes['cpu_ms_per_forecast']:6.2f} {row.notes['other_cpu_cores']:5.2f}  "
            + "; ".join(notes)
        )


def find(rows: list[Row], group: str, batch: int, conc: int) -> Row:
    return next(r for r in rows if (r.group, r.batch, r.concurrency) == (group, batch, conc))


def evaluate_targets(rows: list[Row]) -> list[dict[str, Any]]:
    """The targets (issue 27), each against the bare BentoML service on the same model,
    measured right before; `vs_b` is the same ratio or difference against (b), the
    in-process library (the work without HTTP)."""
    targets = []

    def target(name, measured, op, limit, unit, vs_b, how) -> None:
        passed = measured >= limit if op == ">=" else measured <= limit
        targets.append(
            {
                "target": name,
                "measured": measured,
                "op": op,
                "limit": limit,
                "unit": unit,
                "passed": passed,
                "vs_b": vs_b,
                "from": how,
            }
        )

    for batch in (1, BIG):
        served, bare = find(rows, "predict", batch, 1), find(rows, "bare", batch, 1)
        b = find(rows, "inproc", batch, 1)
        target(
            f"predict p50 overhead, {batch} window(s), conc 1",
            served.p50_ms - bare.p50_ms,
            "<=",
            1.0,
            "ms over bare",
            served.p50_ms - b.p50_ms,
            f"{served.p50_ms:.2f} - {bare.p50_ms:.2f} ms",
        )
    for batch, conc in ((1, 1), (1, BIG), (BIG, 1), (BIG, BIG)):
        served, bare = find(rows, "predict", batch, conc), find(rows, "bare", batch, conc)
        b = find(rows, "inproc", batch, conc)
        unit = "req/s" if batch == 1 else "windows/s"
        target(
            f"predict throughput, {batch} window(s)/request, conc {conc}",
            served.throughput / bare.throughput,
            ">=",
            0.8,
            "x bare",
            served.throughput / b.throughput,
            f"{served.throughput:.0f} / {bare.throughput:.0f} {unit}",
        )
    served, bare = find(rows, "stream", 1, 1), find(rows, "bare", 1, 1)
    b = find(rows, "inproc", 1, 1)
    target(
        "stream p99, 1 reading in flight, conc 1",
        served.p99_ms / bare.p50_ms,
        "<=",
        2.0,
        "x bare 1-window p50",
        served.p99_ms / b.p50_ms,
        f"{served.p99_ms:.2f} / {bare.p50_ms:.2f} ms",
    )
    bulk = find(rows, "stream", 0, 1)
    target(
        "stream bulk, one worker, live inputs stored",
        bulk.notes["readings_per_s"],
        ">=",
        10_000,
        "readings/s",
        bulk.notes["readings_per_s"] / find(rows, "inproc", BIG, 1).throughput,
        f"{bulk.requests} readings in {bulk.wall_s:.2f} s",
    )
    for group, what in (("predict", "every predict row"), ("soak", "the soak")):
        counted = [r for r in rows if r.group == group]
        if not counted:
            continue
        errors = sum(
            int(n)
            for r in counted
            for status, n in r.notes.get("statuses", {}).items()
            if int(status) >= 500
        )
        answered = sum(r.requests for r in counted)
        target(
            f"predict responses >= 500 ({what})",
            errors,
            "<=",
            0,
            "responses",
            errors,
            f"of {answered + errors} requests, {sum(r.wall_s for r in counted):.0f} s",
        )
    return targets


def print_targets(targets: list[dict[str, Any]]) -> None:
    print()
    print(
        f"{'target':48s} {'measured':>9s} {'limit':>11s}  {'unit':20s} {'vs (b)':>8s}  "
        f"{'result':6s}  from"
    )
    for t in targets:
        print(
            f"{t['target']:48s} {t['measured']:9.2f} {t['op']} {t['limit']:8.2f}  "
            f"{t['unit']:20s} {t['vs_b']:8.3g}  {'PASS' if t['passed'] else 'MISS':6s}  "
            f"{t['from']}"
        )


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short measurements (smoke)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    parser.add_argument("--seconds", type=float, help="measured seconds per row")
    parser.add_argument(
        "--soak",
        type=float,
        help=f"seconds of /predict at {BIG} windows x concurrency {BIG} after the rows, "
        "counting responses >= 500 (default: 60 in the full run, none in --quick)",
    )
    args = parser.parse_args()
    config = dict(QUICK if args.quick else FULL)
    if args.seconds:
        config["seconds"] = args.seconds
    seconds, warmup = config["seconds"], config["warmup"]
    total_started = time.perf_counter()
    load_before = os.getloadavg()

    base = Path(tempfile.mkdtemp(prefix="loopline-bench-serving-"))
    root = base / "proj"
    root.mkdir()
    import yaml

    (root / "params.yaml").write_text(yaml.safe_dump(PROJECT, sort_keys=False))
    for var in ("MLFLOW_TRACKING_URI", "LOOPLINE_HOME"):
        os.environ.pop(var, None)  # the project keeps its own embedded state
    sys.path.insert(0, str(REPO))
    from loopline.paths import ProjectPaths, apply_environment

    paths = ProjectPaths.at(root)
    apply_environment(paths)
    import httpx
    import numpy as np
    import torch

    from loopline import registry
    from loopline.config import serve_env_overrides
    from loopline.online.models import default_threads, load_version
    from loopline.onnx_runtime import run_onnx
    from loopline.params import load_params
    from loopline.tasks.solar.serving import (
        Window,
        forecast_windows,
        readings_columns,
        required_readings,
        window_inputs,
    )

    print(f"publishing a seeded GRU (hidden {HIDDEN}, window {WINDOW}) into {root} ...")
    module = publish_model(root)
    # What the service runs with: params.yaml plus any LOOPLINE_SERVE_* variables.
    params = load_params(paths.params_file, serve_env_overrides(dict(os.environ)))
    task = params.plugin
    service = Service(root, base / "service.log")
    bare = Service(root, base / "bare.log", ("BareForecast", model_file(paths)))
    rows: list[Row] = []
    try:
        print(f"service ready on {service.url} after {service.wait_ready():.1f}s")
        print(f"bare BentoML service ready on {bare.url} after {bare.wait_ready():.1f}s")

        # The model in-process, loaded the way the service loads it (same threads).
        uri = paths.tracking_uri()
        threads = params.serve.threads or default_threads(params.serve.workers)
        model = load_version(
            uri,
            registry.champion_version(uri, params.model_name),
            "champion",
            paths.state / "bench-cache",
            threads,
        )
        required = required_readings(model.spec)
        readings = site_readings(root)
        columns = [c for c in task.schema if c != task.key_columns[0]]
        # The same raw windows everywhere: 256 windows of `required` consecutive readings
        # spread over the year, as request bodies (JSON) and as the frames the service
        # builds from them.
        starts = list(range(0, len(readings) - required, 33))[:256]
        records = [[{k: r[k] for k in columns} for r in readings[s : s + required]] for s in starts]
        windows = [Window(SITE, readings_columns(rows, task.schema)) for rows in records]
        batches = {1: [[w] for w in windows], BIG: list(chunks(windows, BIG))}
        prepared = {
            b: [window_inputs(task, model.spec, group, WINDOW) for group in batches[b]]
            for b in batches
        }
        # The same windows in the two request forms: one object per reading, and columns.
        row_bodies = {
            b: [
                json.dumps({"windows": [{"site_id": SITE, "readings": r} for r in group]}).encode()
                for group in chunks(records, b)
            ]
            for b in (1, BIG)
        }
        bodies = {
            b: [
                json.dumps(
                    {"windows": [{"site_id": SITE, "columns": as_columns(r)} for r in group]}
                ).encode()
                for group in chunks(records, b)
            ]
            for b in (1, BIG)
        }
        lines = [(json.dumps(r) + "\n").encode() for r in readings]
        # The bare service's bodies: the same windows as the model's own inputs (what a
        # hand-written service takes), to the float32 precision a client would send.
        bare_bodies = {
            b: [
                json.dumps({"windows": [{"x": w} for w in x.round(6).tolist()]}).encode()
                for x in prepared[b]
            ]
            for b in (1, BIG)
        }

        # The same model three ways: torch vs onnxruntime, the service vs in-process.
        x = prepared[BIG][0]
        with torch.inference_mode():
            eager_out = module(torch.from_numpy(x)).numpy()
        parity = {
            "torch_vs_onnxruntime": float(np.abs(eager_out - run_onnx(model.session, x)).max())
        }
        expected = forecast_windows(task, model, batches[BIG][0])
        answer = httpx.post(
            f"{service.url}/predict", content=bodies[BIG][0], headers=JSON_HEADERS, timeout=120
        )
        answer.raise_for_status()
        parity["service_predict_vs_inprocess"] = max_diff(
            [f.values for f in expected], [a["forecast"] for a in answer.json()]
        )

        def eager(x) -> int:
            with torch.inference_mode():
                module(torch.from_numpy(x))
            return len(x)

        def eager_features(group) -> int:
            with torch.inference_mode():
                module(torch.from_numpy(window_inputs(task, model.spec, group, WINDOW)))
            return len(group)

        def ort_alone(x) -> int:
            model.session.run(None, {"x": x})
            return len(x)

        def in_process(group) -> int:
            return len(forecast_windows(task, model, group))

        client = httpx.Client(
            base_url=service.url,
            timeout=120,
            limits=httpx.Limits(max_connections=2 * BIG, max_keepalive_connections=2 * BIG),
        )
        statuses: collections.Counter[int] = collections.Counter()

        def predict(body: bytes) -> int:
            response = client.post("/predict", content=body, headers=JSON_HEADERS)
            statuses[response.status_code] += 1
            return body.count(b'"site_id"') if response.status_code == 200 else 0

        bare_client = httpx.Client(
            base_url=bare.url,
            timeout=120,
            limits=httpx.Limits(max_connections=2 * BIG, max_keepalive_connections=2 * BIG),
        )

        def bare_predict(body: bytes) -> int:
            response = bare_client.post("/predict", content=body, headers=JSON_HEADERS)
            statuses[response.status_code] += 1
            return body.count(b'"x"') if response.status_code == 200 else 0

        answer = bare_client.post("/predict", content=bare_bodies[BIG][0], headers=JSON_HEADERS)
        answer.raise_for_status()
        parity["bare_vs_inprocess"] = max_diff(
            [f.values for f in expected], [a["forecast"] for a in answer.json()]
        )

        # Every window once through both services first, as a service that has run a while
        # has: the first window of a site and month computes that month's clear-sky table
        # (~17 ms), which a short row would otherwise count against a few of its requests.
        for body in [*bodies[1], *bodies[BIG], *row_bodies[1]]:
            predict(body)
        for body in [*bare_bodies[1], *bare_bodies[BIG]]:
            bare_predict(body)
        print(f"measuring ({seconds:g}s per row after {warmup:g}s warm-up) ...")
        grid = ((1, 1), (BIG, 1), (1, BIG), (BIG, BIG))
        for batch, conc in grid:
            path = "PyTorch eager (prepared inputs)"
            rows.append(
                measure(Row("eager", path, batch, conc), eager, prepared[batch], seconds, warmup)
            )
        for batch in (1, BIG):
            path = "PyTorch eager + features"
            rows.append(
                measure(
                    Row("eager", path, batch, 1), eager_features, batches[batch], seconds, warmup
                )
            )
        for batch, conc in grid:
            path = "(a) onnxruntime session.run alone"
            rows.append(
                measure(Row("ort", path, batch, conc), ort_alone, prepared[batch], seconds, warmup)
            )

        # Each service row right after the in-process row it is compared with, so that
        # whatever else the machine does weighs on both alike.
        stream_first = None
        for batch, conc in grid:
            path = "(b) in-process forecast_windows"
            rows.append(
                measure(
                    Row("inproc", path, batch, conc), in_process, batches[batch], seconds, warmup
                )
            )
            row = Row("bare", "bare BentoML POST /predict (model inputs)", batch, conc)
            rows.append(
                measure(
                    row, bare_predict, bare_bodies[batch], seconds, warmup, bare, statuses.clear
                )
            )
            row.notes["statuses"] = {str(k): v for k, v in sorted(statuses.items())}
            row = Row("predict", "service POST /predict (HTTP)", batch, conc)
            rows.append(
                measure(row, predict, bodies[batch], seconds, warmup, service, statuses.clear)
            )
            row.notes["statuses"] = {str(k): v for k, v in sorted(statuses.items())}
            if conc == 1:
                row = Row("predict_rows", "service POST /predict, per-reading form", batch, 1)
                rows.append(
                    measure(
                        row, predict, row_bodies[batch], seconds, warmup, service, statuses.clear
                    )
                )
                row.notes["statuses"] = {str(k): v for k, v in sorted(statuses.items())}
            if batch == 1:
                row = Row("stream", "service /stream, 1 message in flight", 1, conc)
                row, first = measure_stream(
                    service,
                    row,
                    stream_one_at_a_time(service, lines, required, conc, seconds),
                    stream_one_at_a_time(service, lines, required, conc, warmup),
                )
                rows.append(row)
                stream_first = stream_first or first
            elif conc == 1:
                bulk = readings[: config["bulk_readings"]]
                # batch 0: the bulk row (all readings at once), told apart from batch 1
                row = Row("stream", "service /stream bulk (stream_readings, rate=0)", 0, 1)
                rows.append(measure_stream(service, row, stream_bulk(service, bulk))[0])
                row.requests = len(bulk)
                row.notes["readings_per_s"] = len(bulk) / row.wall_s
        soak = args.soak if args.soak is not None else (0 if args.quick else 60)
        if soak:
            print(f"soak: /predict, {BIG} windows x concurrency {BIG}, {soak:g} s ...")
            row = Row("soak", f"service POST /predict, {soak:g} s soak", BIG, BIG)
            rows.append(measure(row, predict, bodies[BIG], soak, 0, service, statuses.clear))
            row.notes["statuses"] = {str(k): v for k, v in sorted(statuses.items())}
        client.close()
        bare_client.close()

        # The stream's first forecast is the one of its first `required` readings.
        first = [{k: r[k] for k in columns} for r in readings[:required]]
        expected = forecast_windows(
            task, model, [Window(SITE, readings_columns(first, task.schema))]
        )
        parity["service_stream_vs_inprocess"] = max_diff(
            [expected[0].values], [stream_first["forecast"]]
        )
    finally:
        service.stop()
        bare.stop()

    targets = evaluate_targets(rows)
    print_table(rows)
    print_targets(targets)
    big_b, c32 = find(rows, "inproc", BIG, 1), find(rows, "predict", 1, BIG)
    print()
    print(
        f"for reference: predict, 1 window x conc {BIG}, vs (b) at batch {BIG}, conc 1 (the "
        f"batch adaptive batching could form): {c32.throughput / big_b.throughput:.2f}x"
    )
    for batch in (1, BIG):
        served, b = find(rows, "predict", batch, 1), find(rows, "inproc", batch, 1)
        print(
            f"CPU per forecast, predict {batch} window(s)/request vs (b), conc 1: service "
            f"{served.notes['cpu_ms_per_forecast']:.2f} ms (+ client "
            f"{served.notes['client_cpu_ms_per_forecast']:.2f}) vs "
            f"{b.notes['cpu_ms_per_forecast']:.2f} ms in-process: "
            f"{served.notes['cpu_ms_per_forecast'] / b.notes['cpu_ms_per_forecast']:.2f}x"
        )
    shed = sum(int(r.notes.get("statuses", {}).get("503", 0)) for r in rows)
    if shed:
        print(
            f"NOTE: {shed} predict requests got 503: BentoML's adaptive batcher drops a queued "
            f"request once its estimated latency passes serve.max_latency_ms "
            f"({params.serve.max_latency_ms} ms); try LOOPLINE_SERVE_MAX_LATENCY_MS=5000."
        )
    other = statistics.mean(r.notes["other_cpu_cores"] for r in rows)
    if other > 0.2:
        print(
            f"NOTE: other processes used {other:.2f} of {os.cpu_count()} cores on average "
            "during the rows (see `other`): wall-clock ratios are biased against the service, "
            "whose client and server processes share what is left; CPU ms per forecast is not."
        )
    print(
        f"same model: max |torch - onnxruntime| {parity['torch_vs_onnxruntime']:.2g} W; "
        f"max |service - in-process| {parity['service_predict_vs_inprocess']:.2g} W (predict), "
        f"{parity['service_stream_vs_inprocess']:.2g} W (stream; the service rounds to 1 mW)"
    )
    print(
        "definitions: windows/s = forecasts per second; p50/p99 per call (in-process), per "
        "request (predict), send -> forecast line (stream); cpu ms = CPU per forecast (the "
        "service's for service rows, this process's otherwise); other = CPU cores used by "
        "other processes on the machine during the row (noise); (a) = session.run on prepared "
        "inputs; (b) = forecast_windows: features (column arrays) + onnxruntime on the raw "
        "windows, "
        "the same work as the service without HTTP; bare = the hand-written BentoML service. "
        "Targets are ratios to bare; `vs (b)` is the same ratio (difference for the "
        "overhead) against (b)."
    )
    serve = params.serve
    print(
        f"setup: {platform.machine()}, {os.cpu_count()} cores; onnxruntime {threads} threads "
        f"({', '.join(model.providers)}); torch {torch.get_num_threads()} threads; service "
        f"workers={serve.workers} max_batch_size={serve.max_batch_size} "
        f"max_latency_ms={serve.max_latency_ms}; load generator on the same machine; "
        f"{'quick' if args.quick else 'full'} run, {seconds:g}s per row, "
        f"{time.perf_counter() - total_started:.0f}s in all; load average (1 min) "
        f"{load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after"
    )
    if args.json:
        summary = {
            "config": {
                **config,
                "quick": args.quick,
                "cores": os.cpu_count(),
                "onnxruntime_threads": threads,
                "torch_threads": torch.get_num_threads(),
                "required_readings": required,
                "serve": serve.model_dump(),
            },
            "rows": [asdict(r) for r in rows],
            "targets": targets,
            "parity_w": parity,
        }
        args.json.write_text(json.dumps(summary, indent=2))
        print(f"wrote {args.json}")
    shutil.rmtree(base, ignore_errors=True)


def as_columns(readings: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Readings (dicts) as the columnar form: one list per field."""
    return {field: [r[field] for r in readings] for field in readings[0]}


def chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def max_diff(expected, served) -> float:
    import numpy as np

    return max(
        float(np.abs(np.asarray(e, dtype=np.float64) - np.asarray(s, dtype=np.float64)).max())
        for e, s in zip(expected, served, strict=True)
    )


if __name__ == "__main__":
    main()
