"""The cache's code version covers every file whose logic a stage runs: the library, the
flows in `pipelines/`, and a task's own source outside the library."""

from __future__ import annotations

import importlib
import sys
import uuid
from pathlib import Path

import pytest

from loopline.offline import caching
from loopline.params import parse_params
from tests.conftest import TINY


def test_the_library_and_the_flows_are_covered():
    roots = caching.code_roots()
    assert caching.LIBRARY in roots
    assert any(root.name == "pipelines" and (root / "offline.py").exists() for root in roots)


@pytest.fixture
def flows(tmp_path, monkeypatch) -> Path:
    """A stand-in for `pipelines/`, so editing it edits no real file."""
    folder = tmp_path / "pipelines"
    folder.mkdir()
    (folder / "offline.py").write_text("STAGES = ['train']\n")
    monkeypatch.setattr(caching, "_pipelines_folder", lambda: folder)
    return folder


def test_a_change_in_the_flows_changes_every_key(flows):
    params = parse_params(TINY)
    before = caching.stage_keys(params, "snap-1")
    (flows / "offline.py").write_text("STAGES = ['train', 'export']\n")
    after = caching.stage_keys(params, "snap-1")
    assert all(before[stage] != after[stage] for stage in before)
    (flows / "helpers").mkdir()
    (flows / "helpers" / "notes.py").write_text("# a new file counts too\n")
    assert caching.stage_keys(params, "snap-1") != after


def project_task(root: Path, body: str = "") -> tuple[str, str]:
    """Write a project-local task module (a built-in's subclass: the contract is not what is
    tested here) and return its import path; a fresh name per test, so no module or task
    registry entry is shared between tests."""
    name = f"plant_{uuid.uuid4().hex[:8]}"
    (root / "tasks").mkdir(parents=True, exist_ok=True)
    (root / "tasks" / f"{name}.py").write_text(
        "from loopline.tasks.solar import SolarTask\n\n\n"
        f"class PlantTask(SolarTask):\n    name = {name!r}\n{body}"
    )
    return f"tasks.{name}:PlantTask", name


@pytest.fixture
def project(tmp_path, monkeypatch, flows) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    forget_tasks_package()  # the project's `tasks` folder is imported fresh here
    yield root
    forget_tasks_package()


def forget_tasks_package() -> None:
    for module in [m for m in sys.modules if m.split(".")[0] == "tasks"]:
        sys.modules.pop(module, None)


def test_a_project_local_task_module_is_hashed(project):
    reference, name = project_task(project)
    params = parse_params({**TINY, "task": reference, name: TINY["solar"]}, root=project)
    assert caching.task_source(params.plugin) == (project / "tasks").resolve()
    assert (project / "tasks").resolve() in caching.code_roots(params.plugin)
    before = caching.stage_keys(params, "snap-1")
    module = project / "tasks" / f"{name}.py"
    module.write_text(module.read_text() + "    # a change in the task's logic\n")
    after = caching.stage_keys(params, "snap-1")
    assert all(before[stage] != after[stage] for stage in before)


def test_a_helper_beside_the_task_module_is_hashed(project):
    reference, name = project_task(project)
    params = parse_params({**TINY, "task": reference, name: TINY["solar"]}, root=project)
    before = caching.code_version(params.plugin)
    (project / "tasks" / "model.py").write_text("HIDDEN = 16\n")
    assert caching.code_version(params.plugin) != before


def test_a_lone_task_module_is_hashed_alone(tmp_path, monkeypatch, flows):
    name = f"lone_{uuid.uuid4().hex[:8]}"
    module = tmp_path / f"{name}.py"
    module.write_text("class Lone:\n    pass\n")
    (tmp_path / "unrelated.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    lone = importlib.import_module(name).Lone()
    assert caching.task_source(lone) == module.resolve()
    before = caching.code_version(lone)
    (tmp_path / "unrelated.py").write_text("X = 2\n")
    assert caching.code_version(lone) == before  # another file of the folder: not the task's
    module.write_text("class Lone:\n    size = 2\n")
    assert caching.code_version(lone) != before
    sys.modules.pop(name, None)


def test_a_built_in_task_adds_no_root_of_its_own():
    params = parse_params(TINY)
    assert caching.code_roots(params.plugin) == caching.code_roots()
    assert caching.code_version(params.plugin) == caching.code_version()


def test_stages_are_keyed_on_every_section_they_read():
    """The spec holds the forecast horizon (the task's section) and the split's gaps follow the
    search space's windows: changing either gives new keys from that stage on."""
    from loopline.params import parse_params

    base = caching.stage_keys(parse_params({}), "v1", code="c")
    horizon = caching.stage_keys(parse_params({"solar": {"horizon": 12}}), "v1", code="c")
    assert horizon["features"] != base["features"]
    space = parse_params({}).tune.search_space
    windows = {k: v.model_dump() for k, v in space.items()} | {"window": {"choices": [96]}}
    wider = caching.stage_keys(parse_params({"tune": {"search_space": windows}}), "v1", code="c")
    assert wider["features"] == base["features"] and wider["split"] != base["split"]


def test_where_training_runs_is_not_in_any_key_but_how_many_processes_is():
    base = caching.stage_keys(parse_params({}), "v1", code="c")
    launch = {"engine": "dask", "address": "tcp://elsewhere:8786", "timeout_seconds": 5}
    moved = caching.stage_keys(parse_params({"train": {"launch": launch}}), "v1", code="c")
    assert moved == base
    more = caching.stage_keys(parse_params({"train": {"processes": 2}}), "v1", code="c")
    assert more["train"] != base["train"]
