"""Serving fixtures: a project whose registry holds small real ONNX forecasters.

The models are untrained (seeded) GRUs exported and registered through the same library
calls the offline flow uses, which takes seconds instead of a flow run per version.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pytest

from tests.conftest import TINY, stop, write_project

SITE = "greensboro"


def publish_tiny_model(
    root: Path,
    seed: int,
    promote: bool = True,
    hidden: int = 8,
    steps: int = 0,
    shuffled: bool = False,
    scale: float = 1.0,
    window: int = 24,
    name: str = "solar",
) -> str:
    """Export a small forecaster reading `window` hours and register it as `name`;
    returns its version. Untrained unless `steps` (Adam steps on the training windows;
    `shuffled`: on labels shuffled across windows, a model that learned nothing real);
    `scale` multiplies its forecasts (a biased model)."""
    import mlflow
    import torch

    from loopline import registry
    from loopline.offline.export import export_and_check
    from loopline.offline.features import fit_normalization
    from loopline.onnx_runtime import SPEC_KEY, onnx_session, run_onnx
    from loopline.params import load_params
    from loopline.paths import ProjectPaths
    from loopline.tasks import get_task
    from loopline.tasks.forecast.options import with_window
    from loopline.tasks.forecast.windows import make_windows

    paths = ProjectPaths.at(root)
    params = load_params(paths.params_file)
    task = get_task("solar")
    frame, spec = training_frame(params)
    spec = with_window(fit_normalization(spec, frame), window)
    torch.manual_seed(seed)
    hparams = task.Hyperparameters(
        learning_rate=1e-3,
        batch_size=64,
        hidden_size=hidden,
        num_layers=1,
        dropout=0.0,
        window=window,
        cell="gru",
    )
    model = task.build_model(hparams, spec)
    examples = make_windows(task.add_labels(frame, spec), spec, window)
    if steps:
        train_briefly(model, examples, steps, shuffled)
    with torch.no_grad():
        model.target_mean *= scale
        model.target_std *= scale
    golden = examples.x[:8]
    scratch = paths.state / "fixture" / str(seed)
    scratch.mkdir(parents=True, exist_ok=True)
    onnx_path = scratch / "model.onnx"
    export_and_check(model, golden, onnx_path, {SPEC_KEY: spec.to_json()}, 1e-2, 1e-4)
    golden_out = run_onnx(onnx_session(onnx_path), golden)
    files = registry.write_model_files(scratch, spec, params.to_dict(), golden, golden_out)
    uri = paths.tracking_uri()
    experiment = registry.ensure_experiment(uri, "loopline-solar", paths.local_artifact_root())
    run_id = mlflow.MlflowClient(uri).create_run(experiment).info.run_id
    published = registry.log_onnx_model(
        uri,
        run_id,
        onnx_path,
        name,
        files,
        metadata={},
        signature=None,
        tags={"loopline.data_version": f"fixture-{seed}", "loopline.metric.test_rmse": "1.0"},
    )
    if promote:
        registry.move_champion(uri, name, published.version, reason=f"fixture seed {seed}")
    return published.version


def train_briefly(model, examples, steps: int, shuffled: bool) -> None:
    import torch

    x = torch.tensor(examples.x, dtype=torch.float32)
    target = (torch.tensor(examples.y, dtype=torch.float32) - model.target_mean) / model.target_std
    if shuffled:
        target = target[torch.randperm(len(target))]
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        batch = torch.randint(0, len(x), (64,))
        loss = torch.nn.functional.mse_loss(model(x[batch]), target[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()


def training_frame(params):
    from loopline.tasks import get_task

    task = get_task("solar")
    raw = task.load_builtin(params)
    raw = raw[raw["timestamp"] < "2021-03-01"].reset_index(drop=True)
    spec = task.new_feature_spec(params)
    return task.add_features(raw, spec), spec


@pytest.fixture(scope="session")
def registry_template(tmp_path_factory):
    """A project with two published versions, v2 the champion (built once per session)."""
    root = write_project(tmp_path_factory.mktemp("serving") / "proj", TINY)
    publish_tiny_model(root, seed=1)
    publish_tiny_model(root, seed=2)
    return root


def private_copy(template: Path, tmp_path: Path, monkeypatch) -> Path:
    """A private copy of a template project (its own registry database), the project the
    test's services and commands read."""
    root = tmp_path / "proj"
    shutil.copytree(template, root)
    for var in ("MLFLOW_TRACKING_URI", "LOOPLINE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LOOPLINE_PROJECT", str(root))
    return root


@pytest.fixture
def served_project(registry_template, tmp_path, monkeypatch) -> Path:
    """A private copy of the template project (v1, v2; v2 champion)."""
    return private_copy(registry_template, tmp_path, monkeypatch)


def raw_readings(start: str, hours: int, site: str = SITE):
    """Raw builtin rows of one site (any builtin one) as reading dicts (JSON-ready)."""
    from loopline.params import parse_params
    from loopline.tasks import get_task

    params = parse_params({**TINY, "solar": {"sites": [site]}})
    raw = get_task("solar").load_builtin(params)
    raw = raw[(raw["site_id"] == site) & (raw["timestamp"] >= start)].head(hours)
    rows = []
    for record in raw.to_dict("records"):
        record["timestamp"] = record["timestamp"].isoformat()
        rows.append(record)
    return rows


def window_of(start: str, hours: int, site: str = SITE) -> dict:
    """One /predict window: the site once, its readings without it."""
    readings = [
        {k: v for k, v in r.items() if k != "site_id"} for r in raw_readings(start, hours, site)
    ]
    return {"site_id": site, "readings": readings}


def service_app(startup_wait_s: float = 120.0):
    """A fresh ASGI app of the one service for one TestClient, serving the task of the
    project `LOOPLINE_PROJECT` names (read now, as a service process reads it at start).

    The service loads its first model in the background; tests wait for it at start-up
    (`startup_wait_s`, `serve.startup_wait_s`) so a client is ready once entered.

    Each TestClient runs its own event loop, and BentoML's adaptive-batching dispatcher
    binds to the loop that first uses it, so every client needs its own app. BentoML also
    registers its request metrics globally when an app is built: drop the previous app's
    first, or the second build fails on duplicate metric names (one app per process in
    production, so this only concerns tests).
    """
    import prometheus_client

    from serving.boot import boot_params
    from serving.service import service_for

    registry = prometheus_client.REGISTRY
    for collector in list(registry._collector_to_names):
        names = registry._collector_to_names[collector]
        if any(name.startswith("bentoml_") for name in names):
            registry.unregister(collector)
    import os

    environ = {**os.environ, "LOOPLINE_SERVE_STARTUP_WAIT_S": str(startup_wait_s)}
    return service_for(boot_params(environ)).to_asgi()


@contextlib.contextmanager
def serve_process(
    command: list[str],
    cwd: Path,
    log_path: Path,
    url: str,
    env: dict[str, str] | None = None,
    wait_for: str = "/readyz",
):
    """A `loopline serve` process, answering `wait_for` on entry, SIGTERMed on exit."""
    import signal
    import subprocess

    from loopline.health import NotHealthy, wait_until_ok

    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            wait_until_ok(f"{url}{wait_for}", process)
        except NotHealthy as error:
            log.flush()
            pytest.fail(f"{error}:\n{log_path.read_text()}")
        yield process
    finally:
        stop(process, signal.SIGTERM)
        log.close()


@contextlib.contextmanager
def mlflow_server(folder: Path, host: str = "127.0.0.1", reached_as: tuple[str, ...] = ()):
    """A real MLflow tracking server (SQLite backend, proxied artifacts under `folder`), as
    a team runs it for hosts that share no folder, listening on `host` and answering clients
    that name it by loopback, `host` or one of `reached_as` (MLflow refuses other Host
    headers): yields its URI, stopped on exit."""
    import sys

    from loopline.health import free_port

    port = free_port()
    uri = f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}"
    folder.mkdir(parents=True, exist_ok=True)
    names = {"localhost", "127.0.0.1", host, *reached_as} - {"0.0.0.0"}
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        *("server", "--host", host, "--port", str(port), "--workers", "1"),
        *("--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}"),
        *("--artifacts-destination", str(folder / "artifacts")),
        *("--allowed-hosts", ",".join(f"{name}:{port}" for name in sorted(names))),
    ]
    log_path = folder / "mlflow-server.log"
    with serve_process(command, folder, log_path, uri, wait_for="/health"):
        yield uri
