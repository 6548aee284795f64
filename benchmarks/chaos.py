"""Chaos: what breaks, what is lost and how long `/livez` stalls when the service is abused.

Run: .venv/bin/python benchmarks/chaos.py [--quick] [--json PATH]
(--quick: shorter load and waits, about 4 minutes on 2 cores; the full run about 8).

One run publishes a small seeded GRU forecaster (the serving benchmark's recipe, imported
from benchmarks/serving.py) as the champion of a fresh solar project, and a digit
classifier (`loopline run` on the digits task, tiny settings), starts real services with
`loopline serve` subprocesses on loopback and, one scenario after another:

  kill -9 worker        /predict load from 8 threads on 2 workers; one worker SIGKILLed
                        halfway (BentoML restarts it)
  registry down (start) a service whose HTTP registry accepts connections and never
                        answers: when does `/livez` first answer?
  registry down (mid)   the registry store made unreadable under /predict load, then
                        restored: do requests fail, does the poll error surface?
  corrupt champion      a registered version whose model.onnx is damaged is promoted
                        under load, then the service restarts on it
  2,000 idle streams    2,000 `/stream` connections holding half a line, closed at once
  8 bombs (20000²)      8 concurrent PNG uploads declaring 20000×20000 (over Pillow's
                        decompression-bomb limit), valid uploads beside them
  8 × 9000² uploads     8 concurrent valid PNGs of 9000×9000 (under the bomb limit: a
                        decoder that runs before the size check allocates 81 MB each)
  explain flood         4 /predict clients alone, then beside 2 clients flooding /explain
                        (2,000 images a request, and the most a request may hold): the
                        light clients' failures and p99 against their p99 alone

and prints per scenario: requests sent / failed (≥ 500 or no answer; expected 4xx/503
refusals are counted apart), forecasts answered vs rows in the prediction log (lost
records), rows logged beyond the answers (extra), and `/livez`'s worst latency (polled every 50 ms)
during it. `uptime` is printed beside the table: the machine's load is part of every
number.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench_modules import serving_benchmark  # noqa: E402

_bench = serving_benchmark()
PROJECT, SITE, Service = _bench.PROJECT, _bench.SITE, _bench.Service
publish_model, site_readings = _bench.publish_model, _bench.site_readings

FULL = {"load_s": 12.0, "hold_s": 10.0, "start_wait_s": 120.0, "streams": 2000}
QUICK = {"load_s": 5.0, "hold_s": 4.0, "start_wait_s": 45.0, "streams": 2000}


def digits_project() -> dict[str, Any]:
    """The tests' digits settings (one fixed, gentle point of the space, one torch thread):
    a seed or learning rate of its own lost to the pixel baseline on some CPUs, published
    no champion, and the digits scenarios' services never became ready."""
    from tests.pipelines.test_digits_flow import TINY_DIGITS

    return TINY_DIGITS


class RemoteRegistryService(Service):
    """The serving benchmark's `Service`, with `MLFLOW_TRACKING_URI` reaching the server
    (`Service` drops it so that a project keeps its own store)."""

    def __init__(self, root: Path, log_path: Path, tracking_uri: str):
        import subprocess

        from loopline.health import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, LOOPLINE_PROJECT=str(root), MLFLOW_TRACKING_URI=tracking_uri)
        self.log_path = log_path
        self._log = log_path.open("wb")
        loopline = str(Path(sys.executable).with_name("loopline"))
        self.proc = subprocess.Popen(
            [loopline, "serve", "--port", str(self.port), "--host", "127.0.0.1"],
            cwd=root,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@dataclass
class Row:
    scenario: str
    sent: int = 0
    failed: int = 0  # >= 500, or no answer
    refused: int = 0  # an expected 4xx / 503
    answered: int = 0  # forecasts (predictions) answered 200
    logged: int | None = None  # rows that reached the prediction log
    # Rows logged beyond the answers given: an answer written twice (a replay before answer
    # ids), or one the killed worker logged whose client never got it (at most `failed`).
    extra: int | None = None
    livez_worst_ms: float | None = None
    livez_failed: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int | None:
        return None if self.logged is None else max(self.answered - self.logged, 0)


# ----------------------------------------------------------------------------- helpers


class LivezWatch:
    """GET /livez every 50 ms in a thread; the worst latency (a failure counts as its
    time to fail) and the failures."""

    def __init__(self, url: str):
        self.url, self.worst, self.failed = url, 0.0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    ok = client.get(f"{self.url}/livez").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.worst = max(self.worst, time.perf_counter() - started)
                self.failed += not ok
                self._stop.wait(0.05)

    def __enter__(self) -> LivezWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(35)

    def into(self, row: Row) -> None:
        row.livez_worst_ms = round(self.worst * 1000, 1)
        row.livez_failed = self.failed


class Load:
    """POST `body` to `path` from `threads` threads until stopped (from `address`, a local
    address: the service tells clients apart by it); counts outcomes and keeps each answered
    request's latency. A refused or failed request pauses its thread 50 ms (a down service
    is not hammered in a tight loop) unless `pause` is off (a flooder)."""

    def __init__(
        self,
        url: str,
        body: bytes,
        threads: int = 8,
        path: str = "/predict",
        address: str | None = None,
        pause: bool = True,
    ):
        self.url, self.body, self.threads = url, body, threads
        self.path, self.address, self.pause = path, address, pause
        self.sent = self.failed = self.refused = self.answered = 0
        self.latencies: list[float] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool: list[threading.Thread] = []

    def _run(self) -> None:
        import httpx

        headers = {"content-type": "application/json"}
        transport = httpx.HTTPTransport(local_address=self.address)
        with httpx.Client(transport=transport, timeout=60) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    status = client.post(
                        f"{self.url}{self.path}", content=self.body, headers=headers
                    ).status_code
                except httpx.HTTPError:
                    status = 0
                took = time.perf_counter() - started
                with self._lock:
                    self.sent += 1
                    self.answered += status == 200
                    self.refused += 400 <= status < 500 or status == 503
                    self.failed += status == 0 or (status >= 500 and status != 503)
                    if status == 200:
                        self.latencies.append(took)
                if status != 200 and (self.pause or status == 0 or status >= 500):
                    time.sleep(0.05)

    def p99_ms(self) -> float:
        import numpy as np

        return float(np.percentile(self.latencies, 99) * 1000) if self.latencies else float("nan")

    def __enter__(self) -> Load:
        self._pool = [threading.Thread(target=self._run, daemon=True) for _ in range(self.threads)]
        for thread in self._pool:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._pool:
            thread.join(35)

    def into(self, row: Row) -> None:
        row.sent += self.sent
        row.failed += self.failed
        row.refused += self.refused
        row.answered += self.answered


@contextlib.contextmanager
def environment(**values: str | None) -> Iterator[None]:
    """Set (None: remove) environment variables for what starts inside (a Service)."""
    saved = {k: os.environ.get(k) for k in values}
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def logged_rows(root: Path) -> int:
    from loopline.online.predlog import read_predictions
    from loopline.params import load_params
    from loopline.paths import ProjectPaths

    paths = ProjectPaths.at(root)
    db = paths.state / "predictions.db"
    if not db.exists():
        return 0
    return len(read_predictions(paths.prediction_log_url(load_params(paths.params_file))))


def written_twice(root: Path) -> int:
    """Rows of the prediction log whose answer id another row has too (the log's unique
    key makes this 0; counted here, not assumed)."""
    from loopline.online.predlog import read_predictions
    from loopline.params import load_params
    from loopline.paths import ProjectPaths

    paths = ProjectPaths.at(root)
    rows = read_predictions(paths.prediction_log_url(load_params(paths.params_file)))
    ids = [r["answer_id"] for r in rows if r["answer_id"] is not None]
    return len(ids) - len(set(ids))


def settle_log(root: Path, expected: int, timeout_s: float = 10.0) -> int:
    """Rows in the prediction log once it stops growing (or reaches `expected`)."""
    deadline, last = time.monotonic() + timeout_s, -1
    while True:
        count = logged_rows(root)
        if count >= expected or time.monotonic() > deadline:
            return count
        if count == last:
            time.sleep(1.0)
            if logged_rows(root) == count:
                return count
        last = count
        time.sleep(0.5)


def workers_of(service: Service) -> list[int]:
    import psutil

    found = []
    for child in psutil.Process(service.proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "worker" in " ".join(child.cmdline()):
                found.append(child.pid)
    return found


def ready_within(url: str, seconds: float) -> float | None:
    import httpx

    deadline, started = time.monotonic() + seconds, time.monotonic()
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return time.monotonic() - started
        time.sleep(0.25)
    return None


def metadata(url: str) -> dict[str, Any]:
    import httpx

    try:
        return httpx.get(f"{url}/metadata", timeout=10).json()
    except (httpx.HTTPError, ValueError):
        return {}


# ----------------------------------------------------------------------------- scenarios


def kill_worker(root: Path, base: Path, body: bytes, config) -> Row:
    row = Row("kill -9 worker (2 workers)")
    before = logged_rows(root)
    with environment(LOOPLINE_SERVE_WORKERS="2"):
        service = Service(root, base / "kill.log")
    try:
        service.wait_ready()
        with LivezWatch(service.url) as watch, Load(service.url, body) as load:
            time.sleep(config["load_s"] / 2)
            victims = workers_of(service)
            if victims:
                os.kill(victims[0], signal.SIGKILL)
                row.notes.append(f"killed worker pid {victims[0]} of {len(victims)}")
            else:
                row.notes.append("no worker process found to kill")
            time.sleep(config["load_s"] / 2)
        load.into(row)
        watch.into(row)
    finally:
        service.stop()  # SIGTERM: the surviving worker flushes its queue
    # A restarted service replays whatever spool the killed worker left.
    restart = Service(root, base / "kill-restart.log")
    try:
        restart.wait_ready()
        row.logged = settle_log(root, before + row.answered) - before
        row.extra = max(row.logged - row.answered, 0)
        twice = written_twice(root)
        row.notes.append(f"answers written twice (the same answer_id): {twice}")
    finally:
        restart.stop()
    return row


def registry_down_at_start(root: Path, base: Path, config) -> Row:
    """An HTTP registry that accepts the connection and never answers (a black hole)."""
    import httpx

    row = Row("registry down (at start)")
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(1000)  # connections complete in the backlog; nothing is ever read
    uri = f"http://127.0.0.1:{hole.getsockname()[1]}"
    service = RemoteRegistryService(root, base / "down-start.log", uri)
    started, first = time.monotonic(), None
    try:
        deadline = started + config["start_wait_s"]
        while time.monotonic() < deadline and service.proc.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{service.url}/livez", timeout=2).status_code == 200:
                    first = time.monotonic() - started
                    break
            time.sleep(0.25)
        if first is None:
            row.notes.append(f"/livez never answered within {config['start_wait_s']:.0f}s")
            row.livez_worst_ms = config["start_wait_s"] * 1000
        else:
            row.notes.append(f"/livez first answered after {first:.1f}s")
            row.livez_worst_ms = round(first * 1000, 1)
            for _ in range(5):
                row.sent += 1
                with contextlib.suppress(httpx.HTTPError):
                    status = httpx.post(f"{service.url}/predict", json={}, timeout=10).status_code
                    row.refused += status in (400, 503)
                    row.failed += status >= 500 and status != 503
                    continue
                row.failed += 1
            ready = httpx.get(f"{service.url}/readyz", timeout=10)
            row.notes.append(f"/readyz {ready.status_code}: {ready.text[:80]}")
    finally:
        service.stop()
        hole.close()
    return row


def registry_down_mid_run(root: Path, base: Path, body: bytes, config) -> Row:
    """The project's SQLite registry made unreadable under load, then restored."""
    from loopline.paths import ProjectPaths

    row = Row("registry down (mid-run)")
    before = logged_rows(root)
    db = ProjectPaths.at(root).mlflow_db
    with environment(LOOPLINE_SERVE_POLL_INTERVAL_S="1"):
        service = Service(root, base / "down-mid.log")
    try:
        service.wait_ready()
        saved = db.read_bytes()
        with LivezWatch(service.url) as watch, Load(service.url, body) as load:
            time.sleep(1.0)
            db.write_bytes(b"this is not a database" * 4096)
            broken_at = time.monotonic()
            surfaced = None
            while time.monotonic() - broken_at < config["load_s"] + 10:
                if metadata(service.url).get("last_poll_error"):
                    surfaced = time.monotonic() - broken_at
                    break
                time.sleep(0.5)
            time.sleep(max(0.0, config["load_s"] - (time.monotonic() - broken_at)))
            db.write_bytes(saved)
            time.sleep(2.0)
        load.into(row)
        watch.into(row)
        said = "never" if surfaced is None else f"after {surfaced:.1f}s"
        row.notes.append(f"poll error surfaced in /metadata {said}")
        row.logged = settle_log(root, before + row.answered) - before
    finally:
        if db.read_bytes()[:6] == b"this i":
            db.write_bytes(saved)
        service.stop()
    return row


def register_broken_version(root: Path) -> str:
    import mlflow

    from loopline import registry
    from loopline.params import load_params
    from loopline.paths import ProjectPaths

    paths = ProjectPaths.at(root)
    params = load_params(paths.params_file)
    uri = paths.tracking_uri()
    experiment = mlflow.MlflowClient(uri).get_experiment_by_name(params.experiment_name)
    run_id = mlflow.MlflowClient(uri).create_run(experiment.experiment_id).info.run_id
    broken = paths.state / "chaos-broken" / "model.onnx"
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_bytes(b"\x08\x07 a damaged upload, not an onnx model")
    return registry.register_file(uri, run_id, broken, params.model_name, {})


def corrupt_champion(root: Path, base: Path, body: bytes, config) -> Row:
    from loopline import registry
    from loopline.params import load_params
    from loopline.paths import ProjectPaths

    row = Row("corrupt champion")
    paths = ProjectPaths.at(root)
    name = load_params(paths.params_file).model_name
    uri = paths.tracking_uri()
    good = str(registry.champion_version(uri, name).version)
    before = logged_rows(root)
    with environment(LOOPLINE_SERVE_POLL_INTERVAL_S="1"):
        service = Service(root, base / "corrupt.log")
    try:
        service.wait_ready()
        with LivezWatch(service.url) as watch, Load(service.url, body) as load:
            broken = register_broken_version(root)
            registry.move_champion(uri, name, broken, reason="chaos: a damaged upload")
            time.sleep(config["load_s"])
        swap_error = metadata(service.url).get("last_swap_error")
        row.notes.append(f"hot swap to v{broken}: " + ("refused" if swap_error else "not refused"))
        service.stop()
        with environment(LOOPLINE_SERVE_POLL_INTERVAL_S="1"):
            restarted = Service(root, base / "corrupt-restart.log")
        service = restarted
        ready = ready_within(service.url, config["start_wait_s"])
        if ready is None:
            row.notes.append(f"restart on v{broken}: not ready in {config['start_wait_s']:.0f}s")
        else:
            serving = (metadata(service.url).get("model") or {}).get("version")
            row.notes.append(f"restart on v{broken}: ready in {ready:.1f}s serving v{serving}")
        with Load(service.url, body) as after:
            time.sleep(2.0)
        load.into(row)
        after.into(row)
        watch.into(row)
        row.logged = settle_log(root, before + row.answered) - before
    finally:
        service.stop()
        with contextlib.suppress(Exception):
            registry.move_champion(uri, name, good, reason="chaos: back to the good one")
    return row


async def hold_streams(url: str, count: int, hold_s: float) -> dict[str, Any]:
    """Open `count` /stream requests that each send half a line and wait; then close all at
    once. Returns how many were held open (no answer yet, or a 200 stream started),
    refused (503, 408, 413, 429), answered otherwise, failed to connect."""
    host, port = url.removeprefix("http://").split(":")
    head = (
        f"POST /stream HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-ndjson\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    half = b'{"site_id": "' + SITE.encode() + b'", "timest'
    chunk = f"{len(half):x}\r\n".encode() + half + b"\r\n"
    writers, outcome = [], {"open": 0, "refused": 0, "connect_failed": 0}

    async def one():
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, int(port)), timeout=10
            )
        except (OSError, TimeoutError):
            outcome["connect_failed"] += 1
            return
        writers.append(writer)
        writer.write(head + chunk)
        with contextlib.suppress(OSError):
            await writer.drain()
        try:
            first = await asyncio.wait_for(reader.readline(), timeout=hold_s)
        except TimeoutError:
            outcome["open"] += 1  # held, unanswered: what a slow client gets
            return
        except OSError:
            outcome["connect_failed"] += 1
            return
        status = first.split(b" ")[1:2]
        code = int(status[0]) if status and status[0].isdigit() else 0
        if code in (503, 408, 413, 429):
            outcome["refused"] += 1
        elif code == 200:  # the answer started (a duplex stream answers as lines come)
            outcome["open"] += 1
        else:
            outcome[f"status_{code}"] = outcome.get(f"status_{code}", 0) + 1

    await asyncio.gather(*(one() for _ in range(count)))
    for writer in writers:  # all at once, as a load balancer dropping its connections does
        writer.transport.abort()
    return outcome


def idle_streams(root: Path, base: Path, body: bytes, config) -> Row:
    import httpx

    row = Row(f"{config['streams']:,} idle streams")
    before = logged_rows(root)
    service = Service(root, base / "streams.log")
    try:
        service.wait_ready()
        with LivezWatch(service.url) as watch, Load(service.url, body, threads=2) as load:
            outcome = asyncio.run(hold_streams(service.url, config["streams"], config["hold_s"]))
            time.sleep(2.0)  # /livez after the mass close
        load.into(row)
        watch.into(row)
        row.notes.append(", ".join(f"{k} {v}" for k, v in outcome.items() if v))
        service._log.flush()
        log = service.log_path.read_text(errors="replace")
        row.notes.append(f"server log {len(log) // 1024} KB, {log.count('Traceback')} tracebacks")
        alive = httpx.get(f"{service.url}/livez", timeout=10).status_code
        row.notes.append(f"/livez after: {alive}")
        row.logged = settle_log(root, before + row.answered) - before
    finally:
        service.stop()
    return row


def publish_digits(base: Path) -> Path:
    import subprocess

    import yaml

    root = base / "digits"
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(digits_project(), sort_keys=False))
    loopline = str(Path(sys.executable).with_name("loopline"))
    env = dict(os.environ, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120")
    env.update(PREFECT_HOME=str(base / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.update(PREFECT_LOGGING_LEVEL="WARNING", OMP_NUM_THREADS="1")
    done = subprocess.run(
        [loopline, "run", "--project", str(root)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(
            f"loopline run (digits) failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
        )
    return root


def uploads(root: Path, base: Path, label: str, bad: bytes, count: int = 8) -> Row:
    """`count` concurrent uploads of `bad` with valid uploads beside them."""
    import httpx

    sys.path.insert(0, str(REPO))
    from tests.reliability.conftest import png_declaring

    row = Row(label)
    before = logged_rows(root)
    good = png_declaring(32, 32)  # a blank page: a valid, tiny upload
    service = Service(root, base / f"uploads-{count}.log")
    try:
        service.wait_ready()

        def send(data: bytes, address: str) -> int:
            # Bombs from one address, valid uploads from others (each client its share).
            transport = httpx.HTTPTransport(local_address=address)
            try:
                with httpx.Client(transport=transport, timeout=60) as client:
                    return client.post(
                        f"{service.url}/predict_image",
                        files={"file": ("x.png", data, "image/png")},
                    ).status_code
            except httpx.HTTPError:
                return 0

        with LivezWatch(service.url) as watch, ThreadPoolExecutor(count + 4) as pool:
            time.sleep(0.3)
            started = time.perf_counter()
            bombs = [pool.submit(send, bad, "127.0.0.1") for _ in range(count)]
            valid = [pool.submit(send, good, f"127.0.0.{10 + n}") for n in range(4)]
            statuses = [f.result() for f in bombs]
            fine = [f.result() for f in valid]
            took = time.perf_counter() - started
            time.sleep(0.3)
        watch.into(row)
        row.sent = len(statuses) + len(fine)
        row.failed = sum(s == 0 or s >= 500 for s in statuses + fine)
        row.refused = sum(400 <= s < 500 for s in statuses)
        row.answered = sum(s == 200 for s in fine)
        row.notes.append(f"bomb answers {sorted(set(statuses))} in {took:.1f}s")
        row.notes.append(f"valid uploads {fine}")
        row.logged = settle_log(root, before + row.answered) - before
    finally:
        service.stop()
    return row


def explain_flood(root: Path, base: Path, config) -> Row:
    """Four /predict clients (one image each) alone, then beside two clients flooding
    /explain: one sending 2,000 images a request (the 8 MiB body holds ~24,000), one the
    most a request may hold (serve.max_explain_items). The light clients' failures and p99
    against their p99 alone."""
    import httpx

    row = Row("explain flood beside /predict")
    service = Service(root, base / "explain-flood.log")
    try:
        service.wait_ready()
        described = httpx.get(f"{service.url}/metadata", timeout=10).json()["model"]
        size = described["image_size"]
        image = [[0.5] * size for _ in range(size)]
        light = json.dumps({"images": [image]}).encode()
        most = int(os.environ.get("LOOPLINE_SERVE_MAX_EXPLAIN_ITEMS", "16"))
        flood = [json.dumps({"images": [image] * n}).encode() for n in (2000, most)]
        with Load(service.url, light, 4) as alone:
            time.sleep(config["load_s"])
        with LivezWatch(service.url) as watch, Load(service.url, light, 4) as beside:
            heavy = [Load(service.url, b, 1, "/explain", "127.0.0.3", pause=False) for b in flood]
            with heavy[0], heavy[1]:
                time.sleep(config["load_s"])
        watch.into(row)
        beside.into(row)
        ratio = beside.p99_ms() / alone.p99_ms()
        row.notes.append(
            f"light p99 {beside.p99_ms():.1f} ms beside the flood, {alone.p99_ms():.1f} ms "
            f"alone: {ratio:.2f}x (target <= 3x); {beside.answered} vs {alone.answered} "
            f"answered"
        )
        for label, flooder in zip(("2,000-image", f"{most}-image"), heavy, strict=True):
            row.notes.append(
                f"{label} /explain: {flooder.sent} sent, {flooder.answered} answered, "
                f"{flooder.refused} refused, {flooder.failed} failed"
            )
        tracebacks = service.log_path.read_text(errors="replace").count("Traceback")
        row.notes.append(f"tracebacks in the service log: {tracebacks}")
    finally:
        service.stop()
    return row


# ----------------------------------------------------------------------------- report


def print_table(rows: list[Row], load: str) -> None:
    header = (
        f"{'scenario':30} {'sent':>6} {'failed':>6} {'refused':>7} {'answered':>8} "
        f"{'logged':>6} {'lost':>5} {'extra':>5} {'livez worst ms':>14} {'livez fail':>10}"
    )
    print(f"\n{header}\n{'-' * len(header)}")
    for r in rows:
        logged = "-" if r.logged is None else r.logged
        lost = "-" if r.lost is None else r.lost
        extra = "-" if r.extra is None else r.extra
        worst = "-" if r.livez_worst_ms is None else f"{r.livez_worst_ms:,.0f}"
        print(
            f"{r.scenario:30} {r.sent:6} {r.failed:6} {r.refused:7} {r.answered:8} "
            f"{logged!s:>6} {lost!s:>5} {extra!s:>5} {worst:>14} {r.livez_failed:10}"
        )
        for note in r.notes:
            print(f"{'':32}{note}")
    print(f"\nload: {load}")


def uptime() -> str:
    import subprocess

    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter load and waits")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    parser.add_argument(
        "--only",
        help="comma-separated scenario keys: kill,start,mid,corrupt,streams,bombs,explain",
    )
    args = parser.parse_args()
    config = dict(QUICK if args.quick else FULL)
    wanted = set((args.only or "kill,start,mid,corrupt,streams,bombs,explain").split(","))
    import yaml

    for var in ("MLFLOW_TRACKING_URI", "LOOPLINE_HOME"):
        os.environ.pop(var, None)  # each project keeps its own embedded state
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    base = Path(tempfile.mkdtemp(prefix="loopline-chaos-"))
    root = base / "proj"
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(PROJECT, sort_keys=False))
    from loopline.paths import ProjectPaths, apply_environment

    apply_environment(ProjectPaths.at(root))
    print(f"load at start: {uptime()}")
    print(f"publishing a seeded GRU forecaster into {root} ...")
    publish_model(root)
    readings = site_readings(root)
    window = [{k: v for k, v in r.items() if k != "site_id"} for r in readings[:48]]
    body = json.dumps({"windows": [{"site_id": SITE, "readings": window}]}).encode()

    rows: list[Row] = []
    scenarios = [
        ("kill", lambda: kill_worker(root, base, body, config)),
        ("start", lambda: registry_down_at_start(root, base, config)),
        ("mid", lambda: registry_down_mid_run(root, base, body, config)),
        ("corrupt", lambda: corrupt_champion(root, base, body, config)),
        ("streams", lambda: idle_streams(root, base, body, config)),
    ]
    for key, run in scenarios:
        if key in wanted:
            print(f"scenario {key} ...", flush=True)
            rows.append(run())
    if wanted & {"bombs", "explain"}:
        sys.path.insert(0, str(REPO))
        from tests.reliability.conftest import png_declaring

        print("publishing a digit classifier (loopline run, tiny settings) ...", flush=True)
        digits = publish_digits(base)
        if "bombs" in wanted:
            print("scenario bombs ...", flush=True)
            bomb = png_declaring(20000, 20000, rows=2)
            rows.append(uploads(digits, base, "8 bombs (20000x20000)", bomb))
            big = png_declaring(9000, 9000)
            rows.append(uploads(digits, base, "8 x 9000x9000 uploads", big))
        if "explain" in wanted:
            print("scenario explain ...", flush=True)
            rows.append(explain_flood(digits, base, config))
    load = uptime()
    print_table(rows, load)
    if args.json:
        data = [{**asdict(r), "lost": r.lost} for r in rows]
        args.json.write_text(json.dumps({"load": load, "rows": data}, indent=2))
    print(f"state kept in {base}")


if __name__ == "__main__":
    main()
