"""`loopline init`: a new project folder from a template, with git and DVC initialised.

A built-in task's template lives in its own package (`tasks/<name>/template/`), the `custom`
one in `loopline/app/templates/`, beside copier's `copier.yml` and the files every project
shares (`_shared/`); each template's `template.yml` says in a line what it is. After
rendering, the project gets a git repository, DVC with its local remote in the project's
state folder, a `data.dvc` pointer for its (still empty) data folder, and a first commit,
so `loopline run` and `pytest` work in it at once.

Bad input (an unknown template, an invalid name, a folder that is not empty, no git) is
refused before anything is written; a step that fails later removes what was made.
"""

from __future__ import annotations

import keyword
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from loopline.config import SHARED_SECTIONS
from loopline.errors import LooplineError
from loopline.offline.datastore import track_data
from loopline.paths import ProjectPaths, orchestrator_environment
from loopline.tasks import BUILTIN

TEMPLATES = Path(__file__).parent / "templates"
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")
MAX_NAME = 64


class ScaffoldError(LooplineError):
    """`loopline init` cannot make this project; the message names why."""


@dataclass(frozen=True)
class Template:
    name: str
    description: str


@dataclass(frozen=True)
class Project:
    """A project `init_project` made."""

    root: Path
    template: str
    task: str  # what params.yaml's `task:` names
    files: list[str]


def template_folders() -> dict[str, Path]:
    """Each template's folder: the built-in tasks' (in their packages), then the library's
    own (`custom`)."""
    tasks = Path(__file__).parents[1] / "tasks"
    found = {name: tasks / name / "template" for name in BUILTIN}
    found = {name: folder for name, folder in found.items() if folder.is_dir()}
    for folder in sorted(TEMPLATES.iterdir()):
        if folder.is_dir() and not folder.name.startswith(("_", ".")):
            found[folder.name] = folder
    return found


def templates() -> list[Template]:
    """The templates `loopline init` knows, each with the line its template.yml gives."""
    return [
        Template(name, yaml.safe_load((folder / "template.yml").read_text())["description"])
        for name, folder in template_folders().items()
    ]


def task_names(project_name: str) -> tuple[str, str]:
    """A custom task's name (its params section and module) and class name."""
    task = project_name.replace("-", "_")
    return task, "".join(part.capitalize() for part in task.split("_"))


def name_problem(name: str, template: str) -> str | None:
    """Why `name` cannot name a project of `template` (None when it can)."""
    if not NAME_PATTERN.match(name) or len(name) > MAX_NAME:
        return (
            f"invalid project name {name!r}: use lower-case letters, numbers, '-' or '_', "
            f"starting with a letter (at most {MAX_NAME} characters), e.g. my-task"
        )
    task, _ = task_names(name)
    if template == "custom":
        if keyword.iskeyword(task):
            return f"invalid project name {name!r}: {task!r} is a Python keyword"
        if task in SHARED_SECTIONS:
            return f"invalid project name {name!r}: {task!r} is a params.yaml section's name"
        if task in BUILTIN:
            return f"invalid project name {name!r}: {task!r} is a built-in task's name"
    return None


def check_request(name: str, template: str, destination: Path) -> None:
    """Refuse bad input before any work, naming the problem."""
    known = [t.name for t in templates()]
    if template not in known:
        raise ScaffoldError(f"unknown template {template!r}; the templates are: {', '.join(known)}")
    problem = name_problem(name, template)
    if problem:
        raise ScaffoldError(problem)
    if destination.exists() and not destination.is_dir():
        raise ScaffoldError(f"{destination} exists and is not a folder")
    if destination.is_dir():
        entries = sorted(p.name for p in destination.iterdir())
        if entries:
            shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
            raise ScaffoldError(
                f"folder {destination} is not empty ({shown}): init makes a new project in a "
                "new or empty folder"
            )
    if shutil.which("git") is None:
        raise ScaffoldError("git is not installed: a project is a git repository")


def init_project(name: str, template: str, destination: Path | None = None) -> Project:
    """Make project `name` from `template` in `destination` (default: ./name)."""
    destination = (destination or Path.cwd() / name).resolve()
    check_request(name, template, destination)
    existed = destination.exists()
    try:
        _render(name, template, destination)
        _init_git_and_dvc(destination)
        _commit(destination, f"loopline init: a {template} project ({name})")
    except Exception as error:
        _remove(destination, existed)
        if isinstance(error, ScaffoldError):
            raise
        raise ScaffoldError(
            f"init {name} ({template}) failed and was undone: {type(error).__name__}: {error}"
        ) from error
    files = _tracked_files(destination)
    task, class_name = task_names(name)
    reference = f"tasks.{task}:{class_name}" if template == "custom" else template
    return Project(destination, template, reference, files)


def _render(name: str, template: str, destination: Path) -> None:
    import copier

    task, class_name = task_names(name)
    with tempfile.TemporaryDirectory(prefix="loopline-template-") as scratch:
        # copier renders one root: the chosen template beside copier.yml and _shared/.
        root = Path(scratch)
        shutil.copy2(TEMPLATES / "copier.yml", root / "copier.yml")
        shutil.copytree(TEMPLATES / "_shared", root / "_shared")
        shutil.copytree(template_folders()[template], root / template)
        copier.run_copy(
            str(root),
            destination,
            data={
                "template": template,
                "project_name": name,
                "task_name": task,
                "class_name": class_name,
            },
            defaults=True,
            quiet=True,
            unsafe=False,
            cleanup_on_error=False,  # undone by init_project, which knows what was there
        )


def _init_git_and_dvc(root: Path) -> None:
    """git init, DVC with the project's local remote, and `data.dvc` for the data folder."""
    from dvc.repo import Repo

    paths = ProjectPaths.at(root)
    _git(root, "-c", "init.defaultBranch=main", "init", "--quiet")
    dvcignore = (root / ".dvcignore").read_text() if (root / ".dvcignore").exists() else None
    logging.getLogger("dvc").setLevel(logging.WARNING)  # its "now commit" hints are noise
    with _dvc_environment(paths):
        Repo.init(str(root))
        if dvcignore is not None:  # the template's, not DVC's empty one
            (root / ".dvcignore").write_text(dvcignore)
        with Repo(str(root)) as repo, repo.config.edit() as config:
            config["core"]["remote"] = "local"
            config["core"]["autostage"] = "false"
            # DVC stores a relative path relative to .dvc/ (it reads it from the working
            # directory): a moved or cloned project keeps its remote.
            config["remote"]["local"] = {"url": os.path.relpath(paths.dvc_remote)}
        paths.data.mkdir(exist_ok=True)
        track_data(root, paths.data, push=False)


@contextmanager
def _dvc_environment(paths) -> Iterator[None]:
    """DVC's analytics off and its site cache in the project's state folder (else it writes
    under /var/tmp), unless the user set them; the process's environment is left as it was."""
    wanted = orchestrator_environment(paths)
    added = [key for key in ("DVC_NO_ANALYTICS", "DVC_SITE_CACHE_DIR") if key not in os.environ]
    os.environ.update({key: wanted[key] for key in added})
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def _commit(root: Path, message: str) -> None:
    _git(root, "add", "--all")
    env = None
    if subprocess.run(["git", "config", "user.email"], cwd=root, capture_output=True).returncode:
        # No identity configured (a fresh machine, CI): commit as Loopline; amend later.
        env = {
            **os.environ,
            "GIT_AUTHOR_NAME": "loopline init",
            "GIT_AUTHOR_EMAIL": "loopline@localhost",
            "GIT_COMMITTER_NAME": "loopline init",
            "GIT_COMMITTER_EMAIL": "loopline@localhost",
        }
    _git(root, "commit", "--quiet", "--no-verify", "-m", message, env=env)


def _git(root: Path, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, env=env)
    if done.returncode:
        raise ScaffoldError(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def _tracked_files(root: Path) -> list[str]:
    return _git(root, "ls-files").split()


def _remove(destination: Path, existed: bool) -> None:
    """Undo a failed init: the folder it made, or what it put in the empty one it was given."""
    if not destination.exists():
        return
    if not existed:
        shutil.rmtree(destination, ignore_errors=True)
        return
    for entry in destination.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


__all__ = [
    "Project",
    "ScaffoldError",
    "Template",
    "check_request",
    "init_project",
    "name_problem",
    "templates",
]
