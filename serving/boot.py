"""What a service process reads: the shape of its class when the module is imported (the
task whose types the APIs take, the `serve:` settings the decorators take), and its whole
params at start-up.

`loopline serve` names the task (`LOOPLINE_TASK`) and every setting (`LOOPLINE_SERVE_<KEY>`)
in the environment. The project's params.yaml is still read at import: the APIs are typed
by the task's request types, and a family task's follow its own section (which columns a
table has), which only the file holds.
"""

from __future__ import annotations

import os

from loopline.config import Params, apply_overrides, serve_env_overrides
from loopline.params import load_params, parse_params
from loopline.paths import ProjectPaths, find_project_root

# The task a service runs comes from here when set (`loopline serve` sets it to the task of
# the model it serves), else from the project's params.yaml.
TASK_ENV = "LOOPLINE_TASK"


def boot_params(environ: dict[str, str] | None = None) -> Params:
    """The params a service runs with: the project's params.yaml (`LOOPLINE_PROJECT`, else
    the working folder) with the environment's overrides (`LOOPLINE_SERVE_<KEY>`,
    `LOOPLINE_TASK`). Read once, when the module composes the service class: a family
    task's request types follow its own params section, so the class needs them all."""
    environ = dict(os.environ if environ is None else environ)
    overrides = serve_env_overrides(environ)
    if environ.get(TASK_ENV):
        overrides.append(f"task={environ[TASK_ENV]}")
    root = find_project_root(environ.get("LOOPLINE_PROJECT"))
    params_file = ProjectPaths.at(root).params_file
    if params_file.is_file():
        return load_params(params_file, overrides)
    return parse_params(apply_overrides({}, overrides), root=root)
