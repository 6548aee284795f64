"""`loopline`: the one console script for every user action.

Heavy libraries (Prefect, MLflow, torch) are imported inside commands so `--help` is instant.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from loopline.errors import LooplineError

app = typer.Typer(
    help="Loopline: from raw data to a gated ONNX champion, and back.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

ProjectOption = Annotated[
    Path | None,
    typer.Option("--project", help="Project folder holding params.yaml (default: nearest one)."),
]


def _paths(project: Path | None):
    from loopline.paths import ProjectPaths, apply_environment, find_project_root

    paths = ProjectPaths.at(project or find_project_root())
    apply_environment(paths)
    return paths


def _fail(error: Exception) -> None:
    console.print(f"[bold red]error:[/] {error}")
    raise typer.Exit(code=1)


@app.command()
def run(
    project: ProjectOption = None,
    task: Annotated[str | None, typer.Option(help="Task to run (overrides params `task`).")] = None,
    param: Annotated[
        list[str] | None,
        typer.Option("-P", "--param", help="Override a param: section.key=value (repeatable)."),
    ] = None,
) -> None:
    """Run the offline flow: ingest → … → publish, printing progress per stage."""
    from loopline.config import load_params

    paths = _paths(project)
    overrides = list(param or []) + ([f"task={task}"] if task else [])
    try:
        # Validate every knob before any work (and before Prefect starts).
        load_params(paths.params_file, overrides)
    except LooplineError as error:
        _fail(error)
    console.print(f"[bold]Loopline offline flow[/] · project {paths.root}")
    console.print(f"MLflow {paths.tracking_uri()}")
    from pipelines.offline import offline_flow

    try:
        summary = offline_flow(root=str(paths.root), overrides=overrides)
    except LooplineError as error:
        _fail(error)
    status = summary["status"]
    if status == "published":
        where = "champion" if summary["promoted"] else "challenger (champion unchanged)"
        console.print(f"[bold green]done:[/] {summary['task']} v{summary['version']} is {where}")
    else:
        console.print(f"[bold yellow]{summary['message']}[/]")
    typer.echo(json.dumps(summary, default=str))


@app.command()
def models(
    project: ProjectOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    history: Annotated[bool, typer.Option(help="Also show each model's champion moves.")] = False,
) -> None:
    """Registered versions: aliases, key metrics, data version, commit."""
    from loopline import registry

    paths = _paths(project)
    uri = paths.tracking_uri()
    rows = registry.list_models(uri)
    histories = {name: registry.champion_history(uri, name) for name in {r["name"] for r in rows}}
    if as_json:
        typer.echo(
            json.dumps(
                {"tracking_uri": uri, "versions": rows, "history": histories}, indent=1, default=str
            )
        )
        return
    if not rows:
        console.print(f"No registered models in {uri}. Run `loopline run` first.")
        return
    table = Table(title=f"Registered models · {uri}")
    for column in (
        "model",
        "version",
        "aliases",
        "created",
        "test RMSE",
        "smart pers. RMSE",
        "data version",
        "commit",
    ):
        table.add_column(column)
    for r in rows:
        m = r["metrics"]
        table.add_row(
            r["name"],
            r["version"],
            ", ".join(r["aliases"]),
            r["created"],
            f"{m['test_rmse']:.1f}" if "test_rmse" in m else "-",
            f"{m['smart_persistence_rmse']:.1f}" if "smart_persistence_rmse" in m else "-",
            (r["data_version"] or "-")[:12],
            (r["git_commit"] or "-")[:10],
        )
    out = Console()
    # Piped output has no terminal width; do not squeeze the table into 80 columns.
    (out if out.is_terminal else Console(width=200)).print(table)
    if history:
        for name, moves in histories.items():
            console.print(f"[bold]{name}[/] champion history:")
            for move in moves:
                before = f"v{move['from']}" if move["from"] else "(none)"
                console.print(
                    f"  {move['when']}  {before} → v{move['to']}  by {move['who']}: {move['why']}"
                )


def main() -> None:  # pragma: no cover - console entry for `python -m loopline.cli`
    sys.exit(app())


if __name__ == "__main__":
    main()
