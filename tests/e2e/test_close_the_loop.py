"""Acceptance (issue 16): the loop closes on real components.

A solar project trained on January-October is served (`loopline serve`); the held-out
November and early December are replayed through the real service, clean, then December
with the measured power scaled by 0.3 from the 8th (a failed string). `loopline schedule`
serves the offline and the monitoring deployments on a real local Prefect server. A
monitoring pass over the clean month raises no alarm over 30 windows; a pass after the
fault raises a live-quality alarm within 4 windows of it, and that alarm starts the offline
deployment: the run says which alarm started it, ingests the rows the service stored
(`ingest.source: live`) and its gate decides with the paired test.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import TINY, stop, write_project

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
FAULT = pd.Timestamp("2021-12-08", tz="UTC")
# A failed string: the measured power drops to 30 %. (Soiling's x0.7 is not caught on daily
# windows by this tiny forecaster: it reads lagged power, so its forecasts follow the drop,
# and cloudy spells move its daily error as much; see issue 16's notes.)
SCALE = 0.3
DETECTION_WINDOWS = 4  # daily windows from the fault's to the alarm's, at most
PARAMS = {
    **TINY,
    # First run: -P ingest.source=builtin:solar (January-October); later runs: live rows.
    "ingest": {"source": "live"},
    "serve": {"log_flush_interval_s": 0.1},
    # The policy: live quality retrains (a winter month drifts from a year's reference by
    # season alone, so feature drift only reports here).
    # Two windows in a row: the thresholds keep their false-alarm rate on autocorrelated
    # days (issue 24), so a cloudy spell in a clean November no longer crosses them; with
    # 32 reference days they are high, and the failed string is caught two days in.
    "monitor": {"period": "1D", "min_periods": 2, "signals": ["live_quality"]},
    "schedule": {"cron": "0 2 * * *", "monitor_cron": "15 * * * *"},
}


def loopline(root: Path, env: dict, *args: str, timeout: int = 600) -> str:
    done = subprocess.run(
        [str(BIN / "loopline"), *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def readings(root: Path, start: str, end: str, fault: pd.Timestamp | None = None) -> list[dict]:
    """The builtin site's raw rows in [start, end) as stream lines; with `fault`, the
    measured power from then on scaled by `SCALE`."""
    from loopline.params import load_params

    params = load_params(root / "params.yaml")
    raw = params.plugin.load_builtin(params)
    raw = raw[(raw["timestamp"] >= start) & (raw["timestamp"] < end)].sort_values("timestamp")
    if fault is not None:
        raw.loc[raw["timestamp"] >= fault, params.plugin.target_column] *= SCALE
    return json.loads(raw.to_json(orient="records", date_format="iso", date_unit="s"))


def replay(url: str, rows: list[dict]) -> None:
    from loopline.online.stream_client import stream_readings

    stats = asyncio.run(stream_readings(url, rows, lambda answer: None, rate=0))
    assert stats.errors == 0 and stats.answers > 0


def monitoring_rows(root: Path) -> pd.DataFrame:
    from loopline.watch.monitor import MonitoringStore

    store = MonitoringStore(f"sqlite:///{root / '.loopline' / 'predictions.db'}")
    try:
        return store.rows("solar")
    finally:
        store.close()


def run_monitoring(env: dict) -> None:
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
        run = run_deployment("loopline-monitor/monitor-solar", timeout=600)
    assert run.state.is_completed(), run.state


def offline_runs(env: dict) -> list:
    """The offline flow runs an alarm started (tagged `alarm`), finished or not (the cron's
    own scheduled runs are not among them)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterTags,
    )
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def read():
        async with get_client() as client:
            named = FlowFilter(name=FlowFilterName(any_=["loopline-offline"]))
            alarmed = FlowRunFilter(tags=FlowRunFilterTags(all_=["alarm"]))
            return await client.read_flow_runs(flow_filter=named, flow_run_filter=alarmed)

    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
        return asyncio.run(read())


def wait_for_offline_run(env: dict, timeout_s: float = 900):
    deadline = time.monotonic() + timeout_s
    while True:
        runs = offline_runs(env)
        if runs and all(r.state and r.state.is_final() for r in runs):
            return runs
        assert time.monotonic() < deadline, [r.state for r in runs]
        time.sleep(2)


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    """Trained, served and scheduled; yields (root, env, service url)."""
    from loopline.health import free_port
    from loopline.paths import ProjectPaths
    from pipelines.deployments import local_server
    from tests.serving.conftest import serve_process

    root = write_project(tmp_path_factory.mktemp("loop") / "proj", PARAMS)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.pop("LOOPLINE_HOME", None)
    first = ["-P", "ingest.source=builtin:solar", "-P", "ingest.start=2021-01-01"]
    loopline(root, env, "run", *first, "-P", "ingest.end=2021-11-01", "--reason", "first load")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(BIN / "loopline"), "serve", "--port", str(port)]
    with (
        serve_process(command, root, root / "serve.log", url, env),
        local_server(ProjectPaths.at(root)) as api_url,
    ):
        env["PREFECT_API_URL"] = api_url
        log = open(root / "schedule.log", "wb")  # noqa: SIM115 - closed below
        scheduling = subprocess.Popen(
            [str(BIN / "loopline"), "schedule"],
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 120
            while "monitor-solar" not in loopline(root, env, "schedule", "--list", "--json"):
                assert scheduling.poll() is None, (root / "schedule.log").read_text()
                assert time.monotonic() < deadline, "the deployments were never registered"
                time.sleep(1)
            yield root, env, url
        finally:
            # SIGTERM, as systemd or a container runtime stops it: a suite started as a
            # background job inherits SIGINT ignored, and the process would never see it.
            stop(scheduling, signal.SIGTERM)
            log.close()


def test_a_clean_month_raises_no_alarm_and_starts_nothing(loop):
    root, env, url = loop
    replay(url, readings(root, "2021-10-31", "2021-12-06"))
    time.sleep(1.0)  # the service's log writer flushes every 0.1 s
    run_monitoring(env)
    rows = monitoring_rows(root)
    quality = rows[(rows["signal"] == "live_quality") & (rows["feature"] == "*")]
    tested = quality[quality["statistic"].notna()]
    assert len(tested) >= 30, quality[["period_start", "rows", "note"]]
    assert not rows["alarm"].any()
    assert offline_runs(env) == []  # nothing started


def test_soiling_raises_the_alarm_that_retrains_on_live_rows_through_the_paired_gate(loop):
    from loopline import registry
    from loopline.paths import ProjectPaths

    root, env, url = loop
    replay(url, readings(root, "2021-12-05", "2021-12-21", fault=FAULT))
    time.sleep(1.0)
    run_monitoring(env)
    rows = monitoring_rows(root)
    alarms = rows[(rows["signal"] == "live_quality") & rows["alarm"]]
    assert len(alarms), rows[rows["signal"] == "live_quality"].tail(20)
    first = pd.Timestamp(alarms["period_start"].min()).tz_localize(None).tz_localize("UTC")
    assert FAULT <= first <= FAULT + pd.Timedelta(days=DETECTION_WINDOWS)
    assert (rows["signal"] == "retrain").sum() == 1

    [run] = wait_for_offline_run(env)
    assert run.state.is_completed(), run.state
    assert run.parameters["trigger"].startswith("monitoring alarm: live_quality of v1")
    uri = ProjectPaths.at(root).tracking_uri()
    client = registry.client(uri)
    [pipeline] = client.search_runs(
        [client.get_experiment_by_name("loopline-solar").experiment_id],
        filter_string=f"tags.`loopline.flow_run_id` = '{run.id}'",
    )
    tags = pipeline.data.tags
    assert tags["loopline.trigger"] == run.parameters["trigger"]
    assert pipeline.data.params["ingest.source"] == "live"
    # The live rows came in: November and December's first 20 days, each reading once.
    assert pipeline.data.metrics["validate_rows"] == 24 * 50
    # The gate compared it with the champion by the paired test (Diebold-Mariano).
    assert tags["loopline.gate.rule"] == "paired"
    assert tags["loopline.gate.method"].startswith("diebold")
    assert 0.0 <= pipeline.data.metrics["loopline.gate.p_value"] <= 1.0
