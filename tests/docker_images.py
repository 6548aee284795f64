"""What the image tests share: Docker's CLI, building an image on the local Debian base, and
waiting for a container's own HEALTHCHECK.

The base is made here with debootstrap (`images/debian-base.sh`), as no registry can be pulled
from; a machine without a Docker engine or debootstrap skips, saying which.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKER = os.environ.get("DOCKER", "/usr/bin/docker")  # Debian's CLI: BuildKit built in
BASE = "loopline-base"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def docker(*args: str, timeout: float = 120) -> str:
    done = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"docker {' '.join(args)}:\n{done.stdout}{done.stderr}"
    return done.stdout.strip()


def build_image(tag: str, *options: str) -> str:
    """Build the repository's context as `tag` on the local Debian base (`options`: more
    `docker build` arguments, a `-f` Dockerfile say); skips where it cannot."""
    if (
        not Path(DOCKER).is_file()
        or subprocess.run([DOCKER, "info"], capture_output=True).returncode
    ):
        pytest.skip(f"no Docker engine answers through {DOCKER}")
    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap is not installed (apt-get install debootstrap)")
    subprocess.run([str(REPO / "images" / "debian-base.sh"), BASE], check=True, timeout=1200)
    command = [DOCKER, "build", "--network", "host", *options, "--build-arg", f"CPU_BASE={BASE}"]
    command += ["--secret", f"id=ca,src={CA_BUNDLE}", "-t", tag, str(REPO)]
    subprocess.run(command, check=True, timeout=2400, env={**os.environ, "DOCKER_BUILDKIT": "1"})
    return tag


def healthy(container: str, timeout_s: float = 180) -> str:
    """The container's health once its HEALTHCHECK decided (or where it stood at the end)."""
    deadline, status = time.monotonic() + timeout_s, ""
    while time.monotonic() < deadline:
        status = docker("inspect", container, "--format", "{{.State.Health.Status}}")
        if status in ("healthy", "unhealthy"):
            return status
        time.sleep(2)
    return status
