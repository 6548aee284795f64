"""`loopline init`: templates, bad input refused before any work, and what a project holds."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from loopline.app.cli import app
from loopline.app.scaffold import TEMPLATES, init_project, templates
from loopline.params import load_params

runner = CliRunner()


class Said:
    """A CLI result with its output on one line (the console wraps long messages)."""

    def __init__(self, result) -> None:
        self.exit_code = result.exit_code
        self.output = " ".join(result.output.split())


def init(*args: str) -> Said:
    return Said(runner.invoke(app, ["init", *args]))


@pytest.fixture
def here(tmp_path, monkeypatch):
    """An empty working folder, with DVC's site cache inside it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LOOPLINE_HOME", raising=False)
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / ".dvc-site-cache"))
    return tmp_path


def entries(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != ".dvc-site-cache")


def test_list_shows_every_template_with_what_it_is():
    done = init("--list")
    assert done.exit_code == 0
    for name in ("solar", "reviews", "digits", "custom"):
        assert name in done.output
    assert "task module of your own" in done.output


def test_every_template_folder_is_listed_and_every_listed_one_exists():
    folders = {p.name for p in TEMPLATES.iterdir() if p.is_dir() and not p.name.startswith("_")}
    tasks = Path(TEMPLATES).parents[1] / "tasks"
    folders |= {p.parent.name for p in tasks.glob("*/template") if p.is_dir()}
    assert {t.name for t in templates()} == folders


def test_an_unknown_template_is_named_with_the_known_ones(here):
    done = init("plant", "--template", "solr")
    assert done.exit_code == 1
    assert "unknown template 'solr'" in done.output
    # Every template, the built-in tasks' (one line each in tasks.BUILTIN) and the library's.
    known = set(done.output.split("the templates are: ")[1].strip().split(", "))
    families = {"forecast", "text", "image", "tabular"}
    assert {"solar", "reviews", "digits", *families, "custom"} <= known
    assert entries(here) == []


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("My-Task", "invalid project name 'My-Task'"),
        ("9lives", "starting with a letter"),
        ("my task", "invalid project name"),
        ("../escape", "invalid project name"),
        ("a--b", "invalid project name"),
        ("x" * 65, "at most 64 characters"),
        ("class", "a Python keyword"),
        ("train", "a params.yaml section's name"),
        ("solar", "a built-in task's name"),
    ],
)
def test_an_invalid_project_name_is_refused_before_any_work(here, name, why):
    done = init(name, "--template", "custom")
    assert done.exit_code == 1
    assert why in done.output
    assert entries(here) == []


def test_a_built_in_template_may_share_its_tasks_name(here):
    assert init("solar", "--template", "solar").exit_code == 0


def test_init_into_a_non_empty_folder_is_refused_and_leaves_it_alone(here):
    (here / "plant").mkdir()
    (here / "plant" / "notes.txt").write_text("mine")
    done = init("plant", "--template", "digits")
    assert done.exit_code == 1
    assert "is not empty (notes.txt)" in done.output
    assert entries(here / "plant") == ["notes.txt"]
    assert (here / "plant" / "notes.txt").read_text() == "mine"


def test_missing_name_or_template_says_what_to_give(here):
    assert "give the project's NAME" in init("--template", "custom").output
    done = init("plant")
    assert done.exit_code == 1
    assert "choose a template with --template" in done.output
    assert entries(here) == []


def test_a_failed_step_undoes_the_project(here, monkeypatch):
    import loopline.app.scaffold as scaffold

    def broken(root):
        raise RuntimeError("disk full")

    monkeypatch.setattr(scaffold, "_init_git_and_dvc", broken)
    done = init("plant", "--template", "digits")
    assert done.exit_code == 1
    assert "failed and was undone" in done.output and "disk full" in done.output
    assert entries(here) == []


def git(root, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True).stdout


@pytest.mark.parametrize("template", ["solar", "reviews", "digits", "custom"])
def test_a_project_is_committed_with_git_and_dvc_and_its_params_validate(here, template):
    project = init_project("plant-one", template)
    root = here / "plant-one"
    assert project.root == root
    assert {"params.yaml", "data.dvc", "README.md", ".gitignore", ".dvc/config"} <= set(
        project.files
    )
    assert any(f.startswith("tests/test_") for f in project.files)
    assert len(git(root, "log", "--oneline").splitlines()) == 1
    assert git(root, "status", "--porcelain") == ""  # everything made is committed
    # DVC's remote is the project's state folder, relative, so a clone keeps it.
    assert "url = ../.loopline/dvc-remote" in (root / ".dvc" / "config").read_text()
    assert yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["path"] == "data"
    params = load_params(root / "params.yaml")  # every key known, every value valid
    assert params.task == project.task
    assert "{{" not in (root / "README.md").read_text()


def test_the_custom_template_names_its_task_after_the_project(here):
    project = init_project("my-task", "custom")
    module = here / "my-task" / "tasks" / "my_task.py"
    assert project.task == "tasks.my_task:MyTask"
    code = [
        line
        for line in module.read_text().split('"""')[-1].splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    # The shortest custom task, as the README shows it: an import, a class, four lines.
    assert len(code) == 6, code
    assert "six lines" in (here / "my-task" / "README.md").read_text()
    params = load_params(here / "my-task" / "params.yaml")
    assert params.task_name == "my_task" and params.plugin.features == (
        "temperature",
        "vibration",
        "pressure",
    )


def test_the_custom_sample_is_what_its_script_makes(tmp_path):
    import runpy

    script = TEMPLATES / "custom" / "sample" / "make_rows.py"
    rows = runpy.run_path(str(script))["make_rows"]()
    lines = (TEMPLATES / "custom" / "sample" / "rows.csv").read_text().splitlines()
    assert lines[1:] == [",".join(row) for row in rows]
    assert len(lines) == 301
