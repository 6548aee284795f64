"""Where a `/predict` request's time goes inside the service, without HTTP: the real service
class against the bare BentoML service's own work, stage by stage, in one process.

Run: .venv/bin/python benchmarks/service_stages.py [BATCH] [--seconds S] [--bare-request-ms MS]

Publishes `benchmarks/serving.py`'s seeded GRU into a temporary project, makes the service
class `loopline serve` runs (`serving.service.service_for`), loads the champion, and times,
on the same BATCH windows per request (default 32), in this one thread:

  bare       what `benchmarks/bare_service.py`'s BareForecast does for a request: its body
             parsed (model inputs), `session.run`, its answers written as JSON
  Loopline   the body parsed and checked against the served model (`/predict`'s request
             type), `predict` (the contract, features, onnxruntime, the answers, the
             prediction log's records and spool line, the live inputs) and the answers
             written as JSON; then each stage of it alone

The difference is the CPU Loopline adds per request, measured where no load generator, no
event loop and no other request share the cores. With --bare-request-ms (the bare service's
time per request over HTTP, from `benchmarks/serving.py`'s bare row at this batch and
concurrency 1), it prints the time issue 27's 0.8x target leaves Loopline per request:
bare / 0.8 - bare. The writer threads' CPU (the log's inserts) is printed apart: it runs
beside the request, not on its path. Keep --seconds at a few (the default 3): a row of half a
second is mostly the first calls' warm-up (4.7 ms added instead of 2.0, measured).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `serving` is the service package here, not serving.py

from bench_modules import published_project, serving_benchmark  # noqa: E402


def timed(work: Callable[[int], object], seconds: float) -> tuple[float, float, float]:
    """Mean ms per call of `work(n)`, called for `seconds`: wall, this thread's CPU, and the
    other threads' CPU meanwhile (the log writers')."""
    work(0)
    calls, wall = 0, time.perf_counter()
    cpu, everyone = time.thread_time(), time.process_time()
    while time.perf_counter() - wall < seconds:
        work(calls)
        calls += 1
    mine = time.thread_time() - cpu
    others = time.process_time() - everyone - mine
    return tuple(1000 * v / calls for v in (time.perf_counter() - wall, mine, others))


def bare_work(bench, root: Path, batch: int):
    """BareForecast's request: parse, model call, answers as JSON (its own code)."""
    import bare_service
    import profile_service
    from pydantic import TypeAdapter

    os.environ["BARE_MODEL"] = str(bench.model_file(_paths(root)))
    bodies = profile_service.bodies(bench, root, batch, bare=True)
    body_type = TypeAdapter(dict[str, list[bare_service.Window]])
    answers = TypeAdapter(list[bare_service.Forecast]).dump_json
    service = bare_service.BareForecast.inner()

    def request(n: int) -> bytes:
        windows = body_type.validate_json(bodies[n % len(bodies)])["windows"]
        return answers(service.predict(windows))

    return request


def loopline_service(root: Path):
    """The service class `loopline serve` runs, with the champion loaded."""
    from loopline.params import load_params
    from serving.service import service_for

    os.environ["LOOPLINE_PROJECT"] = str(root)
    service = service_for(load_params(_paths(root).params_file)).inner()
    service.holder.refresh()
    return service


def loopline_work(bench, root: Path, service, batch: int):
    """Loopline's request: the body parsed and checked, `predict`, answers as JSON."""
    import profile_service
    from pydantic import TypeAdapter

    from serving.bodies import request_body

    adapter = type(service.serving)
    body_type = request_body(adapter, type(service).served, 100_000)
    answers = TypeAdapter(list[adapter.Response]).dump_json
    bodies = profile_service.bodies(bench, root, batch, bare=False)

    def request(n: int) -> bytes:
        items = body_type.model_validate_json(bodies[n % len(bodies)]).windows
        return answers(service.predict(items))

    return request, [body_type.model_validate_json(b).windows for b in bodies]


def stages(service, parsed: list) -> dict[str, Callable[[int], object]]:
    """Each stage of Loopline's `predict` alone, on the parsed bodies."""
    from datetime import UTC, datetime

    from loopline.online.predlog import PredictionRecord
    from loopline.onnx_runtime import run_onnx
    from loopline.tasks.forecast.serving import forecasts_of, window_ends, window_inputs
    from serving.bodies import as_item, reply

    serving, model = service.serving, service.model
    spec, task = model.spec, serving.task
    items = [[as_item(i) for i in body] for body in parsed]
    windows = [serving.windows_of(i) for i in items]
    inputs = [window_inputs(task, spec, w, spec.options.window, j) for w, j in windows]
    outputs = [run_onnx(model.session, x) for x in inputs]
    answers = [serving.predict(model, i) for i in items]
    now = datetime.now(UTC)
    records = [
        [PredictionRecord.of(model, "predict", a, 0.1, None, now) for a in batch]
        for batch in answers
    ]
    kind = type(serving).Response

    def pick(values):
        return lambda n: values[n % len(values)]

    w, x, y, a, r = pick(windows), pick(inputs), pick(outputs), pick(answers), pick(records)
    return {
        "items as windows (windows_of)": lambda n: serving.windows_of(pick(items)(n)),
        "data contract (refusals)": lambda n: serving.refusals(
            w(n)[0], list(range(len(w(n)[0]))), w(n)[1]
        ),
        "features (window_inputs)": lambda n: window_inputs(
            task, spec, w(n)[0], spec.options.window, w(n)[1]
        ),
        "onnxruntime (run_onnx)": lambda n: run_onnx(model.session, x(n)),
        "forecasts (forecasts_of)": lambda n: forecasts_of(w(n)[0], y(n), spec, model.version),
        "window ends (the log's inputs)": lambda n: window_ends(
            w(n)[0], spec.options.time_column, w(n)[1]
        ),
        "adapter predict (all of the above)": lambda n: serving.predict(model, pick(items)(n)),
        "log records": lambda n: [
            PredictionRecord.of(model, "predict", ans, 0.1, None, now) for ans in a(n)
        ],
        "spool lines": lambda n: [record.spooled() for record in r(n)],
        "live-input rows": lambda n: serving.input_rows(a(n)),
        "replies": lambda n: [reply(kind, ans) for ans in a(n)],
    }


def _paths(root: Path):
    from loopline.paths import ProjectPaths

    return ProjectPaths.at(root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("batch", type=int, nargs="?", default=32, help="windows per request")
    parser.add_argument("--seconds", type=float, default=3.0, help="per measured row")
    parser.add_argument("--bare-request-ms", type=float, help="bare's HTTP time per request")
    args = parser.parse_args()
    bench = serving_benchmark()
    root = published_project("loopline-stages-")
    service = loopline_service(root)
    loopline, parsed = loopline_work(bench, root, service, args.batch)
    rows = {"bare: parse, model, answers": bare_work(bench, root, args.batch)}
    rows["Loopline: parse + check, predict, answers"] = loopline
    results = {name: timed(work, args.seconds) for name, work in rows.items()}
    results |= {name: timed(work, args.seconds) for name, work in stages(service, parsed).items()}
    print(f"{args.batch} windows per request; ms per request: wall, CPU, other threads' CPU")
    for name, (wall, cpu, others) in results.items():
        print(f"  {name:44s} {wall:7.3f}  {cpu:7.3f}  {others:7.3f}")
    bare_ms = results["bare: parse, model, answers"][1]
    added = results["Loopline: parse + check, predict, answers"][1] - bare_ms
    print(f"CPU Loopline adds per request (in process, one thread): {added:.3f} ms")
    if args.bare_request_ms:
        budget = args.bare_request_ms / 0.8 - args.bare_request_ms
        verdict = "fits" if added <= budget else "does not fit"
        print(
            f"the 0.8x target leaves {budget:.3f} ms per request over bare's "
            f"{args.bare_request_ms:g} ms: the added work {verdict}"
        )
    service.recorder.close()
    print(f"load average (1 min) {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
