"""The monitor at volume: one pass over a million logged predictions on PostgreSQL.

Run: .venv/bin/python benchmarks/monitor_volume.py [--rows N] [--series K] [--url URL]
(default: 1,000,000 predictions of 500 hourly series, about 83 days, on the local
PostgreSQL of `LOOPLINE_TEST_POSTGRES_URL`, else postgresql+psycopg://postgres@127.0.0.1/test;
writing them takes a minute, the pass what it takes).

The log is written by the service's own writer (`PredictionLog`, the `predictions` table);
the model is the monitor tests' forecaster (a daily cycle, forecasting 4 hours) with a
reference profile from 90 clean days; the settings are the tests' (daily periods, a 1 %
false-alarm rate, calibration with 1,000 draws). Then one monitoring pass as `loopline
monitor` runs it: the watermarks read (`MonitoringStore.marks`), the log read from after
them (`read_log`), every complete period tested and recorded (`run_pass`). Then a second
pass after one more day is logged: what a scheduled monitor pays each time.

Target (issue 28): >= 1,000,000 logged predictions per minute through the first pass.
Printed: the seconds to read and to test, the rate, and the second pass's time and rows.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import create_engine, text

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the monitor tests' model and profile

from loopline.tasks.forecast.task import ForecastTask  # noqa: E402
from loopline.watch.monitor import SIGNALS, MonitoringStore, Version, read_log, run_pass  # noqa: E402
from tests.unit.test_monitor import (  # noqa: E402
    SETTINGS,
    SPEC,
    forecasts,
    profile_of,
    series,
    write_log,
)

MODEL = "volume"


def log_of_series(hours: int, count: int, start: str) -> pd.DataFrame:
    """What a service answering `count` series every hour logs over `hours` hours."""
    frames = []
    for k in range(count):
        frame = series(hours, seed=k, start=start)
        out = forecasts(frame)
        frames.append(
            pd.DataFrame(
                {
                    "model_version": "1",
                    "key": f"s{k}",
                    "origin": frame["timestamp"],
                    "inputs": [
                        {"readings": 24, "last": {"timestamp": t.isoformat(), "value": float(v)}}
                        for t, v in zip(frame["timestamp"], frame["value"], strict=True)
                    ],
                    "output": np.round(out, 3).tolist(),
                    "logged_at": frame["timestamp"],
                }
            )
        )
    return pd.concat(frames).sort_values("logged_at", kind="stable").reset_index(drop=True)


def clear(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as connection:
        for table in ("predictions", "monitoring"):
            if engine.dialect.has_table(connection, table):
                connection.execute(text(f"DELETE FROM {table} WHERE model_name = :m"), {"m": MODEL})
    engine.dispose()


def one_pass(url: str, profile) -> tuple[float, float, int, int]:
    """(seconds reading, seconds testing, predictions read, periods recorded)."""
    store = MonitoringStore(url)
    try:
        started = time.perf_counter()
        records = read_log(url, MODEL, after=store.marks(MODEL, SIGNALS))
        read = time.perf_counter() - started
        result = run_pass(
            ForecastTask(), MODEL, records, lambda v: Version(SPEC, profile, None), SETTINGS, store
        )
        return read, time.perf_counter() - started - read, len(records), len(result.periods)
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--series", type=int, default=500)
    default = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    parser.add_argument("--url", default=os.environ.get("LOOPLINE_TEST_POSTGRES_URL", default))
    args = parser.parse_args()
    hours = args.rows // args.series
    profile = profile_of(series(24 * 90, seed=10_000, start="2023-09-01"))
    records = log_of_series(hours + 24, args.series, "2024-01-01")
    first, extra = records.iloc[: hours * args.series], records.iloc[hours * args.series :]
    clear(args.url)
    started = time.perf_counter()
    write_log(args.url, first, model=MODEL)
    print(f"wrote {len(first):,} predictions in {time.perf_counter() - started:.1f} s")
    load = os.getloadavg()[0]
    read, tested, rows, periods = one_pass(args.url, profile)
    rate = rows / (read + tested) * 60
    verdict = "PASS" if rate >= 1_000_000 else "MISS"
    print(
        f"first pass: read {rows:,} predictions in {read:.1f} s, tested and recorded {periods:,} "
        f"rows in {tested:.1f} s: {rate:,.0f} predictions per minute (>= 1,000,000: {verdict}); "
        f"load before {load:.2f}"
    )
    write_log(args.url, extra, model=MODEL)
    read, tested, rows, periods = one_pass(args.url, profile)
    print(
        f"second pass, one more day logged ({len(extra):,} predictions): read {rows:,} in "
        f"{read:.2f} s, tested in {tested:.2f} s ({periods:,} rows recorded)"
    )
    clear(args.url)


if __name__ == "__main__":
    main()
