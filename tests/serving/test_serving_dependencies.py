"""The service runs on its own dependency set, `requirements-serve.lock`, which is what the
serving image installs: no torch, Prefect, DVC, Great Expectations or Optuna.

The test starts the real `loopline serve` with every installed distribution that set lacks
made unimportable (a `sitecustomize` on PYTHONPATH refuses their modules, in the service's
worker processes too), against a real MLflow server, and has it answer.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import httpx

from loopline.health import free_port
from tests.conftest import TINY, write_project
from tests.serving.conftest import mlflow_server, publish_tiny_model, serve_process, window_of

REPO = Path(__file__).resolve().parents[2]
SERVE_LOCK = REPO / "requirements-serve.lock"
BIN = Path(sys.executable).parent

REFUSING = """
import importlib.abc
import sys

REFUSED = {refused!r}


class RefuseOutsideTheServingSet(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if path is None and name in REFUSED:
            raise ModuleNotFoundError(f"{{name}} is not in requirements-serve.lock", name=name)
        return None


sys.meta_path.insert(0, RefuseOutsideTheServingSet())
"""


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def serving_distributions() -> set[str]:
    pins = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", SERVE_LOCK.read_text(), re.M)
    return {normalized(name) for name in pins} | {"loopline"}


def refused_modules() -> set[str]:
    """Top-level modules of installed distributions outside the serving set."""
    allowed = serving_distributions()
    return {
        module
        for module, dists in packages_distributions().items()
        if not any(normalized(d) in allowed for d in dists)
    }


def test_the_serving_lock_holds_no_training_stack():
    pinned = serving_distributions()
    for name in ("torch", "prefect", "dvc", "great-expectations", "optuna", "mlflow", "dask"):
        assert name not in pinned, f"{name} is in requirements-serve.lock"
    for name in ("bentoml", "onnxruntime", "mlflow-skinny", "pandas", "sqlalchemy"):
        assert name in pinned, f"{name} is missing from requirements-serve.lock"


def serving_set_only(folder: Path) -> Path:
    """A folder whose `sitecustomize` (on PYTHONPATH) refuses every module outside the
    serving set."""
    refused = refused_modules()
    assert {"torch", "prefect", "dvc", "great_expectations", "optuna"} <= refused
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(REFUSING.format(refused=sorted(refused)))
    return folder


def test_every_builtin_task_and_the_service_code_import_with_only_the_serving_set(tmp_path):
    code = (
        "import serving.abilities, serving.boot, loopline.app.cli\n"
        "from loopline.tasks import BUILTIN, task_named\n"
        "for name in BUILTIN:\n"
        "    task_named(name)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(serving_set_only(tmp_path / "guard"))}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


def test_the_service_serves_with_only_the_serving_set_importable(tmp_path, monkeypatch):
    guard = serving_set_only(tmp_path / "guard")
    for var in ("MLFLOW_TRACKING_URI", "LOOPLINE_HOME"):
        monkeypatch.delenv(var, raising=False)
    with mlflow_server(tmp_path / "mlflow") as uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        root = write_project(tmp_path / "proj", TINY)
        version = publish_tiny_model(root, seed=1)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "PYTHONPATH": str(guard), "LOOPLINE_TASK": "solar"}
        command = [str(BIN / "loopline"), "serve", "--port", str(port)]
        log_path = tmp_path / "serve.log"
        with serve_process(command, root, log_path, url, env), httpx.Client(timeout=60) as client:
            window = window_of("2021-02-01", 48)
            answer = client.post(f"{url}/predict", json={"windows": [window]})
            metadata = client.get(f"{url}/metadata").json()
    assert answer.status_code == 200, answer.text
    out = answer.json()
    assert len(out) == 1 and out[0]["model_version"] == version and len(out[0]["forecast"]) == 24
    assert str(metadata["model"]["version"]) == version, metadata
    assert "is not in requirements-serve.lock" not in log_path.read_text()
