"""The project: make one (`init`), run its offline flow (`run`, `--resume`), pretrain its
model on unlabeled rows (`pretrain`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from loopline.app.cli.common import (
    ParamOption,
    ProjectOption,
    console,
    data_version,
    fail,
    project_paths,
    say_data_version,
    temporary_prefect,
    wide_console,
)
from loopline.errors import LooplineError
from loopline.redaction import redact


def init(
    name: Annotated[
        str | None,
        typer.Argument(help="The project's name: its new folder (and a custom task's name)."),
    ] = None,
    template: Annotated[
        str | None, typer.Option("--template", "-t", help="What the project starts from.")
    ] = None,
    list_templates: Annotated[
        bool, typer.Option("--list", help="Show the templates and exit.")
    ] = False,
) -> None:
    """Make a project from a template: params.yaml, data.dvc, README, tests; git and DVC
    initialised. `--template custom` adds a task module of the project's own."""
    from loopline.app.scaffold import ScaffoldError, init_project, templates

    if list_templates:
        _print_templates(templates())
        return
    known = ", ".join(t.name for t in templates())
    if name is None:
        fail(ScaffoldError(f"give the project's NAME: loopline init NAME --template ({known})"))
    if template is None:
        fail(ScaffoldError(f"choose a template with --template: {known} (see --list)"))
    try:
        project = init_project(name, template)
    except ScaffoldError as error:
        fail(error)
    console.print(f"[bold green]created[/] {project.root} from template {project.template}")
    console.print(f"task: {project.task} · {len(project.files)} files · git and DVC initialised")
    console.print(f"next: cd {project.root.name} && loopline run && pytest")


def _print_templates(found) -> None:
    table = Table(title="loopline init NAME --template T")
    table.add_column("template")
    table.add_column("what it is")
    for template in found:
        table.add_row(template.name, template.description)
    wide_console().print(table)


def run(
    project: ProjectOption = None,
    task: Annotated[str | None, typer.Option(help="Task to run (overrides params `task`).")] = None,
    param: ParamOption = None,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume",
            metavar="FLOW_RUN_ID",
            help="Continue a crashed or failed flow run (its id is printed at its start): "
            "completed stages are not redone.",
        ),
    ] = None,
    reason: Annotated[
        str | None,
        typer.Option(help="Why this run starts: tagged on the run and in the champion history."),
    ] = None,
) -> None:
    """Run the offline flow: ingest → … → publish, printing progress per stage."""
    from loopline.params import load_params

    paths = project_paths(project)
    overrides = list(param or []) + ([f"task={task}"] if task else [])
    if resume and overrides:
        fail(LooplineError("--resume reruns a flow run with its own params; drop -P / --task"))
    try:
        # Validate every knob before any work (and before Prefect starts).
        load_params(paths.params_file, overrides)
        if resume:
            from pipelines.resume import parse_flow_run_id

            parse_flow_run_id(resume)
    except LooplineError as error:
        fail(error)
    console.print(f"[bold]Loopline offline flow[/] · project {paths.root}")
    console.print(f"MLflow {redact(paths.tracking_uri())}")
    before = data_version(paths)
    temporary_prefect(paths)
    try:
        if resume:
            from pipelines.resume import resume_offline_run

            summary = resume_offline_run(resume)
        else:
            from pipelines.offline import offline_flow

            summary = offline_flow(root=str(paths.root), overrides=overrides, trigger=reason)
    except LooplineError as error:
        fail(error)
    status = summary["status"]
    if status == "published":
        where = "champion" if summary["promoted"] else "challenger (champion unchanged)"
        console.print(f"[bold green]done:[/] {summary['task']} v{summary['version']} is {where}")
    else:
        console.print(f"[bold yellow]{summary['message']}[/]")
    say_data_version(paths, before)
    typer.echo(json.dumps(summary, default=str))


def pretrain(
    project: ProjectOption = None,
    param: ParamOption = None,
    device: Annotated[str, typer.Option(help="cpu, or cuda where a GPU is present.")] = "cpu",
) -> None:
    """Pretrain the task's model on the snapshot's rows, labels unused (where the task can,
    say masked tokens of a text) and register it as model `<model>-encoder`; the printed
    override fine-tunes from it."""
    import shutil
    import tempfile
    import time

    from loopline import registry
    from loopline.offline.datastore import SnapshotStore
    from loopline.params import load_params
    from loopline.tasks.base import Pretraining

    paths = project_paths(project)
    try:
        params = load_params(paths.params_file, list(param or []))
    except LooplineError as error:
        fail(error)
    task = params.plugin
    if not isinstance(task, Pretraining):
        fail(LooplineError(f"task {task.name} has no pretraining (the Pretraining ability)"))
    store = SnapshotStore(paths.snapshots(task.name))
    rows = store.load()
    if rows.empty:
        fail(LooplineError(f"no {task.name} snapshot yet: run `loopline run` first"))
    uri, name = paths.tracking_uri(), f"{params.model_name}-encoder"
    experiment = registry.ensure_experiment(
        uri, f"{params.experiment_name}-pretraining", paths.local_artifact_root()
    )
    mlflow_client = registry.client(uri)
    run_id = mlflow_client.create_run(experiment, run_name="pretrain").info.run_id
    started = time.perf_counter()

    def show(epoch: int, epochs: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            mlflow_client.log_metric(run_id, key, value, step=epoch)
        shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        console.print(f"  epoch {epoch}/{epochs}  {shown}  ({time.perf_counter() - started:.0f}s)")

    with tempfile.TemporaryDirectory() as scratch:
        try:
            result = task.pretrain(rows, params, Path(scratch), show, device)
        except (LooplineError, ValueError) as error:
            mlflow_client.set_terminated(run_id, "FAILED")
            fail(error)
        path = paths.state / "encoders" / f"{name}-{run_id}{result.path.suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(result.path, path)
    for key, value in result.params.items():
        mlflow_client.log_param(run_id, key, value)
    tags = {"loopline.snapshot_version": store.version()}
    version = registry.register_file(uri, run_id, path, name, tags)
    mlflow_client.set_terminated(run_id)
    console.print(f"[bold green]registered:[/] {name} v{version} ({result.metrics})")
    console.print(f"fine-tune from it: -P {result.override.format(path=path)}")
    typer.echo(json.dumps({"model": name, "version": version, "path": str(path)}))
