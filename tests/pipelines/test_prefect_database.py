"""A new project's local Prefect API starts on a database already migrated, copied from a
template made once per Prefect version; an existing database or another kind is untouched."""

from __future__ import annotations

import sqlite3

from pipelines.temporary_server import seed_database


def tables(path) -> set[str]:
    with sqlite3.connect(path) as connection:
        return {row[0] for row in connection.execute("select name from sqlite_master")}


def test_a_new_project_database_is_copied_from_one_migrated_template(tmp_path):
    cache = tmp_path / "cache"
    first, second = tmp_path / "a" / "prefect.db", tmp_path / "b" / "prefect.db"
    assert seed_database(f"sqlite+aiosqlite:///{first}", cache)
    (template,) = cache.glob("prefect-*.db")  # named by Prefect's version, nothing partial
    assert list(cache.iterdir()) == [template]
    assert {"alembic_version", "flow_run", "task_run", "deployment"} <= tables(first)
    with sqlite3.connect(first) as connection:
        (head,) = connection.execute("select version_num from alembic_version").fetchone()
    made = template.stat().st_mtime_ns
    assert seed_database(f"sqlite+aiosqlite:///{second}", cache)
    assert template.stat().st_mtime_ns == made  # the template was reused, not made again
    with sqlite3.connect(second) as connection:
        assert connection.execute("select version_num from alembic_version").fetchone() == (head,)
    assert not list(first.parent.glob("*.partial")) and not list(second.parent.glob("*.partial"))


def test_an_existing_or_non_sqlite_database_is_left_alone(tmp_path):
    cache = tmp_path / "cache"
    existing = tmp_path / "prefect.db"
    existing.write_bytes(b"a project's own history")
    assert not seed_database(f"sqlite+aiosqlite:///{existing}", cache)
    assert existing.read_bytes() == b"a project's own history"
    assert not seed_database("postgresql+asyncpg://prefect@db/prefect", cache)
    assert not seed_database("sqlite+aiosqlite:///:memory:", cache)
    assert not cache.exists()  # nothing was migrated for them
