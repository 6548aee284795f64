"""The production path: MLflow on PostgreSQL (the machine's server), not SQLite.

Reads the server URL from LOOPLINE_TEST_POSTGRES_URL (set by .ci/run). Each test gets a
database of its own, dropped afterwards.
"""

from __future__ import annotations

import os
import uuid

import pytest

from loopline import registry
from loopline.paths import ProjectPaths

URL = os.environ.get("LOOPLINE_TEST_POSTGRES_URL")
pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(
        not URL,
        reason="LOOPLINE_TEST_POSTGRES_URL is not set: no PostgreSQL to prove the production "
        "path against (.ci/run sets it)",
    ),
]


@pytest.fixture
def postgres_db():
    import sqlalchemy

    name = f"loopline_test_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    url = sqlalchemy.engine.make_url(URL).set(database=name)
    yield url.render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_publish_and_champion_history_on_postgresql(
    project, postgres_db, monkeypatch, prefect_harness
):
    from pipelines.offline import offline_flow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", postgres_db)
    summary = offline_flow(root=str(project), overrides=[])
    assert summary["status"] == "published" and summary["promoted"]
    assert summary["tracking_uri"] == postgres_db

    champion = registry.champion_version(postgres_db, "solar")
    assert str(champion.version) == summary["version"]
    assert champion.tags["loopline.data_version"] == summary["data_version"]
    # Artifacts of a database-backed store stay in the project, not the working directory.
    run = registry.client(postgres_db).get_run(summary["run_id"])
    assert run.info.artifact_uri.startswith((project / ".loopline" / "mlartifacts").as_uri())

    # Re-affirming the champion is no move: it says so and the history stays as it was.
    entry = registry.move_champion(
        postgres_db, "solar", summary["version"], reason="re-affirmed", who="test"
    )
    assert entry["noop"] and entry["from"] == entry["to"] == summary["version"]
    history = registry.champion_history(postgres_db, "solar")
    assert [h["to"] for h in history] == [summary["version"]]
    assert history[0]["from"] is None

    with pytest.raises(Exception, match="no version '99'"):
        registry.move_champion(postgres_db, "solar", "99", reason="typo")
    assert not any(ProjectPaths.at(project).state.glob("mlflow.db"))  # SQLite never used
