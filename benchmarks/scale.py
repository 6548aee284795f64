"""Cost against size: the real `loopline run` of the tabular family on synthetic tables of
growing size, its wall time per stage and the peak memory of every process.

Run: .venv/bin/python benchmarks/scale.py [--rows 100000 1000000 10000000] [--json PATH]
     [--memory-limit-gb 12]

The table is the issue's: 16 numeric and 3 categorical columns, a binary label from a
logistic model on them, an id (a CSV written in chunks, the generator's memory stays flat).
Each size is a fresh project (`task: tabular`, its own SQLite MLflow store and DVC remote)
and one `loopline run` with the default params but the smallest search (1 trial of the
linear model, 1 epoch), so that the data stages are what grows; every later stage (tune,
train, evaluate, export, profile, publish) runs too and is timed with the rest.

Measured, side by side for every size in one run:
- each stage's wall time, from the run's own progress lines ("✓ ingest 3.2s");
- the peak RSS of the flow's process and of every child process (the sum over the process
  tree, sampled every 0.1 s, and the largest single process), per stage (from its start to
  the next stage's);
- the log-log slope of total time and of the data stages' time between consecutive sizes.

Issue 28's targets: time grows at most linearly (slope <= 1.1 from 10^6 to 10^7 rows), the
flow's peak RSS at 10^7 rows <= 3 GB, and a 10^7-row run completes. A run whose process tree
passes `--memory-limit-gb` is stopped and reported as not completed, with the stage it was in.

The forecast family scales in series (`--series 10 100 1000`): a team's readings, one row per
meter and hour over `--days` days (a daily profile of its own amplitude and phase, noise,
a temperature covariate), run as `task: forecast` with an entity column, a 24-step horizon,
a 24-step lag and a 48-reading window, 1 trial of a small GRU and 1 epoch. Its target is the
same: time grows at most linearly in series (slope <= 1.1 from 100 to 1,000).

Run: .venv/bin/python benchmarks/scale.py --rows --series 10 100 1000   # the forecast only
(`--days` 60 by default: with 30, the default split leaves too little validation time.)
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import yaml

BIN = Path(sys.executable).parent
NUMERIC = [f"x{i:02d}" for i in range(16)]
CATEGORICAL = {"plan": ["basic", "plus", "pro"], "region": list("nsewc"), "channel": list("abcd")}
FIXED_KNOBS = {
    "hidden_size": 32,
    "layers": 1,
    "dropout": 0.0,
    "learning_rate": 0.001,
    "batch_size": 256,
    "trees": 50,
    "depth": 2,
    "shrinkage": 0.1,
}
DATA_STAGES = ("ingest", "validate", "snapshot", "features", "labeling", "split")
STAGE_LINE = re.compile(r"^[✓✗] (?P<stage>[\w-]+)(?: failed after)? (?P<seconds>[\d.]+)s")
START_LINE = re.compile(r"^▶ (?P<stage>[\w-]+)")


def write_table(path: Path, rows: int, seed: int = 0, chunk: int = 500_000) -> None:
    """`rows` synthetic rows as CSV, written `chunk` rows at a time."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=len(NUMERIC))
    with path.open("w") as handle:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            x = rng.normal(size=(n, len(NUMERIC)))
            frame = pd.DataFrame(np.round(x, 4), columns=NUMERIC)
            score = x @ weights / 4
            for name, values in CATEGORICAL.items():
                codes = rng.integers(0, len(values), n)
                frame[name] = np.asarray(values)[codes]
                score += (codes - len(values) / 2) * 0.3
            frame.insert(0, "row_id", np.arange(start, start + n))
            frame["label"] = (rng.random(n) < 1 / (1 + np.exp(-score))).astype(int)
            frame.to_csv(handle, header=start == 0, index=False)


def write_series(path: Path, series: int, days: int, seed: int = 0, chunk: int = 100) -> None:
    """`series` meters' hourly readings over `days` days as CSV, `chunk` meters at a time."""
    rng = np.random.default_rng(seed)
    hours = pd.date_range("2026-01-01", periods=days * 24, freq="1h", tz="UTC")
    hour = hours.hour.to_numpy()
    with path.open("w") as handle:
        for start in range(0, series, chunk):
            n = min(chunk, series - start)
            amplitude = rng.uniform(5, 50, (n, 1))
            phase = rng.uniform(0, 2 * np.pi, (n, 1))
            temperature = (
                10 + 8 * np.sin(2 * np.pi * (hour - 15) / 24) + rng.normal(0, 1, (n, len(hours)))
            )
            load = amplitude * (1.2 + np.sin(2 * np.pi * hour / 24 + phase)) + 0.3 * temperature
            load += rng.normal(0, 1, load.shape)
            frame = pd.DataFrame(
                {
                    "meter_id": np.repeat([f"m{start + i:05d}" for i in range(n)], len(hours)),
                    "timestamp": np.tile(hours.strftime("%Y-%m-%dT%H:%M:%SZ"), n),
                    "load_kw": np.round(np.maximum(load, 0).ravel(), 3),
                    "temperature_c": np.round(temperature.ravel(), 2),
                }
            )
            frame.to_csv(handle, header=start == 0, index=False)


def series_params(source: Path) -> dict:
    return {
        "task": "forecast",
        "seed": 42,
        "ingest": {"source": str(source)},
        "forecast": {
            "entity": "meter_id",
            "time": "timestamp",
            "target": "load_kw",
            "covariates": ["temperature_c"],
            "nonnegative": True,
            "freq": "1h",
            "horizon": 24,
            "lags": [24],
            "window": [48],
            "season": [24],
        },
        **smallest_search(
            {
                "hidden_size": 16,
                "num_layers": 1,
                "dropout": 0.0,
                "window": 48,
                "cell": "gru",
                "learning_rate": 0.005,
                "batch_size": 256,
            }
        ),
        "publish": {"model_name": "scale_series"},
    }


def smallest_search(knobs: dict) -> dict:
    """The `tune` and `train` sections of one trial of one epoch, every knob fixed (a space
    the task accepts names them all)."""
    return {
        "tune": {
            "sampler": "random",
            "n_trials": 1,
            "max_epochs": 1,
            "pruning": False,
            "search_space": {k: {"choices": [v]} for k, v in knobs.items()},
        },
        "train": {"max_epochs": 1, "patience": 1, "threads": 1, "processes": 1},
    }


def project_params(source: Path) -> dict:
    return {
        "task": "tabular",
        "seed": 42,
        "ingest": {"source": str(source)},
        "tabular": {
            "target": "label",
            "id_column": "row_id",
            "numeric": NUMERIC,
            "categorical": list(CATEGORICAL),
            "kind": "classification",
        },
        "split": {"train": 0.8, "val": 0.1, "test": 0.1},
        **smallest_search({"algorithm": "linear", "inverse_regularization": 1.0, **FIXED_KNOBS}),
        "publish": {"model_name": "scale"},
    }


class TreeMemory:
    """Samples the RSS of a process and its descendants; keeps the peaks per stage."""

    def __init__(self, pid: int, limit_bytes: int) -> None:
        self.root = psutil.Process(pid)
        self.limit = limit_bytes
        self.stage = "start"
        self.peaks: dict[str, dict[str, int]] = {}
        self.over_limit = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> tuple[int, int]:
        total = largest = 0
        try:
            processes = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return 0, 0
        for process in processes:
            try:
                rss = process.memory_info().rss
            except psutil.Error:
                continue
            total += rss
            largest = max(largest, rss)
        return total, largest

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            total, largest = self._sample()
            peak = self.peaks.setdefault(self.stage, {"tree": 0, "largest": 0})
            peak["tree"] = max(peak["tree"], total)
            peak["largest"] = max(peak["largest"], largest)
            if total > self.limit and not self.over_limit:
                self.over_limit = True
                for process in [*self.root.children(recursive=True), self.root]:
                    with contextlib.suppress(psutil.Error):
                        process.kill()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_size(rows: int, folder: Path, limit_gb: float) -> dict:
    root = folder / f"rows-{rows}"
    return run_project(root, rows, lambda path: write_table(path, rows), project_params, limit_gb)


def run_series(series: int, days: int, folder: Path, limit_gb: float) -> dict:
    root = folder / f"series-{series}"
    result = run_project(
        root, series, lambda path: write_series(path, series, days), series_params, limit_gb
    )
    return result | {"series": series, "readings": series * days * 24}


def run_project(root: Path, size: int, write, params, limit_gb: float) -> dict:
    """Write the source, then run `loopline run` on a fresh project at `root`, measured."""
    root.mkdir(parents=True)
    source = root / "table.csv"
    started = time.perf_counter()
    write(source)
    written = time.perf_counter() - started
    (root / "params.yaml").write_text(yaml.safe_dump(params(source), sort_keys=False))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1", "COLUMNS": "200"}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [str(BIN / "loopline"), "run"]
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    memory = TreeMemory(process.pid, int(limit_gb * 2**30))
    seconds: dict[str, float] = {}
    log = []
    for line in process.stderr:
        log.append(line)
        text = line.strip()
        if match := START_LINE.match(text):
            memory.stage = match["stage"]
        elif match := STAGE_LINE.match(text):
            seconds[match["stage"]] = float(match["seconds"])  # what follows counts to it
    code = process.wait()
    wall = time.perf_counter() - started
    memory.stop()
    (root / "run.log").write_text("".join(log))
    return {
        "rows": size,
        "csv_mb": source.stat().st_size / 2**20,
        "write_seconds": written,
        "completed": code == 0 and not memory.over_limit,
        "exit_code": code,
        "stopped_over_memory_limit": memory.over_limit,
        "stage_at_end": memory.stage,
        "wall_seconds": wall,
        "stage_seconds": seconds,
        "data_stage_seconds": sum(seconds.get(s, 0.0) for s in DATA_STAGES),
        "peak_rss_mb": {
            stage: {k: v / 2**20 for k, v in peak.items()} for stage, peak in memory.peaks.items()
        },
        "flow_peak_rss_mb": max((p["largest"] for p in memory.peaks.values()), default=0) / 2**20,
        "tree_peak_rss_mb": max((p["tree"] for p in memory.peaks.values()), default=0) / 2**20,
        "log_tail": "".join(log[-15:]) if code else "",
    }


def slope(a: dict, b: dict, key: str) -> float | None:
    if not (a["completed"] and b["completed"]) or a[key] <= 0 or b[key] <= 0:
        return None
    return math.log(b[key] / a[key]) / math.log(b["rows"] / a["rows"])


def print_size(result: dict, unit: str = "rows") -> None:
    rows = result["rows"]
    state = (
        "completed"
        if result["completed"]
        else (
            f"NOT completed (exit {result['exit_code']}"
            + (", stopped over the memory limit" if result["stopped_over_memory_limit"] else "")
            + f", in {result['stage_at_end']})"
        )
    )
    print(
        f"\n{rows:>12,} {unit} ({result['csv_mb']:.0f} MB CSV, written in "
        f"{result['write_seconds']:.0f} s): {state}, {result['wall_seconds']:.1f} s wall; "
        f"peak RSS: largest process {result['flow_peak_rss_mb']:,.0f} MB, process tree "
        f"{result['tree_peak_rss_mb']:,.0f} MB"
    )
    print(f"{'stage':<16}{'seconds':>10}{'tree MB':>10}{'largest MB':>12}")
    peaks = result["peak_rss_mb"]
    for stage in dict.fromkeys(["start", *result["stage_seconds"], *peaks]):
        spent = result["stage_seconds"].get(stage)
        shown = f"{spent:>10.1f}" if spent is not None else f"{'':>10}"
        peak = peaks.get(stage)  # none: over before a sample (0.1 s)
        memory = f"{peak['tree']:>10,.0f}{peak['largest']:>12,.0f}" if peak else f"{'-':>10}"
        print(f"{stage:<16}{shown}{memory}")
    if result["log_tail"]:
        print(result["log_tail"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="*", default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--series", type=int, nargs="*", default=[])
    parser.add_argument("--days", type=int, default=60, help="days of hourly readings a series")
    parser.add_argument("--memory-limit-gb", type=float, default=12.0)
    parser.add_argument("--folder", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    print(f"load before: {os.getloadavg()[0]:.2f}; {os.cpu_count()} cores; OMP_NUM_THREADS=1")
    results, series = [], []
    with tempfile.TemporaryDirectory(prefix="loopline-scale-", dir=args.folder) as folder:
        for rows in sorted(args.rows):
            results.append(run_size(rows, Path(folder), args.memory_limit_gb))
            print_size(results[-1])
        for count in sorted(args.series):
            series.append(run_series(count, args.days, Path(folder), args.memory_limit_gb))
            print_size(series[-1], f"series ({series[-1]['readings']:,} readings)")
    print_slopes(results, "rows", "10^6 to 10^7")
    print_slopes(series, "series", "100 to 1,000")
    ten_million = [r for r in results if r["rows"] == 10_000_000]
    if ten_million:
        r = ten_million[0]
        flow_ok = r["completed"] and r["flow_peak_rss_mb"] <= 3 * 1024
        print(
            f"10^7 rows: completed {r['completed']}; flow peak RSS "
            f"{r['flow_peak_rss_mb']:,.0f} MB (<= 3 GB: {'PASS' if flow_ok else 'MISS'})"
        )
    if args.json:
        args.json.write_text(json.dumps({"rows": results, "series": series}, indent=1))


def print_slopes(results: list[dict], unit: str, target: str) -> None:
    if len(results) < 2:
        return
    print(f"\nlog-log slope in {unit} between consecutive sizes (<= 1.1 from {target}: linear)")
    for a, b in itertools.pairwise(results):
        total, data = slope(a, b, "wall_seconds"), slope(a, b, "data_stage_seconds")
        shown = [f"{v:.2f}" if v is not None else "n/a" for v in (total, data)]
        print(f"  {a['rows']:,} -> {b['rows']:,}: whole run {shown[0]}, data stages {shown[1]}")


if __name__ == "__main__":
    main()
