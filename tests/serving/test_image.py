"""The serving image, built and run: under 1 GB, no torch, serving a champion it loads from an
MLflow server, healthy by its own HEALTHCHECK, as a non-root user.

Opt-in (`make test-image` sets LOOPLINE_TEST_IMAGE=1): a build takes minutes and needs a
Docker engine and debootstrap (the base is made locally, as no registry can be pulled from
here; `images/debian-base.sh`).
"""

from __future__ import annotations

import json
import os

import httpx
import pytest

from loopline.health import free_port, wait_until_ok
from tests.conftest import TINY, write_project
from tests.docker_images import build_image, docker, healthy
from tests.serving.conftest import mlflow_server, publish_tiny_model, window_of

IMAGE = "loopline-serve:test"
LIMIT_BYTES = 1_000_000_000

pytestmark = pytest.mark.skipif(
    os.environ.get("LOOPLINE_TEST_IMAGE") != "1",
    reason="image build test is opt-in: make test-image (LOOPLINE_TEST_IMAGE=1)",
)


@pytest.fixture(scope="module")
def image() -> str:
    return build_image(IMAGE)


def test_the_image_is_under_1_gb_and_holds_no_torch(image):
    size = int(docker("image", "inspect", image, "--format", "{{.Size}}"))
    assert size < LIMIT_BYTES, f"the serving image is {size / 1e9:.2f} GB"
    listed = docker("run", "--rm", "--entrypoint", "pip", image, "list", "--format", "json")
    installed = {p["name"].lower() for p in json.loads(listed)}
    assert not installed & {"torch", "prefect", "dvc", "great-expectations", "optuna"}


def test_the_image_serves_the_registry_champion_healthy_as_non_root(image, tmp_path, monkeypatch):
    for var in ("MLFLOW_TRACKING_URI", "LOOPLINE_HOME"):
        monkeypatch.delenv(var, raising=False)
    docker_host = "host.docker.internal"  # the host, from inside the container
    with mlflow_server(tmp_path / "mlflow", "0.0.0.0", (docker_host,)) as uri:
        port = uri.rsplit(":", 1)[1]
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
        version = publish_tiny_model(write_project(tmp_path / "proj", TINY), seed=1)
        published = free_port()
        container = docker(
            *("run", "-d", f"--add-host={docker_host}:host-gateway"),
            *("-p", f"127.0.0.1:{published}:3000", "--health-interval=3s"),
            *("-e", f"MLFLOW_TRACKING_URI=http://{docker_host}:{port}"),
            *("-e", "LOOPLINE_TASK=solar", image),
        )
        try:
            status = healthy(container)
            logs = docker("logs", container)
            assert status == "healthy", logs[-4000:]
            assert docker("exec", container, "id", "-u") == "10001"
            url = f"http://127.0.0.1:{published}"
            wait_until_ok(f"{url}/readyz")  # live (healthy) first, then the model loads
            body = {"windows": [window_of("2021-02-01", 48)]}
            with httpx.Client(base_url=url, timeout=60) as client:
                answer = client.post("/predict", json=body)
        finally:
            docker("rm", "-f", container)
    assert answer.status_code == 200, answer.text
    assert answer.json()[0]["model_version"] == version
