"""End to end: the real `loopline` CLI in a fresh git + DVC project, on real components.

Runs the console script in a subprocess exactly as a user would (a small config so it fits
CI), then checks the registry through `loopline models --json` and the champion's ONNX file
against the PyTorch weights logged with it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import REPO, TINY

pytestmark = pytest.mark.e2e
LOOPLINE = str(Path(sys.executable).parent / "loopline")


def sh(*args: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def fresh_project(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e") / "loopline"
    root.mkdir()
    # The project's own DVC set-up, params from a small config, under git like a clone.
    shutil.copytree(REPO / ".dvc", root / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    for name in (".dvcignore", ".gitignore", "data.dvc"):
        shutil.copy(REPO / name, root / name)
    (root / "params.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "MLFLOW_", "LOOPLINE_"))
    }
    env["HOME"] = str(root.parent)  # no user-level state leaks in or out
    for args in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.email=ci@loopline", "-c", "user.name=ci", "commit", "-qm", "init"],
    ):
        sh(*args, cwd=root, env=env)
    return root, env


def test_loopline_run_publishes_an_onnx_champion(fresh_project, tmp_path):
    root, env = fresh_project
    done = sh(LOOPLINE, "run", cwd=root, env=env)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["status"] == "published" and summary["promoted"]
    for stage in (
        "ingest",
        "validate",
        "snapshot",
        "features",
        "labeling",
        "split",
        "tune",
        "train",
        "evaluate",
        "export",
        "publish",
    ):
        assert f"✓ {stage}" in done.stderr  # progress per stage

    listing = json.loads(sh(LOOPLINE, "models", "--json", cwd=root, env=env).stdout)
    assert listing["tracking_uri"] == f"sqlite:///{root / '.loopline' / 'mlflow.db'}"
    [version] = listing["versions"]
    assert version["aliases"] == ["challenger", "champion"]
    assert version["data_version"] == summary["data_version"]
    head = sh("git", "rev-parse", "HEAD", cwd=root, env=env).stdout.strip()
    assert version["git_commit"] == head
    assert json.loads(version["tags"]["loopline.params"])["seed"] == TINY["seed"]
    assert version["metrics"]["test_rmse"] > 0 and version["model_uri"] == "models:/solar/1"

    # The DVC remote holds the snapshot, and data.dvc points at it.
    pointer = yaml.safe_load((root / "data.dvc").read_text())
    md5 = pointer["outs"][0]["md5"]
    assert md5.startswith(summary["data_version"])
    assert (root / ".loopline" / "dvc-remote" / "files" / "md5" / md5[:2] / md5[2:]).exists()

    # onnxruntime runs the champion and agrees with the PyTorch weights logged beside it.
    import mlflow

    from loopline import registry
    from loopline.offline.train import load_checkpoint, predict
    from loopline.onnx_runtime import embedded_spec, onnx_session, run_onnx
    from loopline.tasks import get_task
    from loopline.tasks.forecast.windows import make_windows

    uri = listing["tracking_uri"]
    folder = registry.download_model(uri, "models:/solar@champion", tmp_path / "m")
    session = onnx_session(folder / "model.onnx")
    spec = embedded_spec(session)
    weights = mlflow.artifacts.download_artifacts(
        run_id=summary["run_id"],
        artifact_path="torch/model.pt",
        dst_path=str(tmp_path / "w"),
        tracking_uri=uri,
    )
    solar = get_task("solar")
    model, torch_spec = load_checkpoint(solar, Path(weights))
    assert torch_spec == spec
    from loopline.offline.datastore import SnapshotStore

    rows = SnapshotStore(root / "data" / "solar").load()
    frame = solar.add_labels(solar.add_features(rows, spec), spec)
    windows = make_windows(frame, spec, spec.options.window)
    assert len(windows) > 100
    onnx_out = run_onnx(session, windows.x)
    np.testing.assert_allclose(onnx_out, predict(model, windows.x), atol=1e-3, rtol=1e-4)


def test_models_command_lists_history(fresh_project):
    root, env = fresh_project
    done = sh(LOOPLINE, "models", "--history", cwd=root, env=env)
    assert "champion" in done.stdout and "v1" in done.stderr


def test_the_published_champion_serves_live_forecasts(fresh_project):
    """Offline → online: `loopline serve` loads the flow's champion and streams forecasts."""
    import signal

    import httpx

    from loopline.health import free_port, wait_until_ok

    root, env = fresh_project
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [LOOPLINE, "serve", "--port", str(port)],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_ok(f"{url}/readyz", server)
        meta = httpx.get(f"{url}/metadata").json()["model"]
        listing = json.loads(sh(LOOPLINE, "models", "--json", cwd=root, env=env).stdout)
        assert meta["version"] == "1"
        assert meta["data_version"] == listing["versions"][0]["data_version"]
        done = sh(
            LOOPLINE, "stream", "--url", url, "--rate", "0", "--limit", "120", cwd=root, env=env
        )
        forecasts = [line for line in done.stdout.splitlines() if line.startswith("greensboro")]
        assert forecasts and all(" v1 " in line for line in forecasts)
        assert " 0 errors" in done.stderr
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    from loopline.online.predlog import read_predictions

    logged = read_predictions(f"sqlite:///{root / '.loopline' / 'predictions.db'}")
    assert len(logged) == len(forecasts) and {r["model_version"] for r in logged} == {"1"}
