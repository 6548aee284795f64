"""Serving overhead of the review and digit services: each against a bare BentoML service
of its own on the same model file.

Run: .venv/bin/python benchmarks/serving_tasks.py [--quick] [--json PATH] [--only reviews|digits]
(--quick: about 4 minutes on 2 cores at load 4, of which the two tiny offline runs that
publish the champions take about 2.5 and the 30 rows of 2 s about 1.5; the full run's rows
take 6 s, about 6.5 minutes in all).

For each task one run publishes a champion through the real offline flow (tiny data: the
tests' recipes), downloads the champion's folder from the registry, loads it in-process the
way the service loads it, and starts, side by side, the real service on it (`loopline
serve`) and the bare BentoML service of `benchmarks/bare_service.py` on that same
`model.onnx` (`bentoml serve`, as a hand-written service is started). Then, one after the
other for each request kind, batch and concurrency (the forecaster's method,
`benchmarks/serving.py`), the same items three ways:

  (b) in-process   the task's serving adapter (`Serving.predict`; uploads: `item_from_file`
                   first): the library's work without HTTP, for reference
  bare BentoML     POST /predict with the model's own inputs
  Loopline         the service's endpoint

  reviews  /predict {"texts": [...]}, 256 texts and 1 text per request;
           bare: the same texts as token ids, from the champion's own vocabulary (the
           `Vocabulary` embedded in its ONNX file, as the service encodes them), so both
           answer the same texts; tokenizing (about 5 ms per 256 texts) is thus the
           client's work for bare and the service's for Loopline, part of what it adds
  digits   /predict {"images": [...]}: 8x8 pixel arrays (0..1), 32 images and 1 image per
           request; /predict_image: one 32 px PNG upload per request (at most
           `serve.max_heavy_per_client`, 2, in flight per client: more get a 429 by
           design); bare: the same images' pixels as the model reads them (for uploads:
           what `item_from_file` makes of the PNG)

at concurrency 1 and 32 (uploads 1 and 2), httpx threads on the same machine. Targets, as
`benchmarks/serving.py` sets them for the forecaster (issue 27), PASS/MISS per pair:
throughput >= 0.8x bare at every batch and concurrency; p50 <= bare + 1 ms at concurrency
1. The table prints CPU ms per item (the service's own for service rows) beside each row,
and the targets' `from` both services' CPU per item: wall-clock rates are noisy on a shared
machine, CPU per item much less; say the load (`uptime`) beside any number.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench_modules import serving_benchmark

REPO = Path(__file__).resolve().parents[1]
BATCH_TEXTS, BATCH_IMAGES = 256, 32
CONCURRENCY = (1, 32)
UPLOAD_CONCURRENCY = (1, 2)  # serve.max_heavy_per_client: more uploads in flight get 429
FULL = {"seconds": 6.0, "warmup": 1.5}
QUICK = {"seconds": 2.0, "warmup": 0.5}
JSON_HEADERS = {"content-type": "application/json"}
BARE = {"reviews": "BareText", "digits": "BareImage"}


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


def digit_arrays():
    """Training digits as the service's arrays: 8x8, 0..1, ink high (raw / 16)."""
    from sklearn.datasets import load_digits

    return load_digits().images[:256] / 16.0


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


# ----------------------------------------------------------------------------- pairs


@dataclass
class Kind:
    """One request kind of a task, measured three ways on the same items: `in_process`
    over `local` (the adapter, no HTTP), bare BentoML's /predict over `bare` (JSON bodies of
    the model's own inputs), and Loopline's `served` over `sent`. Each call returns the
    items answered (0 on an error)."""

    label: str  # what one Loopline request holds, e.g. "256 texts"
    bare_label: str  # what one bare request holds, e.g. "256 texts as ids"
    endpoint: str  # Loopline's path
    batch: int
    concurrency: tuple[int, ...]
    in_process: Callable[[Any], int]
    local: list
    bare: list[tuple[bytes, int]]  # (body, items)
    served: Callable[[Any], int]
    sent: list


class Clients:
    """Pooled httpx clients to the two services, counting each answer's status and keeping
    the first refusal's body."""

    def __init__(self, loopline_url: str, bare_url: str):
        import httpx

        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        self.loopline = httpx.Client(base_url=loopline_url, timeout=120, limits=limits)
        self.bare_client = httpx.Client(base_url=bare_url, timeout=120, limits=limits)
        self.statuses: collections.Counter[int] = collections.Counter()
        self.refused: list[str] = []

    def counted(self, response, items: int) -> int:
        self.statuses[response.status_code] += 1
        if response.status_code != 200 and not self.refused:
            self.refused.append(f"{response.url.path} HTTP {response.status_code}: ")
            self.refused[0] += response.text[:300]
        return items if response.status_code == 200 else 0

    def post_json(self, body: bytes, items: int) -> int:
        return self.counted(
            self.loopline.post("/predict", content=body, headers=JSON_HEADERS), items
        )

    def bare(self, body: tuple[bytes, int]) -> int:
        data, items = body
        return self.counted(
            self.bare_client.post("/predict", content=data, headers=JSON_HEADERS), items
        )

    def close(self) -> None:
        self.loopline.close()
        self.bare_client.close()


def chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def review_kinds(adapter, model, clients: Clients) -> list[Kind]:
    """/predict with 256 texts and with 1 text; bare: the same texts as token ids."""
    from loopline.tasks.text.answers import vocabulary

    texts = review_texts()
    # The service's own tokenizer: the vocabulary saved in the champion's ONNX file, each
    # text cut at the model's max_length (an empty one would be one <unk>, as served).
    vocab, max_length = vocabulary(model.spec), model.spec.options.max_length
    ids = [vocab.encode([t], max_length)[0][0].tolist() for t in texts]
    kinds = []

    def served(body: tuple[bytes, int]) -> int:
        return clients.post_json(*body)

    def in_process(items: list) -> int:
        return len(adapter.predict(model, items))

    for batch in (1, BATCH_TEXTS):
        groups, id_groups = chunks(texts, batch), chunks(ids, batch)
        kinds.append(
            Kind(
                label=f"{batch} text{'s' * (batch > 1)}",
                bare_label=f"{batch} text{'s' * (batch > 1)} as ids",
                endpoint="/predict",
                batch=batch,
                concurrency=CONCURRENCY,
                in_process=in_process,
                local=[[adapter.Request(t) for t in group] for group in groups],
                bare=[
                    (json.dumps({"texts": [{"ids": i} for i in group]}).encode(), len(group))
                    for group in id_groups
                ],
                served=served,
                sent=[(json.dumps({"texts": group}).encode(), len(group)) for group in groups],
            )
        )
    return kinds


def digit_kinds(adapter, model, clients: Clients) -> list[Kind]:
    """/predict with 32 images and with 1 (arrays), /predict_image with one PNG; bare: the
    same images' pixels, channels x rows x columns, as the model reads them."""
    arrays = digit_arrays()  # (N, 8, 8): a grey image is sent as its rows
    kinds = []

    def served(body: tuple[bytes, int]) -> int:
        return clients.post_json(*body)

    def in_process(items: list) -> int:
        return len(adapter.predict(model, items))

    for batch in (1, BATCH_IMAGES):
        groups = chunks([a.tolist() for a in arrays], batch)
        kinds.append(
            Kind(
                label=f"{batch} image array{'s' * (batch > 1)}",
                bare_label=f"{batch} image array{'s' * (batch > 1)}",
                endpoint="/predict",
                batch=batch,
                concurrency=CONCURRENCY,
                in_process=in_process,
                local=[[adapter.Request(a) for a in group] for group in groups],
                bare=[
                    (json.dumps({"images": [{"pixels": [a]} for a in group]}).encode(), len(group))
                    for group in groups
                ],
                served=served,
                sent=[(json.dumps({"images": group}).encode(), len(group)) for group in groups],
            )
        )
    uploads = digit_uploads()
    # What the service makes of each PNG (resized to the model's size, 0..1, ink high):
    # the bare service is given exactly these pixels.
    pixels = [adapter.item_from_file(data, model) for data in uploads]

    def upload(data: bytes) -> int:
        files = {"file": ("digit.png", data, "image/png")}
        return clients.counted(clients.loopline.post("/predict_image", files=files), 1)

    def upload_in_process(data: bytes) -> int:
        return len(adapter.predict(model, [adapter.item_from_file(data, model)]))

    kinds.append(
        Kind(
            label="1 PNG",
            bare_label="1 PNG's pixels",
            endpoint="/predict_image",
            batch=1,
            concurrency=UPLOAD_CONCURRENCY,
            in_process=upload_in_process,
            local=uploads,
            bare=[(json.dumps({"images": [{"pixels": p.tolist()}]}).encode(), 1) for p in pixels],
            served=upload,
            sent=uploads,
        )
    )
    return kinds


# ----------------------------------------------------------------------------- measuring


def load_champion(task_name: str, root: Path, base: Path):
    """The champion's registry folder (its `model.onnx` is the file both services load)
    and the model loaded from it in-process as the service loads it."""
    from loopline import registry
    from loopline.online.models import default_threads, load_model_folder
    from loopline.params import load_params
    from loopline.paths import ProjectPaths, apply_environment

    paths = ProjectPaths.at(root)
    apply_environment(paths)
    loaded = load_params(paths.params_file)
    uri = paths.tracking_uri()
    version = registry.champion_version(uri, loaded.served_model)
    folder = registry.download_model(
        uri, f"models:/{version.name}/{version.version}", base / f"{task_name}-champion"
    )
    threads = loaded.serve.threads or default_threads(loaded.serve.workers)
    model = load_model_folder(
        folder, version.name, version.version, "champion", threads, version.tags
    )
    return loaded, folder, model


def parity(kind: Kind, clients: Clients) -> float:
    """Max |Loopline - bare| over the class probabilities of one request's items: the same
    model file given the same items (Loopline rounds to 6 decimals)."""
    import numpy as np

    bare = clients.bare_client.post("/predict", content=kind.bare[0][0], headers=JSON_HEADERS)
    bare.raise_for_status()
    if kind.endpoint == "/predict":
        served = clients.loopline.post("/predict", content=kind.sent[0][0], headers=JSON_HEADERS)
    else:
        files = {"file": ("digit.png", kind.sent[0], "image/png")}
        served = clients.loopline.post(kind.endpoint, files=files)
    served.raise_for_status()
    answers = served.json() if isinstance(served.json(), list) else [served.json()]
    ours = np.asarray([list(a["probabilities"].values()) for a in answers])
    theirs = np.asarray([a["probabilities"] for a in bare.json()])
    return float(np.abs(ours - theirs).max())


def measure_task(bench, task_name: str, params: dict[str, Any], base: Path, config) -> dict:
    root = base / task_name
    print(f"[{task_name}] publishing a champion with the offline flow ...", flush=True)
    publish(root, params)
    loaded, folder, model = load_champion(task_name, root, base)
    adapter = loaded.plugin.Serving(loaded.plugin, loaded)
    inputs = model.session.get_inputs()[0]
    print(
        f"[{task_name}] champion v{model.version}: input {inputs.name} {inputs.type} "
        f"{inputs.shape}; both services load {folder / 'model.onnx'}",
        flush=True,
    )
    service = bench.Service(root, base / f"{task_name}.log")
    bare = bench.Service(
        root, base / f"{task_name}-bare.log", (BARE[task_name], folder / "model.onnx")
    )
    rows, answers_differ = [], {}
    seconds, warmup = config["seconds"], config["warmup"]
    try:
        print(f"[{task_name}] service ready after {service.wait_ready():.1f}s", flush=True)
        print(f"[{task_name}] bare BentoML ready after {bare.wait_ready():.1f}s", flush=True)
        clients = Clients(service.url, bare.url)
        make = review_kinds if task_name == "reviews" else digit_kinds
        kinds = make(adapter, model, clients)
        for conc, kind in schedule(kinds):
            rows += measure_kind(
                bench, task_name, kind, conc, clients, service, bare, seconds, warmup
            )
        # After the rows: a large request first would teach the batchers to wait (schedule).
        for kind in kinds:
            answers_differ[kind.label] = parity(kind, clients)
        clients.close()
        if clients.refused:
            print(f"[{task_name}] first refused request: {clients.refused[0]}")
            print(f"--- service log\n{service.tail(30)}\n--- bare log\n{bare.tail(30)}")
    finally:
        service.stop()
        bare.stop()
    return {"rows": rows, "parity": answers_differ}


def schedule(kinds: list[Kind]) -> list[tuple[int, Kind]]:
    """Every (concurrency, kind) to measure, the lightest load first: all of concurrency 1
    (small requests before large), then higher. BentoML's adaptive batcher waits for a
    batch to fill for as long as the last 50 batches waited on average, and that average
    barely decays: after rows that queued for hundreds of ms, a lone request waits as long
    too (measured: 1 text at concurrency 1 took 300 ms in both services after the 256-text
    rows at concurrency 32)."""
    pairs = [(conc, n) for n, kind in enumerate(kinds) for conc in kind.concurrency]
    return [(conc, kinds[n]) for conc, n in sorted(pairs)]


def measure_kind(bench, task_name, kind: Kind, conc, clients, service, bare, seconds, warmup):
    """(b), bare and Loopline at one concurrency, one right after the other."""
    b = bench.Row("inproc", f"{task_name}: (b) in-process, {kind.label}", kind.batch, conc)
    rows = [bench.measure(b, kind.in_process, kind.local, seconds, warmup)]
    served = (
        ("bare", f"bare /predict, {kind.bare_label}", clients.bare, kind.bare, bare),
        ("predict", f"Loopline {kind.endpoint}, {kind.label}", kind.served, kind.sent, service),
    )
    for group, path, call, items, server in served:
        row = bench.Row(group, f"{task_name}: {path}", kind.batch, conc)
        reset = clients.statuses.clear
        rows.append(bench.measure(row, call, items, seconds, warmup, server, reset))
        row.notes["statuses"] = {str(k): v for k, v in sorted(clients.statuses.items())}
    return rows


# ----------------------------------------------------------------------------- report


def evaluate_targets(rows) -> list[dict[str, Any]]:
    """Per triple (b), bare, Loopline: throughput >= 0.8x bare; at concurrency 1, p50 <=
    bare + 1 ms (the forecaster's targets, issue 27); `vs_b` is the same against (b)."""
    targets = []

    def cpu(row) -> float:
        return row.notes["cpu_ms_per_forecast"]

    for n in range(0, len(rows), 3):
        b, bare, served = rows[n : n + 3]
        name = served.path.replace("Loopline ", "")
        ratio = served.throughput / bare.throughput if bare.throughput else 0.0
        targets.append(
            {
                "target": f"{name}, conc {served.concurrency}: throughput",
                "measured": ratio,
                "op": ">=",
                "limit": 0.8,
                "unit": "x bare",
                "passed": ratio >= 0.8,
                "vs_b": served.throughput / b.throughput if b.throughput else 0.0,
                "from": f"{served.throughput:.0f} / {bare.throughput:.0f} items/s; CPU per "
                f"item {cpu(served):.2f} / {cpu(bare):.2f} ms",
            }
        )
        if served.concurrency == 1 and served.p50_ms is not None and bare.p50_ms is not None:
            over = served.p50_ms - bare.p50_ms
            targets.append(
                {
                    "target": f"{name}, conc 1: p50 overhead",
                    "measured": over,
                    "op": "<=",
                    "limit": 1.0,
                    "unit": "ms over bare",
                    "passed": over <= 1.0,
                    "vs_b": served.p50_ms - (b.p50_ms or 0.0),
                    "from": f"{served.p50_ms:.2f} - {bare.p50_ms:.2f} ms",
                }
            )
    return targets


def report(bench, results: dict[str, dict]) -> list[dict[str, Any]]:
    rows = [row for result in results.values() for row in result["rows"]]
    for result in results.values():
        bench.print_table(result["rows"])
    targets = evaluate_targets(rows)
    print()
    width = max(len(t["target"]) for t in targets)
    print(
        f"{'target':{width}s} {'measured':>9s} {'limit':>11s}  {'unit':12s} {'vs (b)':>8s}  "
        f"{'result':6s}  from"
    )
    for t in targets:
        print(
            f"{t['target']:{width}s} {t['measured']:9.2f} {t['op']} {t['limit']:8.2f}  "
            f"{t['unit']:12s} {t['vs_b']:8.3g}  {'PASS' if t['passed'] else 'MISS':6s}  "
            f"{t['from']}"
        )
    print()
    for task_name, result in results.items():
        for label, diff in result["parity"].items():
            print(f"same answers, {task_name} {label}: max |Loopline - bare| {diff:.2g}")
    print(
        "definitions: items/s (the table's windows/s) = texts or images answered per second; "
        "p50/p99 per call or request; cpu ms = CPU per item (the service's for service rows, "
        "this process's for (b)); other = CPU cores used by other processes during the row; "
        "vs (b) = the same ratio (difference) against the in-process adapter."
    )
    return targets


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
    bench = serving_benchmark()
    from tests.pipelines.test_digits_flow import TINY_DIGITS
    from tests.reviews_data import TINY_REVIEWS

    projects = {"reviews": TINY_REVIEWS, "digits": TINY_DIGITS}
    results = {
        name: measure_task(bench, name, params, base, config)
        for name, params in projects.items()
        if args.only in (None, name)
    }
    targets = report(bench, results)
    print(
        f"setup: {os.cpu_count()} cores; onnxruntime 1 thread in both services; "
        f"max_batch_size 64, max_latency_ms 2000 in both; load generator on the same "
        f"machine; {'quick' if args.quick else 'full'} run, {config['seconds']:g}s per row, "
        f"{time.perf_counter() - started:.0f}s in all; load average (1 min) "
        f"{load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after"
    )
    if args.json:
        summary = {
            "config": {**config, "quick": args.quick, "cores": os.cpu_count()},
            "rows": [asdict(r) for result in results.values() for r in result["rows"]],
            "targets": targets,
            "parity": {name: result["parity"] for name, result in results.items()},
        }
        args.json.write_text(json.dumps(summary, indent=2))
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
