"""A rollback lands only on a version a service would serve (issue 25, item 7).

The trap: v4, whose ONNX file is corrupt, was promoted while no service ran, so no service
ever marked it refused; then v3 was promoted and rolled back. The rollback must run the
service's load check on v4, mark it refused and go on to the champion before it; and a
service that starts on a refused champion serves the most recent good champion.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loopline import registry
from loopline.paths import ProjectPaths
from tests.serving.conftest import private_copy, publish_tiny_model, service_app
from tests.serving.test_safe_start import model_file

pytestmark = pytest.mark.reliability

LOOPLINE = str(Path(sys.executable).with_name("loopline"))


@pytest.fixture(scope="module")
def template(registry_template, tmp_path_factory) -> Path:
    """v1, v2 (champion) of the serving fixtures, then v3 (good) and v4 (its ONNX file
    corrupt in the store), neither promoted yet."""
    root = tmp_path_factory.mktemp("rollback-checks") / "proj"
    shutil.copytree(registry_template, root)
    publish_tiny_model(root, seed=3, promote=False)
    publish_tiny_model(root, seed=4, promote=False)
    model_file(ProjectPaths.at(root).tracking_uri(), "4").write_bytes(b"not an onnx model")
    return root


@pytest.fixture
def root(template, tmp_path, monkeypatch) -> Path:
    """A private copy, where v4 was promoted (no service ran), then v3: history 1, 2, 4, 3."""
    root = private_copy(template, tmp_path, monkeypatch)
    uri = ProjectPaths.at(root).tracking_uri()
    registry.move_champion(uri, "solar", "4", "looked better offline")
    registry.move_champion(uri, "solar", "3", "v4 has no service yet: try v3")
    return root


def loopline(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([LOOPLINE, *args], cwd=root, capture_output=True, text=True)


def refusal_of(uri: str, version: str) -> dict | None:
    return registry.refusal(registry.client(uri).get_model_version("solar", version))


def test_rollback_checks_each_candidate_and_skips_a_broken_one(root):
    uri = ProjectPaths.at(root).tracking_uri()
    assert refusal_of(uri, "4") is None  # no service ever saw it

    done = loopline(root, "rollback", "solar", "--reason", "v3 drifts")

    assert done.returncode == 0, done.stderr
    entry = json.loads(done.stdout.splitlines()[-1])
    assert (entry["from"], entry["to"]) == ("3", "2")  # the good champion before v3
    assert [(s["version"], s["checked"]) for s in entry["skipped"]] == [("4", True)]
    said = " ".join(done.stderr.split())  # rich wraps long lines: compare words
    assert "skipped v4: fails a service's load check (now marked refused)" in said
    assert "not a loadable ONNX model" in said
    assert "not a loadable ONNX model" in refusal_of(uri, "4")["why"]
    assert str(registry.champion_version(uri, "solar").version) == "2"
    # The history says v4 was passed: rolling back again goes on to v1, not back to v4.
    assert registry.move_champion(uri, "solar", None, "again", action="rollback")["to"] == "1"


def test_rollback_to_a_broken_version_marks_it_and_moves_nothing(root):
    uri = ProjectPaths.at(root).tracking_uri()

    done = loopline(root, "rollback", "solar", "--to", "4")

    assert done.returncode == 1
    said = " ".join(done.stderr.split())
    assert "v4 fails the check a service makes before serving it" in said
    assert "nothing moved" in said and "not a loadable ONNX model" in said
    assert refusal_of(uri, "4") is not None
    assert str(registry.champion_version(uri, "solar").version) == "3"


def test_a_service_on_a_refused_champion_serves_the_most_recent_good_one(root):
    """A rollback made without the check (say, before it existed) landed on v4: services
    that were running keep v3, and one starting now must serve v3 too, not an older one."""
    from starlette.testclient import TestClient

    uri = ProjectPaths.at(root).tracking_uri()
    assert registry.move_champion(uri, "solar", None, "unchecked", action="rollback")["to"] == "4"
    with TestClient(service_app()) as client:
        meta = client.get("/metadata").json()
    assert meta["fallback"]["champion"] == "4", meta
    assert meta["model"]["version"] == "3", meta
    fallbacks = registry.last_good_versions(uri, "solar", {"4"})
    assert [str(v.version) for v in fallbacks] == ["3", "2", "1"]
