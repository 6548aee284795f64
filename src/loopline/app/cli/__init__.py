"""`loopline`: the one console script for every user action (`loopline = loopline.app.cli:app`).

The commands live by group: `project` (init, run, pretrain), `models` (models, promote,
rollback, explain), `serve` (serve, deploy, stream, consume, ui), `data` (label export and
import), `monitor` and `schedule`; `common` holds what they share. Heavy libraries (MLflow,
torch, pandas, the flows in `pipelines/`) are imported inside the commands that use them,
so that `loopline --help` answers at once; the Prefect parts are functions of `pipelines/`,
so the CLI never imports Prefect itself.
"""

from __future__ import annotations

import typer

from loopline.app.cli import data, models, monitor, project, schedule, serve

app = typer.Typer(
    help="Loopline: from raw data to a gated ONNX champion, and back.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# In the order `loopline --help` lists them.
for command in (
    project.init,
    project.run,
    models.models,
    serve.serve,
    schedule.schedule,
    monitor.monitor,
):
    app.command()(command)
app.command("deploy")(serve.deploy_command)
for command in (
    serve.stream,
    models.explain,
    serve.ui,
    serve.consume,
    models.rollback,
    models.promote,
    project.pretrain,
):
    app.command()(command)
app.add_typer(data.label_app, name="label")


def main() -> None:  # pragma: no cover - console entry for `python -m loopline.app.cli`
    app()
