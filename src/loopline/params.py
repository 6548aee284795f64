"""params.yaml → typed `Params` with the project's task resolved: the one place that binds
the two.

`loopline.config` types every shared section and knows no task; `loopline.tasks` finds a
task by name and knows no params file. Here the task `task:` names is found (a built-in, an
import path from the project folder, a plug-in), its own section typed by its `Settings`,
and the whole file validated at once, every bad key named. A stage then takes the task
(`params.plugin`, bound to its section) and the shared section it reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, create_model

from loopline.config import (
    SHARED_SECTIONS,
    Params,
    apply_overrides,
    describe_error,
)
from loopline.errors import ConfigError
from loopline.tasks import BUILTIN, DEFAULT_TASK, get_task
from loopline.tasks.base import Task

_MODELS: dict[tuple[type, str | None], type[Params]] = {}


def params_model(task: Task, root: str | None = None) -> type[Params]:
    """The Params class of one task: the shared sections plus the task's own, typed by the
    task's `Settings`. Other built-in tasks' sections are accepted and ignored (checked when
    that task runs); any other key is refused, named."""
    key = (type(task), root)
    if key not in _MODELS:
        if task.name in SHARED_SECTIONS:
            raise ConfigError(f"task name {task.name!r} is a shared params section's name")
        sections = frozenset({task.name, *BUILTIN})
        others = {
            name: (dict[str, Any] | None, Field(None, exclude=True))
            for name in sections - {task.name}
        }
        own = (task.Settings, Field(default_factory=task.Settings))
        model = create_model(f"Params_{task.name}", __base__=Params, **{task.name: own}, **others)
        model.discovered, model.root, model.task_sections = task, root, sections
        model.rebuild = _rebuild
        _MODELS[key] = model
    return _MODELS[key]


def _rebuild(values: dict[str, Any], root: str | None) -> Params:
    """A pickled `Params` (Dask workers, Prefect results) rebuilt from plain values."""
    return parse_params(values, root=root)


def parse_params(
    raw: dict[str, Any] | None, origin: str = "params", root: str | Path | None = None
) -> Params:
    """Validate raw params; raise ConfigError naming the task that cannot be loaded, or
    listing every bad key. `root` is the project folder (where a task module of the
    project's own is imported from)."""
    raw = dict(raw or {})
    raw.setdefault("task", DEFAULT_TASK)
    reference = raw["task"]
    if not isinstance(reference, str):
        raise ConfigError(f"{origin} is invalid:\n  task: must be a task name or import path")
    root = str(Path(root).resolve()) if root is not None else None
    try:
        task = get_task(reference, root)
    except ConfigError as error:
        raise ConfigError(f"{origin} is invalid:\n  task: {error}") from None
    try:
        return params_model(task, root).model_validate(raw)
    except ValidationError as exc:
        lines = "\n  ".join(describe_error(e, task) for e in exc.errors())
        raise ConfigError(f"{origin} is invalid:\n  {lines}") from None


def load_params(path: str | Path, overrides: list[str] | None = None) -> Params:
    """Read params.yaml, apply `-P` overrides, validate."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"params file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections")
    return parse_params(
        apply_overrides(raw, overrides or []), origin=str(path), root=path.resolve().parent
    )
