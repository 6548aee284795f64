"""Issue 18's live acceptance: while a client streams and another posts `/predict`, a worse
challenger in canary (trained on shuffled labels) is rolled back by the policy and a better
one is promoted; no request fails; both decisions are in the history with their statistics.

Two sites, so a canary routes one of them; the champion is a briefly trained forecaster
whose forecasts run 40% low, the better challenger the same training unbiased.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from loopline import registry
from loopline.paths import ProjectPaths
from loopline.watch import deploy
from tests.conftest import TINY, write_project
from tests.serving.conftest import publish_tiny_model, raw_readings
from tests.ui.conftest import clean_environment, service_process

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent
SITES = ("greensboro", "sand_point")
# Per site and phase: ~550 forecasts whose next 24 hours are measured. Forecasts 24 steps
# ahead overlap, so the policy's Diebold-Mariano test reads about one independent
# projection per 96 of them (`gate.dm_projections`): 190 gave it 2, too few to decide.
HOURS = 600


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    params = {
        **TINY,
        "solar": {"sites": list(SITES)},
        "serve": {"poll_interval_s": 0.5, "log_flush_interval_s": 0.2},
        "deploy": {"min_observations": 60},
    }
    root = write_project(tmp_path_factory.mktemp("deliver") / "proj", params)
    publish_tiny_model(root, seed=1, hidden=16, steps=400, scale=0.6)  # v1: champion, biased
    publish_tiny_model(root, seed=2, hidden=16, steps=400, shuffled=True, promote=False)  # v2
    publish_tiny_model(root, seed=1, hidden=16, steps=400, promote=False)  # v3: unbiased
    return root


def canary_of_one_site(uri: str, version: str, reason: str) -> deploy.Deployment:
    """A 50% canary whose id sends greensboro, and only it, to the challenger (the site
    where these small models differ clearly: at sand_point all of them are poor)."""
    for n in range(100):
        trial = deploy.Deployment(f"t{n}-{version}", version, "canary", 50.0, "", "", "", "")
        if [trial.routes(site) for site in SITES] == [True, False]:
            return deploy.start(uri, "solar", version, "canary", 50.0, reason, "ops", trial.id)
    raise AssertionError("no id routes greensboro alone")


def interleaved(start: str) -> list[dict]:
    by_site = [raw_readings(start, HOURS, site) for site in SITES]
    return [reading for pair in zip(*by_site, strict=True) for reading in pair]


def traffic(service: str, start: str, failures: list[str]) -> None:
    """A streaming client (every reading of both sites) and a client posting `/predict`
    windows meanwhile; every non-2xx answer or error line is a failure."""
    from loopline.online.stream_client import stream_readings

    done = threading.Event()

    def post() -> None:
        window = [
            {k: v for k, v in r.items() if k != "site_id"}
            for r in raw_readings(start, 48, SITES[0])
        ]
        with httpx.Client(timeout=30) as client:
            while not done.is_set():
                for site in SITES:
                    body = {"windows": [{"site_id": site, "readings": window}]}
                    answer = client.post(f"{service}/predict", json=body)
                    if answer.status_code != 200:
                        failures.append(f"/predict {answer.status_code}: {answer.text[:200]}")
                time.sleep(0.05)

    poster = threading.Thread(target=post)
    poster.start()

    def seen(answer: dict) -> None:
        if "error" in answer:
            failures.append(f"/stream: {answer}")

    try:
        asyncio.run(stream_readings(service, interleaved(start), seen, rate=150))
    finally:
        done.set()
        poster.join()


def cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "loopline"), *args],
        cwd=root,
        env=clean_environment(root),
        capture_output=True,
        text=True,
        timeout=300,
    )


def wait_for(check, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"waited {timeout_s:.0f} s for {what}"
        time.sleep(0.25)


def deployed(service: str, version: str | None) -> bool:
    found = httpx.get(f"{service}/metadata").json().get("deployment")
    return (found or {}).get("version") == version if version else found is None


def test_a_worse_canary_is_rolled_back_and_a_better_one_promoted(project):
    uri = ProjectPaths.at(project).tracking_uri()
    failures: list[str] = []
    with service_process(project) as service:
        worse = canary_of_one_site(uri, "2", "trained on shuffled labels")
        wait_for(lambda: deployed(service, "2"), "the service to load canary v2")
        traffic(service, "2021-03-01", failures)
        time.sleep(1.0)  # the log's last batch and the mirror thread's
        decided = cli(project, "deploy", "--decide")
        assert decided.returncode == 0, decided.stderr
        verdict = json.loads(decided.stdout.strip().splitlines()[-1])["verdict"]
        assert verdict["decision"] == "rollback", verdict
        assert verdict["statistics"]["p_value_worse"] < 0.05, verdict
        assert str(registry.champion_version(uri, "solar").version) == "1"
        wait_for(lambda: deployed(service, None), "the service to drop the canary")

        better = canary_of_one_site(uri, "3", "the unbiased retrain")
        wait_for(lambda: deployed(service, "3"), "the service to load canary v3")
        traffic(service, "2021-04-01", failures)
        time.sleep(1.0)
        monitored = cli(project, "monitor")  # the policy runs in the monitoring pass too
        assert monitored.returncode in (0, 3), monitored.stderr
        summary = json.loads(monitored.stdout.strip().splitlines()[-1])
        (delivered,) = summary["deployments"]
        assert delivered["model"] == "solar"
        assert delivered["verdict"]["decision"] == "promote", delivered
        assert str(registry.champion_version(uri, "solar").version) == "3"
        wait_for(
            lambda: httpx.get(f"{service}/metadata").json()["model"]["version"] == "3",
            "the service to follow the promotion",
        )
    assert failures == []
    history = deploy.history(uri, "solar")
    ends = [(e["deployment"], e["outcome"]) for e in history if e["outcome"] != "started"]
    assert ends == [(worse.id, "rolled_back"), (better.id, "promoted")]
    assert history[-1]["statistics"]["p_value_better"] < 0.05
    move = registry.champion_history(uri, "solar")[-1]
    assert (move["to"], move["via"]) == ("3", "deploy policy")
    assert move["gate"]["method"] == "diebold_mariano" and move["gate"]["rows"] >= 60
