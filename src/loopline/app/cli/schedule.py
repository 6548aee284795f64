"""Unattended runs: register the offline and monitoring deployments and serve them
(`schedule`), list them (`--list`), or hand the offline one to a work pool (`--pool`). The
Prefect parts are `pipelines.deployments`' functions: the CLI never imports Prefect."""

from __future__ import annotations

import asyncio
import json
import os
from contextlib import nullcontext
from typing import Annotated, Any

import typer
from rich.table import Table

from loopline.app.cli.common import (
    ProjectOption,
    console,
    fail,
    project_paths,
    wide_console,
)
from loopline.errors import LooplineError


def schedule(
    project: ProjectOption = None,
    list_: Annotated[
        bool, typer.Option("--list", help="Show deployments: cron, zone, next run, last state.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="With --list: machine-readable.")] = False,
    param: Annotated[
        list[str] | None,
        typer.Option("-P", "--param", help="Override a param for the scheduled runs (repeatable)."),
    ] = None,
    pool: Annotated[
        str | None,
        typer.Option(
            "--pool",
            help="Register the deployment on this Prefect work pool and return; a worker "
            "(`prefect worker start --pool NAME`) runs it. A process pool is created if missing.",
        ),
    ] = None,
) -> None:
    """Register the deployments and serve them (prefect serve) until Ctrl-C.

    Uses the Prefect server at PREFECT_API_URL, or starts one on loopback with its database
    under the project's state folder (the temporary API cannot run schedules). With --pool
    the deployment goes to a work pool instead (needs PREFECT_API_URL: the pool's workers
    must reach the server).
    """
    from loopline.params import load_params

    # The project's environment before Prefect is imported (it reads its settings once).
    paths = project_paths(project)
    from pipelines.deployments import local_server

    overrides = list(param or [])
    try:
        params = load_params(paths.params_file, overrides)
    except LooplineError as error:
        fail(error)
    given = os.environ.get("PREFECT_API_URL")
    if pool and not list_:
        to_pool(params, paths, pool, overrides, given)
        return
    with nullcontext(given) if given else local_server(paths) as api_url:
        os.environ["PREFECT_API_URL"] = api_url
        if list_:
            show_deployments(api_url, as_json)
        else:
            serve_schedules(params, paths, overrides, api_url)


def to_pool(params: Any, paths: Any, pool: str, overrides: list[str], given: str | None) -> None:
    """Register the offline deployment on a work pool and say how to start a worker."""
    from pipelines.deployments import deploy_to_pool

    if not given:
        fail(
            LooplineError(
                "--pool needs a Prefect server its workers reach: set PREFECT_API_URL "
                "(`prefect server start`, or `loopline schedule` serving on this machine)"
            )
        )
    deployment_id = deploy_to_pool(params, paths, pool, overrides)
    console.print(
        f"[bold]Deployed[/] offline-{params.task_name} ({deployment_id}) "
        f"to work pool {pool!r}: "
        f"cron {params.schedule.cron!r} in {params.schedule.timezone}, one run at a time. "
        f"Start a worker: prefect worker start --pool {pool}"
    )


def show_deployments(api_url: str, as_json: bool) -> None:
    """The server's deployments: cron, time zone, next run, last state, limit."""
    from pipelines.deployments import list_deployments

    rows = asyncio.run(list_deployments())
    if as_json:
        typer.echo(json.dumps(rows, indent=1, default=str))
        return
    table = Table(title=f"Deployments · {api_url}")
    for column in ("name", "cron", "timezone", "next run", "last state", "limit"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            r["name"],
            r["cron"] or "-",
            r["timezone"],
            r["next_run"] or "-",
            r["last_state"] or "-",
            str(r["concurrency_limit"] or "-"),
        )
    wide_console().print(table)


def serve_schedules(params: Any, paths: Any, overrides: list[str], api_url: str) -> None:
    """Serve the offline deployment and, on `schedule.monitor_cron`, the monitoring one."""
    from pipelines.deployments import monitor_deployment, offline_deployment, serve_deployments

    deployment = offline_deployment(params, paths, overrides)
    console.print(
        f"[bold]Scheduling[/] {deployment.name}: cron {params.schedule.cron!r} in "
        f"{params.schedule.timezone}, one run at a time ({params.schedule.overlap}); "
        f"Prefect API {api_url}. Ctrl-C stops."
    )
    watch = monitor_deployment(params, paths, overrides)
    if watch is not None:
        console.print(
            f"[bold]Monitoring[/] {watch.name}: cron {params.schedule.monitor_cron!r}; "
            f"an alarm starts {deployment.name} (monitor.cooldown_h "
            f"{params.monitor.cooldown_h:g} between alarm-started runs)"
        )
    serve_deployments(deployment, *([watch] if watch is not None else []))
