"""`task:` names a built-in, an import path or an entry point; a bad one is refused, named."""

from __future__ import annotations

import sys
import textwrap

import pytest

from loopline.errors import ConfigError
from loopline.params import load_params, parse_params
from loopline.tasks import get_task


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder with a task module of its own (importable from the folder)."""
    (tmp_path / "plant_tasks").mkdir()
    (tmp_path / "plant_tasks" / "__init__.py").write_text(
        textwrap.dedent(
            """
            from loopline.tasks.solar import SolarTask

            class PlantTask(SolarTask):
                name = "plant"

            class Broken:
                name = "broken"

            class Half(SolarTask):
                name = "half"
                Hyperparameters = dict
            """
        )
    )
    monkeypatch.setattr(sys, "path", list(sys.path))  # the project folder is added per test
    yield tmp_path
    for module in [m for m in sys.modules if m.startswith("plant_tasks")]:
        del sys.modules[module]


def write_params(root, text: str):
    (root / "params.yaml").write_text(textwrap.dedent(text))
    return root / "params.yaml"


def test_an_import_path_loads_the_projects_own_task_with_its_own_section(project):
    path = write_params(
        project,
        """
        task: plant_tasks:PlantTask
        plant:
          sites: [greensboro]
        """,
    )
    params = load_params(path)
    assert params.task_name == "plant" and params.model_name == "plant"
    assert [site.name for site in params.task_params.sites] == ["greensboro"]
    assert params.experiment_name == "loopline-plant"
    with pytest.raises(ConfigError, match=r"plant\.sitez: unknown key"):
        load_params(path, ["plant.sitez=[x]"])


def test_an_unknown_task_is_refused_naming_what_was_tried(project):
    with pytest.raises(ConfigError) as error:
        load_params(write_params(project, "task: nonsense\n"))
    assert "unknown task 'nonsense'" in str(error.value)
    assert "'solar'" in str(error.value) and "loopline.tasks" in str(error.value)
    with pytest.raises(ConfigError, match=r"cannot import module 'plant_tasks\.nope'"):
        load_params(write_params(project, "task: plant_tasks.nope:X\n"))
    with pytest.raises(ConfigError, match="module 'plant_tasks' has no attribute 'Nope'"):
        load_params(write_params(project, "task: plant_tasks:Nope\n"))


def test_a_class_that_misses_part_of_the_contract_is_named(project):
    with pytest.raises(ConfigError, match=r"is not a subclass of loopline\.tasks\.base\.Task"):
        load_params(write_params(project, "task: plant_tasks:Broken\n"))
    with pytest.raises(ConfigError, match="Hyperparameters must subclass"):
        load_params(write_params(project, "task: plant_tasks:Half\n"))


def test_a_task_from_an_entry_point(tmp_path, monkeypatch, project):
    """A task shipped as a package: found through group `loopline.tasks`."""
    dist = tmp_path / "plant_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: plant-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[loopline.tasks]\nplant = plant_tasks:PlantTask\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    params = parse_params({"task": "plant"})
    assert params.task_name == "plant" and type(params.plugin).__name__ == "PlantTask"


def test_other_built_in_sections_may_stay_in_the_file(project):
    """A project keeps the sections of the tasks it switches between (`-P task=...`)."""
    params = parse_params({"task": "digits", "solar": {"sites": ["greensboro"]}})
    assert params.task_name == "digits" and "solar" not in params.to_dict()
    with pytest.raises(ConfigError, match="weather: unknown key"):
        parse_params({"task": "digits", "weather": {}})


def test_built_ins_pass_the_contract_check():
    for name in ("solar", "reviews", "digits"):
        assert get_task(name).name == name


def test_a_task_name_that_would_clash_is_refused(project):
    (project / "clash.py").write_text(
        textwrap.dedent(
            """
            from loopline.tasks.solar import SolarTask

            class Fingerprint(SolarTask):
                name = "fingerprint"

            class Impostor(SolarTask):
                name = "solar"
            """
        )
    )
    with pytest.raises(ConfigError, match="task name 'fingerprint' is taken"):
        load_params(write_params(project, "task: clash:Fingerprint\n"))
    with pytest.raises(ConfigError, match="takes the built-in task's name 'solar'"):
        load_params(write_params(project, "task: clash:Impostor\n"))
    del sys.modules["clash"]


def test_a_models_metadata_never_chooses_what_is_imported():
    from loopline.tasks import task_named

    with pytest.raises(ConfigError, match="not loaded in this process"):
        task_named("os:system")
