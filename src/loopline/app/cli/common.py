"""What the commands share: the console, the `--project` option, finding the project,
failing with one red line, wide tables, the temporary Prefect API and the data version's
word after a command that moved it."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from loopline.paths import ProjectPaths, apply_environment, find_project_root
from loopline.redaction import redact

console = Console(stderr=True)

ProjectOption = Annotated[
    Path | None,
    typer.Option("--project", help="Project folder holding params.yaml (default: nearest one)."),
]
ParamOption = Annotated[
    list[str] | None,
    typer.Option("-P", "--param", help="Override a param: section.key=value (repeatable)."),
]


def project_paths(project: Path | None) -> ProjectPaths:
    """The project's paths (the nearest one without `--project`), its environment set."""
    paths = ProjectPaths.at(project or find_project_root())
    apply_environment(paths)
    return paths


def fail(error: Exception) -> None:
    """Say what went wrong (secrets redacted) and exit with code 1."""
    console.print(f"[bold red]error:[/] {redact(error)}")
    raise typer.Exit(code=1)


def wide_console() -> Console:
    """A console on stdout; piped output has no terminal width: do not squeeze a table
    into 80 columns then."""
    out = Console()
    return out if out.is_terminal else Console(width=200)


def temporary_prefect(paths: ProjectPaths) -> None:
    """Start the temporary Prefect API a flow run in this process uses (unless
    `PREFECT_API_URL` names a server), stopped however the process ends, SIGTERM included;
    first stop one a SIGKILL'ed command left behind (`pipelines.temporary_server`)."""
    from pipelines.temporary_server import start_temporary_api, stop_orphans

    for pid in stop_orphans(paths):
        console.print(f"stopped the temporary Prefect server a killed run left (pid {pid})")
    start_temporary_api(paths)


def print_deployment(decided: dict | None) -> None:
    """One line of a shadow or canary deployment's verdict."""
    if not decided:
        return
    deployment, verdict = decided["deployment"], decided["verdict"]
    colour = {"promote": "green", "rollback": "red"}.get(verdict["decision"], "yellow")
    model = f"{decided['model']} " if decided.get("model") else ""
    console.print(
        f"[bold {colour}]{model}{deployment['mode']} v{deployment['version']}: "
        f"{verdict['decision']}[/] ({verdict['reason']})"
    )


def who() -> str:
    """Who runs this command, for the histories ("by hand" when the user is unknown)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "by hand"


def data_version(paths: ProjectPaths) -> str:
    """The data version `data.dvc` records now ("none" before the first snapshot)."""
    from loopline.offline.datastore import data_version as recorded

    return recorded(paths.root, paths.data)


def data_version_moved(before: str, after: str, pointer: str = "data.dvc") -> str | None:
    """What to tell the user when a command changed the data version: `pointer` is
    modified in their working tree and belongs in their next commit (None: unchanged)."""
    if after == before:
        return None
    return (
        f"data version {before[:12]} → {after[:12]}: {pointer} changed; commit it so that "
        f"this code and data go together: git add {pointer} && git commit -m "
        f'"data {after[:12]}"'
    )


def say_data_version(paths: ProjectPaths, before: str) -> None:
    """Print `data_version_moved`'s word, if any."""
    moved = data_version_moved(before, data_version(paths), f"{paths.data.name}.dvc")
    if moved:
        console.print(f"[bold]{moved}[/]")
