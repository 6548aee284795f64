"""One monitoring pass as a Prefect flow: `loopline monitor`, and `loopline schedule` on
`schedule.monitor_cron`.

Wiring only: the pass is `loopline.watch.monitor.monitor_project` (drift and live quality over
the prediction log, the monitoring table, one MLflow run with its report); a database briefly
away is retried here, and a pass that still fails leaves the table's watermark where it
was, so the next pass catches up. With `retrain` (the scheduled deployment), an alarm that
`loopline.watch.monitor.request_retrain` lets through (cooldown) starts the offline deployment
with the alarm as its trigger; the deployment's concurrency limit queues it behind a run
already going.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment

from loopline.errors import is_transient
from loopline.params import load_params
from loopline.paths import ProjectPaths
from loopline.watch.deploy import decide_all
from loopline.watch.monitor import SUMMARY, monitor_project, request_retrain
from pipelines.deployments import deployment_name


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
def monitor_pass(
    root: str, overrides: list[str] | None, model: str | None, retrain: bool = False
) -> dict[str, Any]:
    paths = ProjectPaths.at(root)
    params = load_params(paths.params_file, overrides)
    result, run_id = monitor_project(params, paths, model)
    decision = request_retrain(params, paths, result) if retrain else None
    return {**summary(result, run_id), "retrain": asdict(decision) if decision else None}


@task(name="deploy-policy", cache_policy=NO_CACHE)
def deploy_policy(root: str, overrides: list[str] | None) -> list[dict[str, Any]]:
    """Judge every running shadow or canary deployment in the registry, and promote or
    end each (`deploy:`)."""
    paths = ProjectPaths.at(root)
    return [d.to_dict() for d in decide_all(load_params(paths.params_file, overrides), paths)]


@task(name="start-retrain", cache_policy=NO_CACHE)
def start_retrain(root: str, overrides: list[str] | None, reason: str) -> str:
    """Start the offline deployment (`loopline schedule` serves it) with `reason`; returns
    the flow run's id without waiting for it."""
    params = load_params(ProjectPaths.at(root).params_file, overrides)
    run = run_deployment(
        f"loopline-offline/{deployment_name(params)}",
        parameters={"root": root, "overrides": list(overrides or []), "trigger": reason},
        timeout=0,
        tags=["loopline", "alarm"],
    )
    return str(run.id)


def summary(result, run_id: str) -> dict[str, Any]:
    data = result.to_dict()
    periods = [w for w in data["periods"] if w["feature"] == SUMMARY]
    return {
        "model": result.model_name,
        "pass_id": result.pass_id,
        "mlflow_run_id": run_id,
        "predictions": result.rows,
        "periods": len(periods),
        "alarm": result.alarm,
        "alarms": data["alarms"],
        "notes": result.notes,
        "seconds": round(result.seconds, 3),
    }


@flow(name="loopline-monitor", log_prints=False, validate_parameters=False)
def monitoring_flow(
    root: str = ".",
    overrides: list[str] | None = None,
    model: str | None = None,
    retrain: bool = False,
) -> dict[str, Any]:
    """One monitoring pass of the project at `root`; returns its summary. With `retrain`,
    an alarm starts the offline deployment (see the module's docstring)."""
    delivered = deploy_policy(root, overrides)  # first: a failed pass must not hold it up
    passed = monitor_pass(root, overrides, model, retrain)
    passed["deployments"] = delivered
    decision = passed["retrain"]
    if decision and decision["start"]:
        passed["retrain"]["flow_run_id"] = start_retrain(root, overrides, decision["reason"])
    return passed
