"""Tuning scale-out: N Optuna trials in one process vs on a local Dask cluster.

Run: .venv/bin/python benchmarks/tuning_scaleout.py [--quick] [--trials N] [--workers W]
(or `make bench`). All searches use the same training rows (the default task's data through
the library's features, labels and split), the same search space, sampler and budget; the
sequential ones run in this process with torch's default threads and with 1 thread (the
resources one Dask worker gets per trial), the parallel one through
Prefect's Dask task runner (`pipelines.tuning.tune_on_dask`: a LocalCluster of W worker
processes, one torch thread each, sharing an Optuna SQLite study). Prints the wall times,
the scale-out (1-thread sequential / Dask: target >= 1.7x with 2 workers on 2 cores), the
gain over the default sequential search, the best validation loss of each (both search
the same 8-point grid, so the losses should agree), and the machine's own ceiling: the same
torch work in W plain processes vs one, which bounds any engine's scale-out. Prefect's
one-time API start-up is done before the clocks start; the Dask cluster's start-up is
counted, because every parallel search pays it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def training_rows(params):
    """The rows tuning sees, prepared by the library as the flow does."""
    from loopline.offline.features import build_features
    from loopline.offline.ingest import read_source
    from loopline.offline.split import split_and_fit, without_test

    task = params.plugin
    raw = read_source(params, task, REPO)
    frame, spec = build_features(task, raw, params)
    frame, spec = split_and_fit(task, task.add_labels(frame, spec), spec, params)
    return without_test(frame, task.time_column), spec


def _one_trial(job: tuple[str, str, list[str], dict]) -> float:
    """One trial of the search (one grid configuration) through the library's own tuning
    code, on one torch thread, with no Dask and no Prefect around it."""
    import pandas as pd
    import torch

    from loopline.offline.features import FeatureSpec
    from loopline.offline.tune import tune_model
    from loopline.params import load_params

    torch.set_num_threads(1)
    frame_path, spec_json, overrides, hparams = job
    params = load_params(REPO / "params.yaml", overrides)
    frame, spec = pd.read_parquet(frame_path), FeatureSpec.from_json(spec_json)
    started = time.perf_counter()
    tune_model(params.plugin, frame, spec, params, n_trials=1, fixed=hparams)
    return time.perf_counter() - started


def machine_ceiling(workers: int, jobs: list) -> float:
    """What `workers` processes can gain on this machine at all for this work: the same
    trials one at a time vs `workers` at a time, in a plain process pool (no Dask, no
    Prefect). Virtual CPUs that share a physical core, shared memory bandwidth or a busy
    host cap every parallel engine here."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.map(_one_trial, jobs[:workers])  # imports and start-up outside the clocks
        started = time.perf_counter()
        for job in jobs:
            pool.apply(_one_trial, (job,))
        one_at_a_time = time.perf_counter() - started
        started = time.perf_counter()
        pool.map(_one_trial, jobs, chunksize=1)
        parallel = time.perf_counter() - started
    return one_at_a_time / parallel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter trials")
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    # A grid of 8 configurations, each evaluated once by both searches: trials differ
    # several-fold in cost (window, hidden size), so only the same configurations on both
    # sides make the wall times comparable, and the best losses then should agree.
    grid = {
        "hidden_size": "[32, 64]",
        "num_layers": "[1]",
        "dropout": "[0.1]",
        "learning_rate": "[0.003]",
        "batch_size": "[64]",
        "window": "[24, 48]",
        "cell": "[lstm, gru]",
    }
    trials = args.trials or 8
    overrides = [
        "tune.sampler=grid",
        *(f"tune.search_space.solar.{name}={{choices: {values}}}" for name, values in grid.items()),
        f"tune.n_trials={trials}",
        f"tune.max_epochs={2 if args.quick else 4}",
        "tune.pruning=false",  # equal work per trial on both sides
        f"tune.parallel.workers={args.workers}",
        "tune.parallel.engine=dask",
    ]
    state = Path(tempfile.mkdtemp(prefix="loopline-bench-tuning-"))
    os.environ.setdefault("LOOPLINE_HOME", str(state))
    os.environ.setdefault("PREFECT_HOME", str(state / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

    import logging

    import torch
    from prefect import flow

    logging.getLogger("distributed").setLevel(logging.WARNING)  # the cluster's chatter

    from loopline.offline.tune import tune_model
    from loopline.params import load_params
    from loopline.paths import ProjectPaths
    from pipelines.tuning import tune_on_dask

    params = load_params(REPO / "params.yaml", overrides)
    print(f"preparing rows ({params.ingest.source}, sites {params.solar.sites}) ...", flush=True)
    frame, spec = training_rows(params)
    print(f"{len(frame)} rows; {trials} trials x {params.tune.max_epochs} epochs", flush=True)

    @flow
    def warm_up() -> None:  # Prefect's local API starts once, outside the clocks
        return None

    warm_up()

    default_threads = torch.get_num_threads()
    runs = {}
    for threads in (default_threads, 1):
        torch.set_num_threads(threads)
        started = time.perf_counter()
        result = tune_model(params.plugin, frame, spec, params)
        runs[threads] = (time.perf_counter() - started, result)
        print(f"sequential, torch {threads} thread(s): {runs[threads][0]:.1f} s", flush=True)
    torch.set_num_threads(default_threads)
    sequential_s, sequential = runs[default_threads]
    single_s, single = runs[1]

    scratch = state / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    study = f"scaleout-{time.time_ns()}"
    parallel = tune_on_dask(params, ProjectPaths.at(state), frame, spec, scratch, study)
    parallel_s = time.perf_counter() - started
    print(f"dask:       {parallel_s:.1f} s, best val_loss {parallel.best_value:.4f}", flush=True)

    print()
    print(f"{'search':40s} {'wall s':>8s} {'best val_loss':>14s} {'trials':>7s}")
    rows = [
        (f"sequential, torch {default_threads} threads (default)", sequential_s, sequential),
        ("sequential, torch 1 thread (a worker's share)", single_s, single),
        (f"Dask LocalCluster, {args.workers} workers x 1 thread", parallel_s, parallel),
    ]
    for name, seconds, result in rows:
        print(f"{name:40s} {seconds:8.1f} {result.best_value:14.4f} {len(result.trials):7d}")
    scale = single_s / parallel_s
    over_default = sequential_s / parallel_s
    print(
        f"scale-out, same resources per trial (1 thread): {scale:.2f}x "
        f"(target >= 1.7x with 2 workers on 2 cores: {'PASS' if scale >= 1.7 else 'MISS'})"
    )
    print(
        f"over the default sequential search (torch already uses {default_threads} threads "
        f"inside one trial): {over_default:.2f}x"
    )
    print(
        f"best val_loss, Dask / sequential: {parallel.best_value / sequential.best_value:.3f} "
        f"(1.0 = same quality: both searches evaluate the same grid) on {os.cpu_count()} cores"
    )
    frame_path = scratch / "ceiling_rows.parquet"
    frame.to_parquet(frame_path)
    configurations = [dict(t.hparams) for t in sequential.trials]
    jobs = [(str(frame_path), spec.to_json(), overrides, hp) for hp in configurations]
    ceiling = machine_ceiling(args.workers, jobs)
    print(
        f"this machine's ceiling, the same trials in {args.workers} plain processes vs one: "
        f"{ceiling:.2f}x; the Dask search reaches {scale / ceiling:.0%} of it"
    )


if __name__ == "__main__":
    main()
