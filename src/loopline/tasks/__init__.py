"""Task discovery: `task:` in params.yaml names a built-in task, an import path or a plug-in.

- a built-in name (see `BUILTIN`);
- an import path `package.module:Class`, with the project folder importable (a task module
  of the project's own, as `loopline init --template custom` makes);
- the name of an entry point in group `loopline.tasks` (a task shipped as a package).

An unknown or broken task is refused before any work, naming what was tried. Shared code
knows tasks only through this module and the contract in `loopline.tasks.base`.
"""

from __future__ import annotations

import importlib
import sys
from importlib.metadata import entry_points
from pathlib import Path

from loopline.errors import ConfigError
from loopline.tasks.base import Task, contract_problems

# Built-in tasks: examples of what a team brings, found like any other task.
BUILTIN = {
    "solar": "loopline.tasks.solar:SolarTask",
    "reviews": "loopline.tasks.reviews:ReviewsTask",
    "digits": "loopline.tasks.digits:DigitsTask",
    "forecast": "loopline.tasks.forecast:ForecastTask",
    "text": "loopline.tasks.text:TextTask",
    "image": "loopline.tasks.image:ImageTask",
    "tabular": "loopline.tasks.tabular:TabularTask",
}
DEFAULT_TASK = "solar"
ENTRY_POINT_GROUP = "loopline.tasks"

# Tasks loaded in this process, by name: a feature spec names its task, and reading one
# (say, a champion's) needs that task's typed options.
_LOADED: dict[str, Task] = {}


def _import(reference: str, root: Path | None) -> type:
    module_name, _, attribute = reference.partition(":")
    if root is not None and str(root) not in sys.path:
        # The project folder is importable (last: it never hides Loopline's own packages),
        # so a task module of its own is found.
        sys.path.append(str(root))
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise ConfigError(
            f"task {reference!r}: cannot import module {module_name!r} "
            f"({type(error).__name__}: {error})"
        ) from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ConfigError(
            f"task {reference!r}: module {module_name!r} has no attribute {attribute!r}"
        ) from None


def _plugins() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def resolve_reference(reference: str) -> str:
    """The import path `reference` stands for (a built-in, a plug-in or itself)."""
    if reference in BUILTIN:
        return BUILTIN[reference]
    plugins = _plugins()
    if reference in plugins:
        return plugins[reference]
    if ":" in reference:
        return reference
    known = sorted({*BUILTIN, *plugins})
    raise ConfigError(
        f"unknown task {reference!r}: not a built-in or an entry point in group "
        f"{ENTRY_POINT_GROUP!r} (known: {known}), nor an import path like "
        "'package.module:Class'"
    )


def get_task(reference: str, root: str | Path | None = None) -> Task:
    """The task `reference` names (see the module docstring); checked against the contract."""
    if reference in _LOADED and ":" not in reference:
        return _LOADED[reference]
    path = resolve_reference(reference)
    cls = _import(path, Path(root).resolve() if root is not None else None)
    problems = contract_problems(cls)
    if problems:
        raise ConfigError(
            f"task {reference!r} ({path}) breaks the task contract: " + "; ".join(problems)
        )
    if cls.name in BUILTIN and path != BUILTIN[cls.name]:
        raise ConfigError(
            f"task {reference!r} ({path}) takes the built-in task's name {cls.name!r}"
        )
    task = cls()
    _LOADED[task.name] = task
    return task


def task_named(name: str) -> Task:
    """A task by its `name` (a model's feature spec says it): loaded in this process
    already, or a built-in or plug-in of that name."""
    if name in _LOADED:
        return _LOADED[name]
    try:
        if ":" in name:  # a model's metadata names a task; it never chooses what is imported
            raise ConfigError(name)
        return get_task(name)
    except ConfigError:
        raise ConfigError(
            f"a model of task {name!r}: that task is not loaded in this process; set "
            "`task:` in params.yaml to it"
        ) from None


__all__ = ["BUILTIN", "DEFAULT_TASK", "Task", "get_task", "task_named"]
