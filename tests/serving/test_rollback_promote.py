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
    for process in processes:
        _, err = process.communicate(timeout=180)
        # A rollback that finds nothing earlier is a clear refusal, not a corruption.
        assert process.returncode == 0 or b"no earlier champion" in err, err.decode()
    succeeded = sum(p.returncode == 0 for p in processes)
    assert_consistent(ProjectPaths.at(served_project).tracking_uri(), succeeded)


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
        assert len(history) >= 2 + 3  # every promote of v2 landed
    finally:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
