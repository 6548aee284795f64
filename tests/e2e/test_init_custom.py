"""Acceptance: a team brings its own task without editing the library.

In a temporary folder, the real console script makes a project from the `custom` template
(a task module of the project's own, `tasks/my_task.py`), runs the offline flow on it, and
the project's own tests pass; no file of the library changes on the way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent
FAST = ["-P", "train.max_epochs=3", "-P", "tune.n_trials=2", "-P", "train.threads=1"]


def sh(*args: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def library_state() -> str:
    """The library's files as git sees them (changes included)."""
    done = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all", "src", "pipelines", "serving"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    return done.stdout


@pytest.fixture(scope="module")
def custom_project(tmp_path_factory):
    """`loopline init my-task --template custom` in an empty folder, as a user runs it."""
    home = tmp_path_factory.mktemp("init-e2e")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "MLFLOW_", "LOOPLINE_", "DVC_"))
    }
    env["HOME"] = str(home)  # no user-level state leaks in or out (git identity included)
    before = library_state()
    sh(str(BIN / "loopline"), "init", "my-task", "--template", "custom", cwd=home, env=env)
    yield home / "my-task", env
    assert library_state() == before, "a library file changed"


def test_init_makes_a_committed_project_with_its_own_task(custom_project):
    root, env = custom_project
    assert (root / "tasks" / "my_task.py").is_file()
    assert "task: tasks.my_task:MyTask" in (root / "params.yaml").read_text()
    assert (root / ".dvc" / "config").is_file() and (root / "data.dvc").is_file()
    log = sh("git", "log", "--oneline", cwd=root, env=env).stdout.splitlines()
    assert len(log) == 1
    assert sh("git", "status", "--porcelain", cwd=root, env=env).stdout == ""


def test_loopline_run_publishes_the_custom_task(custom_project):
    root, env = custom_project
    done = sh(str(BIN / "loopline"), "run", *FAST, cwd=root, env=env)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["status"] == "published", summary
    assert summary["task"] == "my_task"
    assert summary["new_rows"] == 300
    # Three well-separated machine states: far above the majority class.
    assert (
        summary["metrics"]["test_accuracy"] > summary["metrics"]["majority_class_baseline_accuracy"]
    )
    assert summary["promoted"] is True


def test_the_projects_own_tests_pass(custom_project):
    root, env = custom_project
    sh(str(BIN / "pytest"), "-q", "-p", "no:cacheprovider", cwd=root, env=env)


def test_serve_and_rollback_the_custom_task(custom_project):
    """`loopline serve` on the project (the one service, through the task's own serving
    adapter): `/predict` with rows of sample/rows.csv and `/stream`, one NDJSON line per
    item; then a second version, and `loopline rollback` back to version 1, which the running
    service follows."""
    import csv

    import httpx

    from loopline.health import free_port
    from tests.serving.conftest import serve_process

    root, env = custom_project
    with (root / "sample" / "rows.csv").open() as rows:
        sample = list(csv.DictReader(rows))[:6]
    features = ("temperature", "vibration", "pressure")
    items = [{"id": r["id"], **{k: float(r[k]) for k in features}} for r in sample]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(BIN / "loopline"), "serve", "--port", str(port), "--poll-interval", "1"]
    with serve_process(command, root, root / ".loopline" / "serve.log", url, env):
        meta = httpx.get(f"{url}/metadata").json()
        assert meta["model"]["task"] == "my_task" and meta["model"]["version"] == "1", meta
        answers = httpx.post(f"{url}/predict", json={"items": items}, timeout=30).json()
        assert [a["id"] for a in answers] == [i["id"] for i in items], answers
        assert all(a["label"] in ("ok", "worn", "faulty") for a in answers)
        assert abs(sum(answers[0]["probabilities"].values()) - 1) < 1e-4
        lines = "".join(json.dumps(item) + "\n" for item in items)
        streamed = httpx.post(
            f"{url}/stream", content=lines, headers={"content-type": "application/x-ndjson"}
        )
        replies = [json.loads(line) for line in streamed.text.splitlines()]
        assert [r["line"] for r in replies] == list(range(1, len(items) + 1)), replies
        assert [r["label"] for r in replies] == [a["label"] for a in answers]

        # A second version (another seed: not "nothing new"), champion, then rolled back.
        done = sh(str(BIN / "loopline"), "run", *FAST, "-P", "seed=7", cwd=root, env=env)
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        assert summary["version"] == "2", summary
        loopline = str(BIN / "loopline")
        if not summary["promoted"]:
            sh(loopline, "promote", "my_task", "2", "--reason", "e2e", cwd=root, env=env)
        wait_for_version(url, "2")
        sh(loopline, "rollback", "my_task", "--reason", "e2e", cwd=root, env=env)
        wait_for_version(url, "1")
        answer = httpx.post(f"{url}/predict", json={"items": items[:1]}, timeout=30).json()
        assert answer[0]["label"] == answers[0]["label"]


def wait_for_version(url: str, version: str, timeout_s: float = 60.0) -> None:
    import time

    import httpx

    deadline = time.monotonic() + timeout_s
    while (served := httpx.get(f"{url}/metadata").json()["model"]["version"]) != version:
        assert time.monotonic() < deadline, f"still serving v{served}, not v{version}"
        time.sleep(0.5)
