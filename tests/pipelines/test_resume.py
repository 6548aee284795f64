"""Resume after a crash: `loopline run` killed with SIGKILL in the middle of training, then
`loopline run --resume <flow-run-id>`: completed stages are not redone, training continues
after its last saved epoch, and nothing is duplicated in the data, MLflow or the registry.
The result equals an uninterrupted run's.

Real processes (the console script, its own Prefect API and SQLite stores), killed the way
an OOM killer or `kill -9` on a container does: the whole process group at once.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loopline import registry
from loopline.offline.datastore import SnapshotStore
from loopline.paths import ProjectPaths
from tests.conftest import TINY, write_project

LOOPLINE = str(Path(sys.executable).parent / "loopline")
# Long enough that the kill lands mid-training; patience so early stopping cannot end it.
PARAMS = {**TINY, "train": {"max_epochs": 14, "patience": 14}}


def clean_env(home: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "MLFLOW_", "LOOPLINE_"))
    }
    env["HOME"] = str(home)
    return env


def loopline(root: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [LOOPLINE, *args, "--project", str(root)],
        env=clean_env(root.parent),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"{args}:\n{done.stdout[-3000:]}\n{done.stderr[-4000:]}"
    return done


def run_and_kill_in_training(root: Path, after_epoch: int) -> tuple[str, str]:
    """Start `loopline run`, SIGKILL its process group once `after_epoch` is reported;
    return (flow run id, what it printed)."""
    process = subprocess.Popen(
        [LOOPLINE, "run", "--project", str(root)],
        env=clean_env(root.parent),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own group: the Prefect API it starts dies with it
    )
    printed, flow_run_id = [], None
    deadline = time.monotonic() + 600
    try:
        for line in process.stderr:
            printed.append(line)
            if found := re.search(r"flow run ([0-9a-f-]{36})", line):
                flow_run_id = found.group(1)
            if re.search(rf"epoch\s+{after_epoch}/", line):
                os.killpg(process.pid, signal.SIGKILL)
                break
            assert time.monotonic() < deadline, "training never started"
    finally:
        process.wait(timeout=60)
    output = "".join(printed)
    assert process.returncode == -signal.SIGKILL, output[-3000:]
    assert flow_run_id, output[-3000:]
    return flow_run_id, output


def pipeline_runs(paths: ProjectPaths) -> list:
    client = registry.client(paths.tracking_uri())
    experiment = client.get_experiment_by_name("loopline-solar")
    return client.search_runs([experiment.experiment_id], max_results=1000)


@pytest.mark.e2e
def test_a_run_killed_in_training_resumes_without_redoing_or_duplicating(tmp_path):
    root = write_project(tmp_path / "killed" / "proj", PARAMS)
    flow_run_id, before = run_and_kill_in_training(root, after_epoch=3)
    paths = ProjectPaths.at(root)
    assert registry.latest_version(paths.tracking_uri(), "solar") is None  # killed before it

    done = loopline(root, "run", "--resume", flow_run_id)
    resumed = done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["status"] == "published" and summary["version"] == "1"
    assert f"flow run {flow_run_id}" in resumed  # the same flow run, continued
    # Completed stages were reused, not redone; training went on after the saved epochs.
    for stage_name in ("ingest", "validate", "snapshot", "features", "labeling", "split", "tune"):
        block = resumed.split(f"▶ {stage_name}", 1)[1].split("✓", 1)[0]
        assert "reused" in block, f"{stage_name} was redone:\n{block}"
    resumed_epochs = [int(e) for e in re.findall(r"epoch\s+(\d+)/", resumed)]
    assert resumed_epochs and resumed_epochs[0] > 3 and resumed_epochs[-1] == 14
    assert "trial 0" in before and "trial 0" not in resumed

    # Nothing duplicated: one batch of rows, one MLflow pipeline run, one registered version.
    store = SnapshotStore(paths.snapshots("solar"))
    assert len(store.manifest()["batches"]) == 1
    rows = store.load()
    assert not rows.duplicated(["site_id", "timestamp"]).any()
    runs = pipeline_runs(paths)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["loopline.flow_run_id"] == flow_run_id
    assert len(runs) - 1 == PARAMS["tune"]["n_trials"]  # each trial logged once
    client = registry.client(paths.tracking_uri())
    history = client.get_metric_history(parents[0].info.run_id, "val_loss")
    assert sorted(m.step for m in history) == list(range(1, 15))  # each epoch logged once
    assert len(client.search_model_versions("name='solar'")) == 1
    assert len(registry.champion_history(paths.tracking_uri(), "solar")) == 1

    # The same artifacts as a run that was never interrupted.
    straight_root = write_project(tmp_path / "straight" / "proj", PARAMS)
    loopline(straight_root, "run")
    straight = pipeline_runs(ProjectPaths.at(straight_root))
    straight_parent = next(r for r in straight if "mlflow.parentRunId" not in r.data.tags)
    assert straight_parent.data.metrics == parents[0].data.metrics


@pytest.mark.e2e
def test_resume_refuses_a_finished_or_unknown_flow_run(tmp_path):
    root = write_project(tmp_path / "proj", {**TINY, "train": {"max_epochs": 2}})
    done = loopline(root, "run")
    flow_run_id = re.search(r"flow run ([0-9a-f-]{36})", done.stderr).group(1)
    for resume, message in (
        (flow_run_id, "already completed"),
        ("0c7d3a10-0000-4000-8000-000000000000", "no flow run"),
        ("yesterday", "not a flow run id"),
    ):
        refused = subprocess.run(
            [LOOPLINE, "run", "--resume", resume, "--project", str(root)],
            env=clean_env(root.parent),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert refused.returncode != 0
        assert message in refused.stdout + refused.stderr
