"""Deployments: the flows Loopline runs unattended, declared in one place.

`loopline schedule` registers them with a Prefect server and serves them (`prefect.serve`):
the monitoring flow on `schedule.monitor_cron` (an alarm starts the offline deployment), and
the offline flow on `schedule.cron` in `schedule.timezone`, never two runs at once (a
deployment concurrency limit of 1: a run due while one is going waits or is dropped, per
`schedule.overlap`). Cron schedules need a real Prefect server; `local_server` starts one
under the project's state folder when `PREFECT_API_URL` is not set.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from loopline.config import Params
from loopline.health import NotHealthy, free_port, wait_until_ok
from loopline.paths import ProjectPaths


def deployment_name(params: Params) -> str:
    return f"offline-{params.task_name}"


def offline_deployment(params: Params, paths: ProjectPaths, overrides: list[str] | None = None):
    """The offline flow as a RunnerDeployment on the params' cron and time zone."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.schedules import Cron

    from pipelines.offline import offline_flow

    strategy = {
        "enqueue": ConcurrencyLimitStrategy.ENQUEUE,
        "cancel_new": ConcurrencyLimitStrategy.CANCEL_NEW,
    }[params.schedule.overlap]
    return offline_flow.to_deployment(
        name=deployment_name(params),
        schedules=[Cron(params.schedule.cron, timezone=params.schedule.timezone)],
        paused=params.schedule.paused,
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=strategy),
        parameters={"root": str(paths.root), "overrides": list(overrides or [])},
        tags=["loopline", params.task_name],
        description=f"Loopline offline flow for {params.task_name} on {paths.root}",
    )


def monitor_deployment(params: Params, paths: ProjectPaths, overrides: list[str] | None = None):
    """The monitoring flow on `schedule.monitor_cron`, starting the offline deployment when
    an alarm says so (None when `schedule.monitor_cron` is null)."""
    from prefect.schedules import Cron

    from pipelines.monitoring import monitoring_flow

    if params.schedule.monitor_cron is None:
        return None
    return monitoring_flow.to_deployment(
        name=f"monitor-{params.task_name}",
        schedules=[Cron(params.schedule.monitor_cron, timezone=params.schedule.timezone)],
        paused=params.schedule.paused,
        concurrency_limit=1,  # a slow pass is not overtaken by the next one
        parameters={"root": str(paths.root), "overrides": list(overrides or []), "retrain": True},
        tags=["loopline", params.task_name, "monitor"],
        description=f"Loopline monitoring of {params.task_name} on {paths.root}",
    )


# The worker imports the flow from the installed package, wherever it runs (a process on this
# machine, a container from the Dockerfile's image), rather than from a file path here.
OFFLINE_ENTRYPOINT = "pipelines.offline:offline_flow"


def deploy_to_pool(
    params: Params, paths: ProjectPaths, pool: str, overrides: list[str] | None = None
) -> str:
    """Register the offline deployment on work pool `pool` (a `process` pool is created when
    none of that name exists; create Docker or Kubernetes pools with `prefect work-pool
    create`). A worker (`prefect worker start --pool <pool>`) then runs the scheduled runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    deployment = offline_deployment(params, paths, overrides)
    deployment.entrypoint = OFFLINE_ENTRYPOINT
    deployment_id = deployment.apply(work_pool_name=pool)
    return str(deployment_id)


def next_runs(cron: str, timezone: str, count: int = 1, after: datetime | None = None):
    """The next `count` times `cron` fires, read in `timezone` (aware datetimes)."""
    from cronsim import CronSim

    zone = ZoneInfo(timezone)
    start = (after or datetime.now(UTC)).astimezone(zone)
    sim = CronSim(cron, start)
    return [next(sim) for _ in range(count)]


async def list_deployments() -> list[dict[str, Any]]:
    """Every deployment on the server: name, cron, time zone, next run, last run's state."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    rows = []
    async with get_client() as client:
        for deployment in await client.read_deployments():
            schedules = [s.schedule for s in deployment.schedules or []]
            crons = [s for s in schedules if getattr(s, "cron", None)]
            cron = crons[0].cron if crons else None
            zone = (crons[0].timezone if crons else None) or "UTC"
            by_id = DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
            finished = await client.read_flow_runs(
                deployment_filter=by_id,
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(
                        type=FlowRunFilterStateType(
                            not_any_=[StateType.SCHEDULED, StateType.PENDING]
                        )
                    )
                ),
                sort=FlowRunSort.START_TIME_DESC,
                limit=1,
            )
            last = finished[0] if finished else None
            rows.append(
                {
                    "name": deployment.name,
                    "cron": cron,
                    "timezone": zone,
                    "paused": deployment.paused,
                    "next_run": next_runs(cron, zone)[0].isoformat() if cron else None,
                    "last_state": last.state.name if last and last.state else None,
                    "last_message": (last.state.message if last and last.state else None),
                    "concurrency_limit": getattr(
                        deployment.global_concurrency_limit, "limit", None
                    ),
                }
            )
    return rows


@contextmanager
def local_server(
    paths: ProjectPaths, port: int | None = None, timeout_s: float = 120.0, host: str = "127.0.0.1"
) -> Iterator[str]:
    """A real Prefect server on `host` (loopback by default), its database in the project's
    state folder.

    The temporary API Prefect starts by itself cannot run schedules; this one can. It runs in
    its own process group, so stopping it (here, on Ctrl-C, on an error) leaves no orphans.
    """
    import httpx

    home = paths.state / "prefect-server"
    home.mkdir(parents=True, exist_ok=True)
    running = home / "api_url"
    if running.is_file():  # `loopline schedule` is serving: talk to its server
        url = running.read_text().strip()
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                yield url
                return
        except httpx.HTTPError:
            pass
    port = port or free_port()
    url = f"http://{host}:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_URL")} | {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
        "PREFECT_UI_ENABLED": "false",
    }
    prefect = str(Path(sys.executable).with_name("prefect"))
    log = open(home / "server.log", "ab")  # noqa: SIM115 - closed in finally
    process = subprocess.Popen(
        [prefect, "server", "start", "--host", host, "--port", str(port), "--no-ui"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        try:
            wait_until_ok(f"{url}/health", process, timeout_s)
        except NotHealthy as error:
            raise NotHealthy(f"prefect server: {error}; see {home / 'server.log'}") from None
        running.write_text(url)
        yield url
    finally:
        running.unlink(missing_ok=True)
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        log.close()


def serve_deployments(*deployments: Any) -> None:
    """Serve `deployments` in this process (`prefect serve`) until Ctrl-C: the CLI's
    `loopline schedule` calls this, so that the CLI itself never imports Prefect."""
    from prefect import serve

    serve(*deployments, print_starting_message=False)
