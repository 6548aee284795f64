"""Tuning on a Dask cluster: Optuna trials as Prefect tasks sharing one study.

`tune.parallel.engine: dask` runs the search as a subflow on Prefect's Dask task runner
(`prefect-dask`): a LocalCluster of `tune.parallel.workers` processes by default, or the
scheduler at `tune.parallel.address`. Each trial is one task; all of them share one Optuna
study in storage every worker reaches (`tune.parallel.storage`; a SQLite file in the state
folder by default, PostgreSQL for workers on several machines). The rows reach the workers
through the cluster itself (scattered to every worker and published as a named dataset),
so the workers need no folder shared with the flow.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pandas as pd
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext

from loopline.config import Params, TuneParallel
from loopline.offline.features import FeatureSpec
from loopline.offline.transfer import SourceModel, reopen
from loopline.offline.tune import (
    TuneResult,
    create_shared_study,
    grid_points,
    search_for,
    study_result,
    trials_on_a_cluster,
    tune_model,
)
from loopline.paths import ProjectPaths


@functools.lru_cache(maxsize=2)
def _worker_rows(dataset: str):
    """The tuning rows (the cluster's published dataset `dataset`) and an examples cache,
    kept per worker process across its trials: building examples costs seconds, a trial of
    a small model not much more."""
    from distributed import get_client

    return get_client().get_dataset(dataset).result(), {}


@task(name="tune-worker", cache_policy=NO_CACHE)
def tune_worker(
    params: Params,
    dataset: str,
    spec_json: str,
    storage: str,
    study: str,
    n_trials: int,
    worker: int,
    point: dict | None = None,
    source: list[str] | None = None,
) -> int:
    import torch

    # One core per worker: the workers are the parallelism, not torch's intra-op threads.
    torch.set_num_threads(1)
    rows, cache = _worker_rows(dataset)
    tune_model(
        params.plugin,
        rows,
        FeatureSpec.from_json(spec_json),
        trials_on_a_cluster(params),
        storage=storage,
        study_name=study,
        n_trials=n_trials,
        worker=worker,
        cache=cache,
        fixed=point,
        source=reopen(source) if source else None,
    )
    return n_trials


# Flow parameters go to the Prefect API (≤ 512 KB): the rows come as a Parquet file of this
# process, which the subflow (in this process too) hands to the cluster.
@flow(name="loopline-tune-parallel", validate_parameters=False)
def parallel_tuning(
    params: Params,
    frame_path: str,
    spec_json: str,
    storage: str,
    study: str,
    source: list[str] | None = None,
):
    client = FlowRunContext.get().task_runner.client  # the Dask task runner's own client
    dataset = f"loopline-tuning-rows-{study}"
    [rows] = client.scatter([pd.read_parquet(frame_path)], broadcast=True)
    client.publish_dataset(rows, name=dataset, override=True)
    try:
        run_trials(params, dataset, spec_json, storage, study, source)
    finally:
        client.unpublish_dataset(dataset)
    return study_result(storage, study)


def run_trials(
    params: Params,
    dataset: str,
    spec_json: str,
    storage: str,
    study: str,
    source: list[str] | None,
) -> None:
    """Submit the trials the study still lacks and wait for them."""
    done = create_shared_study(storage, study)
    search = search_for(params.tune, params.plugin, reopen(source) if source else None)
    # One task per trial, not a fixed share per worker: trials differ several-fold in cost
    # (hidden size, layers, input length), and Dask hands the next trial to whichever worker is
    # free. Each task's sampler is seeded apart so parallel trials do not coincide; a grid
    # gives each task its own point. A study cut off by a crash (the same stage key) runs
    # only the trials it lacks.
    if params.tune.sampler == "grid":
        points = [p for p in grid_points(search) if p not in done]
        futures = [
            tune_worker.submit(params, dataset, spec_json, storage, study, 1, number, point, source)
            for number, point in enumerate(points)
        ]
    else:
        futures = [
            tune_worker.submit(params, dataset, spec_json, storage, study, 1, number, None, source)
            for number in range(len(done), params.tune.n_trials)
        ]
    for future in futures:
        future.result()


def dask_task_runner(parallel: TuneParallel):
    from prefect_dask import DaskTaskRunner

    if parallel.address:
        return DaskTaskRunner(address=parallel.address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": parallel.workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,  # no web dashboard port on a shared machine
            # The workers report their task runs to this flow's Prefect API. Without it,
            # each worker process would start a temporary Prefect server of its own (its
            # database, its services) that competes with the trials for the CPU: measured
            # here, trials ran 2-3x slower and were recorded nowhere a user looks.
            "env": {"PREFECT_API_URL": current_api_url()},
        }
    )


def current_api_url() -> str:
    """The URL of the Prefect API this process talks to, also when it is the temporary
    local server Prefect started for it (which has no setting of its own)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return str(client.api_url)


def optuna_storage(params: Params, paths: ProjectPaths) -> str:
    return params.tune.parallel.storage or f"sqlite:///{paths.state / 'optuna.db'}"


def tune_on_dask(
    params: Params,
    paths: ProjectPaths,
    frame,
    spec: FeatureSpec,
    scratch: Path,
    study: str,
    source: SourceModel | None = None,
) -> TuneResult:
    """Run the search on Dask; returns the same TuneResult as the in-process search.

    The rows are written to `scratch` for the subflow, which hands them to the cluster; on
    a cluster of several machines only the Optuna storage must be shared (a database).
    """
    frame_path = scratch / "tuning_rows.parquet"
    frame.to_parquet(frame_path)
    import dask

    runner = dask_task_runner(params.tune.parallel)
    with dask.config.set(WORKER_CONFIG):  # a LocalCluster's nannies hand it to the workers
        return parallel_tuning.with_options(task_runner=runner)(
            params,
            str(frame_path),
            spec.to_json(),
            optuna_storage(params, paths),
            study,
            list(source.locator()) if source is not None else None,
        )


# Dask defaults tuned for data frames, not for a training loop (measured on 2 cores, same
# 8 trials: 50 s → 38 s): the statistical profiler walks the compute thread's stack every
# 10 ms under the GIL, and a 64 KB malloc trim threshold returns every freed tensor buffer
# to the OS. One thread per library pool stays, as Dask sets it.
WORKER_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.nanny.pre-spawn-environ": {
        "OMP_NUM_THREADS": 1,
        "MKL_NUM_THREADS": 1,
        "OPENBLAS_NUM_THREADS": 1,
    },
}
