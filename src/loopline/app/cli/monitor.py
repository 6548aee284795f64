"""`loopline monitor`: one monitoring pass now (the Prefect flow `pipelines.monitoring`)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from loopline.app.cli.common import (
    ParamOption,
    ProjectOption,
    console,
    fail,
    print_deployment,
    project_paths,
    temporary_prefect,
)
from loopline.errors import LooplineError

ALARM_EXIT = 3  # the exit code of a pass that raised an alarm


def monitor(
    project: ProjectOption = None,
    model: Annotated[
        str | None, typer.Option(help="Registered model to monitor (default: the served one).")
    ] = None,
    param: ParamOption = None,
) -> None:
    """One monitoring pass now: drift and live quality of every period of the prediction
    log not yet tested, against each version's reference profile; a report in MLflow, the
    rows in the `monitoring` table. Exit code 3 when a signal alarms."""
    from loopline.params import load_params

    # The project's environment (PREFECT_HOME, the local API's start-up timeout) before
    # Prefect is imported: Prefect reads its settings once, at import.
    paths = project_paths(project)
    from pipelines.monitoring import monitoring_flow

    overrides = list(param or [])
    try:
        load_params(paths.params_file, overrides)
    except LooplineError as error:
        fail(error)
    temporary_prefect(paths)
    try:
        summary = monitoring_flow(root=str(paths.root), overrides=overrides, model=model)
    except LooplineError as error:
        fail(error)
    print_summary(summary)
    typer.echo(json.dumps(summary, default=str))
    if summary["alarm"]:
        raise typer.Exit(code=ALARM_EXIT)


def print_summary(summary: dict) -> None:
    """The pass in words: deployments judged, notes, alarms, and where its report is."""
    for decided in summary.get("deployments") or []:
        print_deployment(decided)
    for note in summary["notes"]:
        console.print(f"[yellow]note:[/] {note}")
    for alarm in summary["alarms"]:
        console.print(
            f"[bold red]alarm:[/] {alarm['signal']} v{alarm['model_version']} period from "
            f"{alarm['period_start']} ({alarm['note'] or 'over threshold'})"
        )
    console.print(
        f"{summary['periods']} periods tested of {summary['predictions']} predictions; "
        f"report in MLflow run {summary['mlflow_run_id']}"
    )
