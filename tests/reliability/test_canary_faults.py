"""A broken canary costs nothing: a challenger that cannot answer its items (a longer input
window than the champion's) is answered for by the champion, counted as the challenger's
errors, and rolled back by the policy without waiting for pairs; the policy judges every
model's deployment and records who ended one (issue 25, items 1 and 2)."""

from __future__ import annotations

import getpass
import json

import yaml
from typer.testing import CliRunner

from loopline import registry
from loopline.app.cli import app
from loopline.params import load_params
from loopline.paths import ProjectPaths
from loopline.watch import deploy
from tests.serving.conftest import publish_tiny_model, service_app
from tests.serving.test_deployments import logged
from tests.serving.test_service_api import wait_for, window

OBSERVATIONS = 12  # deploy.min_observations here: the policy decides after this many


def with_deploy_settings(root, **settings) -> None:
    path = ProjectPaths.at(root).params_file
    raw = yaml.safe_load(path.read_text())
    raw["deploy"] = {**raw.get("deploy", {}), **settings}
    path.write_text(yaml.safe_dump(raw))


def test_a_canary_that_cannot_answer_costs_nothing_and_is_rolled_back(served_project):
    from starlette.testclient import TestClient

    with_deploy_settings(served_project, min_observations=OBSERVATIONS)
    paths = ProjectPaths.at(served_project)
    uri = paths.tracking_uri()
    longer = publish_tiny_model(served_project, seed=31, promote=False, window=48)
    deploy.start(uri, "solar", longer, "canary", 100.0, "needs twice the readings")
    starts = [f"2021-02-{day:02d}" for day in range(1, OBSERVATIONS + 3)]
    with TestClient(service_app()) as client:
        wait_for(client, lambda m: m["deployment"] is not None)
        for start in starts:
            answer = client.post("/predict", json={"windows": [window(start=start)]})
            assert answer.status_code == 200, answer.text  # the champion answered
            assert answer.json()[0]["model_version"] == "2"
    rows = logged(served_project, want=lambda r: len(r) >= 2 * len(starts))
    canary = [r for r in rows if r["role"] == "canary"]
    assert len(canary) == len(starts) and all("error" in r["output"] for r in canary)
    control = [r for r in rows if r["role"] == "control"]
    assert len(control) == len(starts) and not any("error" in r["output"] for r in control)

    _, verdict, entry = deploy.decide(load_params(paths.params_file), paths)
    assert verdict.decision == "rollback", verdict
    assert verdict.statistics["pairs"] == 0  # decided on errors, without any pair
    assert verdict.statistics["error_rate_challenger"] == 1.0
    assert entry["outcome"] == "rolled_back" and entry["who"] == "deploy policy"
    assert deploy.current(uri, "solar") is None
    assert str(registry.champion_version(uri, "solar").version) == "2"


def test_the_policy_judges_every_model_and_an_operator_ending_one_is_recorded(served_project):
    paths = ProjectPaths.at(served_project)
    uri = paths.tracking_uri()
    for seed in (41, 42):  # a second model of the project: v1, v2 (champion)
        publish_tiny_model(served_project, seed=seed, name="solar-east")
    made = deploy.start(uri, "solar-east", "1", "canary", 50.0, "the other model")

    runner = CliRunner()
    judged = runner.invoke(app, ["deploy", "--status", "--project", str(served_project)])
    assert judged.exit_code == 0, judged.output
    (line,) = [json.loads(x) for x in judged.output.splitlines() if x.startswith("{")]
    assert line["model"] == "solar-east" and line["deployment"]["id"] == made.id
    assert line["verdict"]["decision"] == "wait"  # nothing logged yet
    assert [d.model for d in deploy.decide_all(load_params(paths.params_file), paths)] == [
        "solar-east"
    ]

    ended = runner.invoke(app, ["deploy", "solar-east", "--end", "--project", str(served_project)])
    assert ended.exit_code == 0, ended.output
    last = deploy.history(uri, "solar-east")[-1]
    assert (last["outcome"], last["who"]) == ("ended", getpass.getuser())
    assert deploy.current(uri, "solar-east") is None
