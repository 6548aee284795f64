"""One monitoring pass as a Prefect flow: `loopline monitor` (and, later, the schedule).

Run it with `loopline monitor`. Wiring only: the pass is `loopline.monitor.monitor_project`
(drift and live quality over the prediction log, the monitoring table, one MLflow run with
its report); a database briefly away is retried here, and a pass that still fails leaves
the table's watermark where it was, so the next pass catches up.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from loopline.config import load_params
from loopline.errors import is_transient
from loopline.monitor import monitor_project
from loopline.paths import ProjectPaths


def _retry_transient(task, task_run, state) -> bool:
    error = state.result(raise_on_failure=False)
    return isinstance(error, BaseException) and is_transient(error)


@task(
    name="monitor-pass",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[5, 30],
    retry_condition_fn=_retry_transient,
)
def monitor_pass(root: str, overrides: list[str] | None, model: str | None) -> dict[str, Any]:
    paths = ProjectPaths.at(root)
    params = load_params(paths.params_file, overrides)
    result, run_id = monitor_project(params, paths, model)
    return summary(result, run_id)


def summary(result, run_id: str) -> dict[str, Any]:
    data = result.to_dict()
    windows = [w for w in data["windows"] if w["feature"] == "*"]
    return {
        "model": result.model_name,
        "pass_id": result.pass_id,
        "mlflow_run_id": run_id,
        "predictions": result.rows,
        "windows": len(windows),
        "alarm": result.alarm,
        "alarms": data["alarms"],
        "notes": result.notes,
        "seconds": round(result.seconds, 3),
    }


@flow(name="loopline-monitor", log_prints=False, validate_parameters=False)
def monitoring_flow(
    root: str = ".", overrides: list[str] | None = None, model: str | None = None
) -> dict[str, Any]:
    """One monitoring pass of the project at `root`; returns its summary."""
    return monitor_pass(root, overrides, model)
