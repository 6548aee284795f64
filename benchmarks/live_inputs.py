"""What storing live inputs (`serve.store_inputs`) costs per streamed reading, in-process.

Run: .venv/bin/python benchmarks/live_inputs.py [--readings N] [--chunk N]

A bulk `/stream` of one site answers one window per reading; with `serve.store_inputs` the
service also stores that reading (the stream made its raw row as it came in:
`ForecastServing.input_rows` → `live_rows` → `LiveInputLog`: a spool write on the request
path, batched insert-or-ignore in a background thread). This measures, on the same answered
windows in chunks (a stream chunk: 32 by default; a bulk stream's hold hundreds), the CPU
per reading of the prediction log and of the live inputs beside it, both with their spool
and SQLite, the writer threads included (process CPU time until each log is closed and
everything is in the database). CPU time, not wall time: robust to a busy machine.
`benchmarks/serving.py` measures the whole service.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np


def answers(n: int):
    """`n` answered stream windows of one site, each the first to hold its newest reading."""
    from loopline.online.adapter import Answer
    from loopline.tasks.forecast.serving import StreamWindow

    columns = ["ghi", "dni", "dhi", "temp_air", "wind_speed", "power_w"]
    times = np.datetime64("2021-03-01T00:30", "ns") + np.arange(n + 48) * np.timedelta64(1, "h")
    values = np.random.default_rng(7).random((n + 48, len(columns))) * 500
    out = []
    for i in range(n):
        rows = {"timestamp": times[i : i + 48]}
        rows |= {c: values[i : i + 48, k] for k, c in enumerate(columns)}
        newest = {"site_id": "greensboro", **window_last(rows)}
        window = StreamWindow("greensboro", rows, 1, (newest,))
        out.append(
            Answer(
                {},
                key="greensboro",
                origin=datetime(2021, 3, 1, tzinfo=UTC),
                inputs={"readings": 48, "first": "x", "last": window.last()},
                output=[float(v) for v in range(24)],
                source=window,
            )
        )
    return out


def window_last(rows: dict) -> dict:
    """A window's newest reading as its raw row (the time as ISO text in UTC)."""
    from loopline.tasks.forecast.serving import plain_value

    return {c: plain_value(v[-1]) for c, v in rows.items()}


def prediction_log(folder: Path, batches) -> float:
    from loopline.online.predlog import PredictionLog, PredictionRecord

    folder.mkdir()
    log = PredictionLog(f"sqlite:///{folder / 'p.db'}", spool_dir=folder / "spool")
    started = time.process_time()
    for batch in batches:
        now = datetime.now(UTC)  # one per answered batch, as the service logs it
        log.put_many(
            [
                PredictionRecord(
                    "solar", "1", "stream", a.key, a.origin, a.inputs, a.output, 1.0, now
                )
                for a in batch
            ]
        )
    log.close()
    assert log.written == sum(map(len, batches)), log.stats()
    return time.process_time() - started


def live_inputs(folder: Path, batches, task, serving) -> float:
    from loopline.online.live import LiveInputLog, live_rows

    folder.mkdir()
    log = LiveInputLog(f"sqlite:///{folder / 'p.db'}", spool_dir=folder / "spool-live")
    started = time.process_time()
    for batch in batches:
        log.put_many(live_rows(task, serving.input_rows(batch), "solar", "1", "stream"))
    log.close()
    assert log.written == sum(map(len, batches)), log.stats()
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=20_000)
    parser.add_argument("--chunk", type=int, default=32, help="readings per answered batch")
    args = parser.parse_args()
    n, chunk = args.readings, args.chunk

    from loopline.params import parse_params

    params = parse_params({"solar": {"sites": ["greensboro"]}})
    task = params.plugin
    serving = task.Serving(task, params)
    answered = answers(n)
    batches = [answered[i : i + chunk] for i in range(0, n, chunk)]
    with tempfile.TemporaryDirectory() as scratch:
        logged = prediction_log(Path(scratch) / "a", batches)
        stored = live_inputs(Path(scratch) / "b", batches, task, serving)
    print(f"{n} readings, one answered window each, chunks of {chunk} (CPU µs per reading):")
    print(f"  prediction log               {logged / n * 1e6:7.1f}")
    print(f"  live inputs (store_inputs)   {stored / n * 1e6:7.1f}")
    print(
        f"  at 10,000 readings/s the live inputs take {stored / n * 1e4:.2f} CPU-s per s "
        f"({stored / n * 1e4 * 100:.0f}% of a core)"
    )


if __name__ == "__main__":
    main()
