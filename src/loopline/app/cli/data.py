"""Data from people: `loopline label export` (the batch active learning picks, as a CSV
and Label Studio tasks) and `loopline label import` (the answers, into the DVC-tracked
labeled set)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from loopline.app.cli.common import (
    ProjectOption,
    console,
    data_version,
    fail,
    project_paths,
    say_data_version,
)
from loopline.errors import LooplineError

label_app = typer.Typer(
    help="Labels from people: export the batch active learning picks, import the answers.",
    no_args_is_help=True,
)


@label_app.command("export")
def label_export(
    project: ProjectOption = None,
    n: Annotated[
        int | None, typer.Option("--n", help="Rows (default: labeling.batch_size).")
    ] = None,
    strategy: Annotated[
        str | None,
        typer.Option(help="random | least_confidence | margin | entropy | committee."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Folder for the files (default: labeling/ here).")
    ] = None,
    task: Annotated[str | None, typer.Option(help="Task (overrides params `task`).")] = None,
) -> None:
    """Write the next batch to label: a CSV (fill in `label`) and Label Studio tasks."""
    from loopline.offline.human_labels import export_batch, label_studio_config
    from loopline.params import load_params

    paths = project_paths(project)
    overrides = [f"labeling.{k}={v}" for k, v in {"strategy": strategy}.items() if v]
    try:
        params = load_params(paths.params_file, overrides + ([f"task={task}"] if task else []))
        plugin = params.plugin
        batch, csv_path, json_path = export_batch(
            plugin,
            paths,
            params,
            n or params.labeling.batch_size,
            params.labeling.strategy,
            out or paths.root / "labeling",
        )
    except LooplineError as error:
        fail(error)
    origins = batch["origin"].value_counts().to_dict()
    console.print(
        f"[bold]{len(batch)}[/] rows chosen by {params.labeling.strategy} "
        f"(from {', '.join(f'{v} {k}' for k, v in origins.items())})"
    )
    console.print(f"CSV to fill in (column `label`): {csv_path}")
    console.print(f"Label Studio tasks: {json_path}")
    console.print(f"Label Studio labeling config: {label_studio_config(list(plugin.class_names))}")
    console.print("Then: loopline label import FILE (the filled CSV or Label Studio's JSON export)")


@label_app.command("import")
def label_import(
    file: Annotated[Path, typer.Argument(help="The filled CSV, or Label Studio's JSON export.")],
    project: ProjectOption = None,
    task: Annotated[str | None, typer.Option(help="Task (overrides params `task`).")] = None,
) -> None:
    """Check every answer and merge them into the DVC-tracked labeled set (all or none)."""
    from loopline.offline import datastore
    from loopline.offline.human_labels import LabelStore, import_answers, known_texts
    from loopline.params import load_params

    paths = project_paths(project)
    before = data_version(paths)
    try:
        params = load_params(paths.params_file, [f"task={task}"] if task else [])
        plugin = params.plugin
        store = LabelStore(paths.labels(plugin.name))
        report = import_answers(
            file.resolve(), store, known_texts(plugin, paths, params), list(plugin.class_names)
        )
        version = None
        if report.added:
            datastore.ensure_dvc_repo(paths.root, paths.dvc_remote)
            version = datastore.track_data(paths.root, paths.data)
    except LooplineError as error:
        fail(error)
    console.print(
        f"[bold green]imported:[/] {report.added} new label(s), {report.unchanged} already "
        f"held, {report.unanswered} row(s) left unanswered; {report.total_labels} human "
        f"labels in {store.path.relative_to(paths.root)}"
        + (f" (data version {version})" if version else "")
    )
    say_data_version(paths, before)
    console.print("The next `loopline run` trains on them.")
