"""The worker image, built and run: two containers of it join a Dask scheduler, and the
offline flow hands them its tuning study and its data-parallel training, as on a cluster.

Each container is a host of its own: its own network namespace and file system, reached on
Docker's bridge. What they share they reach over that network: the scheduler, the Prefect
API, the MLflow server and the study's PostgreSQL (through a relay on the bridge, as the CI
database listens on loopback only). The image runs as a non-root user, turns healthy by its
own HEALTHCHECK (the worker's /health), and holds the CPU build of torch.

The build and the run are opt-in (`make test-worker-image` sets LOOPLINE_TEST_IMAGE=1): the
build takes minutes and needs a Docker engine and debootstrap (`images/debian-base.sh`), as the
serving image's test. What needs no engine (the Dockerfile's lint, the worker's lock, the
build context) is checked in every suite.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from loopline.health import free_port
from loopline.paths import ProjectPaths
from pipelines.deployments import local_server
from tests.conftest import write_project
from tests.docker_images import DOCKER, REPO, build_image, docker, healthy
from tests.e2e.cluster import (
    BIN,
    PARAMS,
    clean_env,
    loopline_run,
    on_cluster,
    placement_hosts,
    postgres_target,
    tcp_relay,
    trial_runs,
)
from tests.serving.conftest import mlflow_server

IMAGE = "loopline-worker:test"
TORCH_WHEELS = Path(os.environ.get("TORCH_WHEELS", "/opt/wheels"))

DOCKERFILE = REPO / "images" / "worker.Dockerfile"
WORKER_LOCK = REPO / "requirements-worker.lock"
TOOLS = {"pytest", "pytest-xdist", "pytest-timeout", "schemathesis", "playwright", "ruff"}

pytestmark = pytest.mark.e2e


def pins(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", path.read_text(), re.M))


def test_the_worker_lock_is_the_main_lock_without_the_test_tools():
    worker, main = pins(WORKER_LOCK), pins(REPO / "requirements.lock")
    assert {name: main.get(name) for name in worker} == worker  # the same versions
    assert {"torch", "optuna", "mlflow", "prefect", "distributed", "prefect-dask"} <= worker.keys()
    assert not TOOLS & worker.keys()
    assert not [name for name in worker if re.fullmatch(r"nvidia-.*-cu\d+|triton", name)]


def test_the_worker_dockerfile_lints_and_its_context_holds_what_it_copies():
    import pathspec

    hadolint = BIN / "hadolint"
    if hadolint.is_file():
        done = subprocess.run([str(hadolint), "--no-color", str(DOCKERFILE)], capture_output=True)
        assert done.returncode == 0, done.stdout.decode()
    ignored = {}
    for name, path in (
        ("worker", DOCKERFILE.with_name("worker.Dockerfile.dockerignore")),
        ("serving", REPO / ".dockerignore"),
    ):
        lines = [line.strip() for line in path.read_text().splitlines()]
        patterns = [line for line in lines if line and not line.startswith("#")]
        ignored[name] = pathspec.PathSpec.from_lines("gitwildmatch", patterns)
    copied = re.findall(r"^COPY (.+) \S+$", DOCKERFILE.read_text(), re.M)
    sources = [word for line in copied for word in line.split()]
    assert "requirements-worker.lock" in sources and "src" in sources
    for source in [*sources, "images/wheels/torch-2.13.0+cpu-cp311-x.whl"]:
        assert not ignored["worker"].match_file(source), source
    for kept_out in (".venv/bin/python", "data/raw/a.csv", "tests/unit/test_config.py"):
        assert ignored["worker"].match_file(kept_out), kept_out
    # The serving image's context leaves the wheels out: they are hundreds of MB.
    assert ignored["serving"].match_file("images/wheels/torch-2.13.0+cpu-cp311-x.whl")


@pytest.fixture(scope="module")
def image() -> str:
    if os.environ.get("LOOPLINE_TEST_IMAGE") != "1":
        pytest.skip("image build test is opt-in: make test-worker-image (LOOPLINE_TEST_IMAGE=1)")
    for wheel in TORCH_WHEELS.glob("torch-*+cpu-*.whl"):  # else the build asks PyTorch's index
        shutil.copy2(wheel, REPO / "images" / "wheels" / wheel.name)
    return build_image(IMAGE, "-f", "images/worker.Dockerfile")


def bridge_gateway() -> str:
    """This host's address on Docker's default bridge, which the containers reach (the
    network's gateway, or where the engine does not list it, its interface's address)."""
    gateway = docker(
        "network", "inspect", "bridge", "--format", "{{(index .IPAM.Config 0).Gateway}}"
    )
    if gateway:
        return gateway
    options = '{{index .Options "com.docker.network.bridge.name"}}'
    interface = docker("network", "inspect", "bridge", "--format", options)
    shown = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", interface], capture_output=True, text=True
    )
    return shown.stdout.split("inet ")[1].split("/")[0]


@contextlib.contextmanager
def scheduler(host: str, log: Path):
    """`dask scheduler` from this project's environment, listening on `host`."""
    port = free_port()
    command = [str(BIN / "dask"), "scheduler", "--host", host, "--port", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, "--no-dashboard"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield f"tcp://{host}:{port}"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)


@contextlib.contextmanager
def workers(image: str, address: str, prefect_api: str, names: list[str]):
    """One container of the image per name, each a `dask worker` joined to `address`;
    yields {name: container id}."""
    started: dict[str, str] = {}
    try:
        for name in names:
            started[name] = docker(
                *("run", "-d", "--health-interval=3s", "-e", f"PREFECT_API_URL={prefect_api}"),
                *("-e", "OMP_NUM_THREADS=1", image, address, "--nthreads", "1", "--name", name),
            )
        yield started
    finally:
        for name, container in started.items():
            with contextlib.suppress(subprocess.SubprocessError):
                (REPO / "test-output").mkdir(exist_ok=True)
                logs = subprocess.run([DOCKER, "logs", container], capture_output=True, text=True)
                (REPO / "test-output" / f"worker-image-{name}.log").write_text(
                    logs.stdout + logs.stderr
                )
            subprocess.run([DOCKER, "rm", "-f", container], capture_output=True)


def address_of(container: str) -> str:
    return docker("inspect", container, "--format", "{{.NetworkSettings.IPAddress}}")


def test_the_image_is_a_non_root_worker_with_the_cpu_build_of_torch(image):
    listed = docker("run", "--rm", "--entrypoint", "pip", image, "list", "--format", "json")
    installed = {p["name"].lower(): p["version"] for p in json.loads(listed)}
    assert installed["torch"].endswith("+cpu"), installed["torch"]
    assert not [name for name in installed if re.fullmatch(r"nvidia-.*-cu\d+|triton", name)]
    assert {"loopline", "distributed", "optuna", "mlflow", "prefect"} <= installed.keys()
    assert docker("run", "--rm", "--entrypoint", "id", image, "-u") == "10001"
    size = int(docker("image", "inspect", image, "--format", "{{.Size}}"))
    print(f"worker image: {size / 1e9:.2f} GB")


def test_two_worker_containers_tune_and_train_the_flow(image, tmp_path):
    database, target = postgres_target()
    host = bridge_gateway()
    with contextlib.ExitStack() as stack:
        relay = stack.enter_context(tcp_relay(host, target))
        storage = database.set(host=host, port=relay).render_as_string(hide_password=False)
        prefect_api = stack.enter_context(
            local_server(ProjectPaths.at(tmp_path / "prefect"), host=host)
        )
        tracking = stack.enter_context(mlflow_server(tmp_path / "mlflow", host))
        address = stack.enter_context(scheduler(host, tmp_path / "scheduler.log"))
        started = stack.enter_context(workers(image, address, prefect_api, ["w-a", "w-b"]))
        for container in started.values():
            assert healthy(container) == "healthy", docker("logs", container)[-4000:]
        root = write_project(tmp_path / "project", PARAMS)
        env = clean_env() | {"PREFECT_API_URL": prefect_api, "MLFLOW_TRACKING_URI": tracking}
        summary = loopline_run(root, env, on_cluster(address, storage))
        ranks = placement_hosts(tracking, summary["run_id"])
        trials = trial_runs(tracking, summary["run_id"])
        containers = sorted(address_of(c) for c in started.values())
    assert summary["status"] == "published", summary
    assert sorted(trials) == ["COMPLETE", "COMPLETE"], trials
    # The final training ran as one group of two processes, one in each container.
    assert ranks == containers, ranks
