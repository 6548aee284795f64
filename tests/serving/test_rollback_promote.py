"""Rollback and promotion: the history, clear refusals, and two operators at once."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from loopline import registry
from loopline.errors import RegistryError
from loopline.paths import ProjectPaths
from tests.serving.conftest import publish_tiny_model

LOOPLINE = str(Path(sys.executable).with_name("loopline"))
POSTGRES = os.environ.get("LOOPLINE_TEST_POSTGRES_URL")


def test_lineage_pops_on_rollback_and_pushes_otherwise():
    moves = [
        {"to": "1"},
        {"to": "2"},
        {"to": "3", "action": "promote"},
        {"to": "2", "action": "rollback"},
    ]
    assert registry.champion_lineage(moves) == ["1", "2"]
    assert registry.champion_lineage([*moves, {"to": "1", "action": "rollback"}]) == ["1"]
    assert registry.champion_lineage([*moves, {"to": "3", "action": "rollback_to"}]) == [
        "1",
        "2",
        "3",
    ]


def test_rollback_walks_back_and_refuses_what_it_cannot_do(served_project):
    uri = ProjectPaths.at(served_project).tracking_uri()
    publish_tiny_model(served_project, seed=3)  # v3 champion: history 1, 2, 3
    assert registry.move_champion(uri, "solar", None, "bad v3", action="rollback")["to"] == "2"
    assert registry.move_champion(uri, "solar", None, "bad v2", action="rollback")["to"] == "1"
    with pytest.raises(RegistryError, match="no earlier champion"):
        registry.move_champion(uri, "solar", None, "again", action="rollback")
    with pytest.raises(RegistryError, match=r"no version '9' \(versions: 1, 2, 3\)"):
        registry.move_champion(uri, "solar", "9", "typo")
    with pytest.raises(RegistryError, match="no registered model 'wind'"):
        registry.move_champion(uri, "wind", "1", "typo")
    assert str(registry.champion_version(uri, "solar").version) == "1"
    history = registry.champion_history(uri, "solar")
    assert [h["to"] for h in history] == ["1", "2", "3", "2", "1"]
    assert history[-1]["why"] == "bad v2" and history[-1]["from"] == "2"


def test_refused_versions_are_skipped_refused_and_retried(served_project):
    uri = ProjectPaths.at(served_project).tracking_uri()
    publish_tiny_model(served_project, seed=3)  # v3 champion: history 1, 2, 3
    mark = registry.mark_refused(uri, "solar", "2", "golden batch differs by 3.1", by="svc-a")
    assert registry.refusal(registry.client(uri).get_model_version("solar", "2")) == mark
    assert mark["why"] == "golden batch differs by 3.1" and mark["by"] == "svc-a"

    entry = registry.move_champion(uri, "solar", None, "bad v3", action="rollback")
    assert entry["to"] == "1" and [s["version"] for s in entry["skipped"]] == ["2"]
    for action in ("promote", "rollback_to"):
        with pytest.raises(RegistryError, match=r"v2 was refused by a service \(svc-a.*--retry"):
            registry.move_champion(uri, "solar", "2", "try", action=action)
    with pytest.raises(RegistryError, match="no earlier champion"):  # v2 was passed already
        registry.move_champion(uri, "solar", None, "again", action="rollback")
    # Good versions of the history, most recent champion first, refused ones left out.
    assert [str(v.version) for v in registry.last_good_versions(uri, "solar", {"1"})] == ["3"]

    # Repaired: --retry clears the mark and moves; later rollbacks may land on it again.
    retried = registry.move_champion(uri, "solar", "2", "repaired", retry=True)
    assert retried["to"] == "2" and retried["retried"]["why"].startswith("golden")
    assert registry.refusal(registry.client(uri).get_model_version("solar", "2")) is None
    assert registry.champion_lineage(registry.champion_history(uri, "solar")) == ["1", "2"]


def test_moving_to_the_champion_records_nothing(served_project):
    uri = ProjectPaths.at(served_project).tracking_uri()
    before = registry.champion_history(uri, "solar")
    for action in ("promote", "rollback_to"):
        entry = registry.move_champion(uri, "solar", "2", "again", action=action)
        assert entry["noop"] and entry["from"] == entry["to"] == "2"
    assert registry.champion_history(uri, "solar") == before
    # An older history with a recorded v2 -> v2 move: a rollback still goes back to v1.
    registry.client(uri).set_registered_model_tag(
        "solar",
        f"{registry.HISTORY_PREFIX}29990101T000000000000-legacy0",
        '{"from": "2", "to": "2", "why": "old no-op", "action": "promote"}',
    )
    assert registry.move_champion(uri, "solar", None, "back", action="rollback")["to"] == "1"


def test_cli_says_what_it_skipped_and_when_nothing_moved(served_project):
    uri = ProjectPaths.at(served_project).tracking_uri()
    registry.mark_refused(uri, "solar", "1", "model.onnx is not a loadable ONNX model")
    done = subprocess.run(
        [LOOPLINE, "promote", "solar", "2"], cwd=served_project, capture_output=True, text=True
    )
    assert done.returncode == 0 and "already champion: nothing recorded" in done.stderr
    done = subprocess.run(
        [LOOPLINE, "rollback", "solar"], cwd=served_project, capture_output=True, text=True
    )
    assert done.returncode == 1  # rich wraps long lines: compare words
    assert "skipped v1 refused: model.onnx" in " ".join(done.stderr.split())
    done = subprocess.run([LOOPLINE, "models"], cwd=served_project, capture_output=True, text=True)
    assert "refused" in done.stdout and "model.onnx is not" in done.stdout, done.stdout
    done = subprocess.run(
        [LOOPLINE, "promote", "solar", "1", "--retry"],
        cwd=served_project,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "cleared the refusal mark of v1" in done.stderr and "v2 → v1" in done.stderr


def test_cli_refuses_an_unknown_version_with_a_clear_error(served_project):
    done = subprocess.run(
        [LOOPLINE, "promote", "solar", "42"], cwd=served_project, capture_output=True, text=True
    )
    assert done.returncode == 1
    assert "no version '42'" in done.stderr and "versions: 1, 2" in done.stderr


def assert_consistent(uri: str, moves: int) -> None:
    history = registry.champion_history(uri, "solar")
    assert len(history) == 2 + moves
    for before, after in itertools.pairwise(history):
        assert after["from"] == before["to"], history  # no move was based on a stale read
    assert str(registry.champion_version(uri, "solar").version) == history[-1]["to"]


def test_two_operators_at_once_keep_the_history_consistent(served_project):
    """Real CLI processes, as operators run them, racing on the same registry."""
    commands = [
        ["rollback", "solar", "--reason", "operator A"],
        ["promote", "solar", "2", "--reason", "operator B"],
        ["rollback", "solar", "--to", "1", "--reason", "operator C"],
        ["promote", "solar", "2", "--reason", "operator D"],
    ]
    processes = [
        subprocess.Popen(
            [LOOPLINE, *c], cwd=served_project, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for c in commands
    ]
    moved = 0
    for process in processes:
        out, err = process.communicate(timeout=180)
        # A rollback that finds nothing earlier is a clear refusal, not a corruption.
        assert process.returncode == 0 or b"no earlier champion" in err, err.decode()
        # Promoting the champion again records nothing.
        moved += process.returncode == 0 and b'"noop": true' not in out
    assert_consistent(ProjectPaths.at(served_project).tracking_uri(), moved)


@pytest.mark.postgres
@pytest.mark.skipif(
    not POSTGRES,
    reason="LOOPLINE_TEST_POSTGRES_URL is not set: no PostgreSQL to race champion moves on "
    "(.ci/run sets it)",
)
def test_concurrent_moves_on_postgresql(tmp_path, monkeypatch):
    import sqlalchemy

    from tests.conftest import TINY, write_project

    name = f"loopline_moves_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(POSTGRES, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    url = sqlalchemy.engine.make_url(POSTGRES).set(database=name)
    uri = url.render_as_string(hide_password=False)
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        root = write_project(tmp_path / "proj", TINY)
        publish_tiny_model(root, seed=1)
        publish_tiny_model(root, seed=2)
        errors: list[BaseException] = []

        def operator(n: int) -> None:
            try:
                if n % 2:
                    registry.move_champion(uri, "solar", None, f"op {n}", action="rollback")
                else:
                    registry.move_champion(uri, "solar", "2", f"op {n}")
            except RegistryError as error:
                if "no earlier champion" not in str(error):
                    errors.append(error)
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=operator, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not errors
        history = registry.champion_history(uri, "solar")
        assert_consistent(uri, len(history) - 2)
    finally:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
