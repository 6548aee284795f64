"""Scheduled runs on a real Prefect server: the deployment's cron, time zone and next run,
a run triggered through the API, and a second run that has nothing new to do."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from loopline.errors import ConfigError
from pipelines.deployments import next_runs
from tests.conftest import TINY, stop, write_project

LOOPLINE = str(Path(sys.executable).with_name("loopline"))


def test_next_run_is_read_in_the_schedule_time_zone():
    after = datetime(2026, 11, 23, 23, 10, tzinfo=UTC)  # 08:10 on the 24th in Seoul
    [seoul] = next_runs("0 2 * * *", "Asia/Seoul", after=after)
    assert seoul.isoformat() == "2026-11-25T02:00:00+09:00"
    [utc] = next_runs("0 2 * * *", "UTC", after=after)
    assert utc.isoformat() == "2026-11-24T02:00:00+00:00"


@pytest.mark.parametrize(
    ("override", "named"),
    [("schedule.cron=every day", "schedule.cron"), ("schedule.timezone=Mars/Base", "Mars/Base")],
)
def test_bad_schedule_params_are_refused_by_name(tmp_path, override, named):
    from loopline.params import load_params

    root = write_project(tmp_path / "p", TINY)
    with pytest.raises(ConfigError, match=named):
        load_params(root / "params.yaml", [override])


@pytest.fixture(scope="module")
def webhook():
    """A local HTTP endpoint that records the JSON POSTed to it."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[dict] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers["content-length"])
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()


@pytest.fixture(scope="module")
def scheduled(tmp_path_factory, webhook):
    """A project served by `loopline schedule` against a real local Prefect server."""
    from loopline.paths import ProjectPaths
    from pipelines.deployments import local_server

    params = {
        **TINY,
        "schedule": {"cron": "0 2 * * *", "timezone": "Asia/Seoul", "webhook_url": webhook[0]},
    }
    root = write_project(tmp_path_factory.mktemp("sched") / "proj", params)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    with local_server(ProjectPaths.at(root)) as api_url:
        env["PREFECT_API_URL"] = api_url
        log = open(root / "schedule.log", "wb")  # noqa: SIM115 - closed below
        serving = subprocess.Popen(
            [LOOPLINE, "schedule"], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 120
            while len(listing(root, env)) < 2:  # the offline and the monitoring deployments
                assert serving.poll() is None, (root / "schedule.log").read_text()
                assert time.monotonic() < deadline, "the deployments were never registered"
                time.sleep(1)
            yield root, env
        finally:
            # SIGTERM, as systemd or a container runtime stops it: a suite started as a
            # background job inherits SIGINT ignored, and the process would never see it.
            stop(serving, signal.SIGTERM)
            log.close()


def real_server(env: dict):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    return temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]})


def listing(root: Path, env: dict) -> list[dict]:
    done = subprocess.run(
        [LOOPLINE, "schedule", "--list", "--json"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def deployment(root: Path, env: dict, name: str = "offline-solar") -> dict:
    [row] = [r for r in listing(root, env) if r["name"] == name]
    return row


def test_the_deployment_shows_its_cron_time_zone_and_next_run(scheduled):
    root, env = scheduled
    row = deployment(root, env)
    assert (row["cron"], row["timezone"]) == ("0 2 * * *", "Asia/Seoul")
    assert row["next_run"] == next_runs("0 2 * * *", "Asia/Seoul")[0].isoformat()
    assert row["next_run"].endswith("T02:00:00+09:00")
    assert row["concurrency_limit"] == 1  # never two runs at once
    assert row["paused"] is False
    # Beside it, the monitoring pass on schedule.monitor_cron (in the same time zone).
    watch = deployment(root, env, "monitor-solar")
    assert (watch["cron"], watch["timezone"]) == ("15 * * * *", "Asia/Seoul")


def test_a_run_triggered_through_the_api_completes_then_finds_nothing_new(scheduled, webhook):
    root, env = scheduled
    # Settings, not the environment: another test may hold Prefect's test harness (its own
    # temporary API) open in this process, and its settings would win over a variable.
    with real_server(env):
        from prefect.deployments import run_deployment

        first = run_deployment("loopline-offline/offline-solar", timeout=600)
        assert first.state.is_completed(), first.state
        second = run_deployment("loopline-offline/offline-solar", timeout=300)
    assert second.state.is_completed() and second.state.name == "Nothing new"
    assert second.state.message.startswith("nothing new: data version")
    assert deployment(root, env)["last_state"] == "Nothing new"
    # The skipped run was reported to the webhook; the published one was not.
    [report] = webhook[1]
    assert report["state"] == "Nothing new" and report["project"] == str(root)
    assert report["text"].startswith(f"Loopline run {second.name} on {root}: Nothing new")


def test_two_runs_of_the_deployment_never_overlap(scheduled):
    """Two runs requested at once: the second waits for the first (concurrency limit 1)."""
    import asyncio

    _, env = scheduled
    with real_server(env):
        from prefect.client.orchestration import get_client
        from prefect.deployments import run_deployment

        runs = [run_deployment("loopline-offline/offline-solar", timeout=0) for _ in range(2)]

        async def finished():
            async with get_client() as client:
                return [await client.read_flow_run(r.id) for r in runs]

        deadline = time.monotonic() + 300
        while True:
            done = asyncio.run(finished())
            if all(r.state.is_final() for r in done):
                break
            assert time.monotonic() < deadline, [r.state for r in done]
            time.sleep(1)
    assert all(r.state.is_completed() for r in done), [r.state for r in done]
    first, second = sorted(done, key=lambda r: r.start_time)
    assert second.start_time >= first.end_time  # one after the other, never at once


def test_the_flow_runs_on_a_process_work_pool_through_a_worker(tmp_path):
    """The production path: `loopline schedule --pool` registers the deployment on a work
    pool, a `prefect worker` (here a process worker; Docker or Kubernetes in production)
    picks up a run requested through the API and runs the flow in its own process."""
    from loopline import registry
    from loopline.paths import ProjectPaths
    from pipelines.deployments import local_server

    root = write_project(tmp_path / "proj", {**TINY, "train": {"max_epochs": 2}})
    paths = ProjectPaths.at(root)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    with local_server(paths) as api_url:
        env["PREFECT_API_URL"] = api_url
        env["PREFECT_WORKER_QUERY_SECONDS"] = "1"
        deployed = subprocess.run(
            [LOOPLINE, "schedule", "--pool", "loopline-local", "--project", str(root)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        said = " ".join((deployed.stdout + deployed.stderr).split())
        assert "prefect worker start --pool loopline-local" in said
        log = open(root / "worker.log", "wb")  # noqa: SIM115 - closed below
        worker = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("prefect")),
                "worker",
                "start",
                "--pool",
                "loopline-local",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            with real_server(env):
                from prefect.deployments import run_deployment

                flow_run = run_deployment("loopline-offline/offline-solar", timeout=600)
            assert flow_run.state.is_completed(), (
                f"{flow_run.state}\n{(root / 'worker.log').read_text()[-3000:]}"
            )
            assert flow_run.work_pool_name == "loopline-local"
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
            log.close()
    published = registry.latest_version(paths.tracking_uri(), "solar")
    assert published is not None and published.tags[registry.PUBLISH_COMPLETE] == "true"


def test_pool_deployment_needs_a_server_the_workers_reach(tmp_path):
    root = write_project(tmp_path / "proj", TINY)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    done = subprocess.run(
        [LOOPLINE, "schedule", "--pool", "p", "--project", str(root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "PREFECT_API_URL" in done.stdout + done.stderr
