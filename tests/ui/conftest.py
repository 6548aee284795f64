"""The operator page for real: `loopline serve` and `loopline ui` processes over a project
whose registry holds two small forecasters (v2 the champion), driven by Debian's Chromium
through Playwright.

Screenshots go to `test-output/operator-page/` (LOOPLINE_TEST_OUTPUT overrides it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from loopline.health import free_port
from tests.serving.conftest import publish_tiny_model, registry_template, serve_process  # noqa: F401

BIN = Path(sys.executable).parent
CHROMIUM = os.environ.get("LOOPLINE_CHROMIUM", "/usr/bin/chromium")
TOKEN = "operator-token-for-the-tests-0123"
OUTPUT = Path(os.environ.get("LOOPLINE_TEST_OUTPUT", "test-output")) / "operator-page"
# Without the networking flags Chromium floods a closed network with refused connections.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def monitored_day(signal: str, day: datetime, ratio: float, streak: int, alarm: bool, **more):
    """One daily window of `solar` v2 in the monitoring table as `loopline monitor` writes
    it (the signal's own row, threshold 1: `ratio` is the statistic)."""
    return {
        "model_name": "solar",
        "model_version": "2",
        "signal": signal,
        "feature": "*",
        "period_start": day,
        "period_end": day + timedelta(days=1),
        "rows": 24,
        "statistic": ratio,
        "threshold": 1.0,
        "exceeded": ratio > 1,
        "streak": streak,
        "alarm": alarm,
        "note": None,
        "pass_id": "fixture",
        "computed_at": datetime.now(UTC),
        **more,
    }


def needs_chromium():
    return pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason=f"no Chromium at {CHROMIUM}: `make test` installs Debian's chromium package",
    )


def operated_project(template: Path, folder: Path, **serve: object) -> Path:
    """A copy of the template project whose services log fast (the live panel's 2 s)."""
    root = folder / "proj"
    shutil.copytree(template, root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["serve"] = {"log_flush_interval_s": 0.2, "poll_interval_s": 0.5, **serve}
    params["ui"] = {"poll_interval_s": 0.25}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def clean_environment(root: Path, token: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "LOOPLINE_HOME")}
    env["LOOPLINE_PROJECT"] = str(root)
    env.pop("LOOPLINE_UI_TOKEN", None)
    if token:
        env["LOOPLINE_UI_TOKEN"] = token
    return env


@contextlib.contextmanager
def ui_process(root: Path, services: list[str], token: str | None = TOKEN):
    """`loopline ui` on a free port, answering /healthz on entry."""
    port = free_port()
    command = [str(BIN / "loopline"), "ui", "--port", str(port)]
    for url in services:
        command += ["--service", url]
    url = f"http://127.0.0.1:{port}"
    env = clean_environment(root, token)
    with serve_process(command, root, root / f"ui-{port}.log", url, env, "/healthz"):
        yield url


@contextlib.contextmanager
def service_process(root: Path):
    port = free_port()
    command = [str(BIN / "loopline"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with serve_process(command, root, root / "serve.log", url, clean_environment(root)):
        yield url


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, headless, with a fresh profile."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    opened = context.new_page()
    problems: list[str] = []
    opened.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    opened.on(
        "console",
        lambda message: problems.append(message.text) if message.type == "error" else None,
    )
    opened.problems = problems
    yield opened
    context.close()


def screenshot(page, selector: str, name: str) -> Path:
    """One panel's picture under the test output folder."""
    OUTPUT.mkdir(parents=True, exist_ok=True)
    path = OUTPUT / f"{name}.png"
    page.locator(selector).screenshot(path=str(path))
    return path


def stop_quietly(process: subprocess.Popen) -> None:
    process.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(20)
