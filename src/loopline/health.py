"""Waiting for a local server (the service, a Prefect server) to answer before using it."""

from __future__ import annotations

import socket
import subprocess
import time

from loopline.errors import LooplineError

# The names of this machine's loopback interface: a client there is this machine's own.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


class NotHealthy(LooplineError):
    """A server exited or did not answer its health URL in time."""


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_ok(
    url: str,
    process: subprocess.Popen | None = None,
    timeout_s: float = 120.0,
    interval_s: float = 0.5,
) -> float:
    """Poll GET `url` until it answers 200; returns the seconds waited.

    Raises NotHealthy as soon as `process` (the server, when we started it) has exited, or
    after `timeout_s`.
    """
    import httpx

    started = time.monotonic()
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        if process is not None and process.poll() is not None:
            raise NotHealthy(f"the server exited with {process.returncode} before {url} answered")
        if time.monotonic() - started > timeout_s:
            raise NotHealthy(f"{url} did not answer 200 within {timeout_s:.0f} s")
        time.sleep(interval_s)
