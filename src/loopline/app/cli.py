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
from loopline.health import LOOPBACK_HOSTS
from loopline.redaction import redact

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
    console.print(f"[bold red]error:[/] {redact(error)}")
    raise typer.Exit(code=1)


@app.command()
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
        _fail(ScaffoldError(f"give the project's NAME: loopline init NAME --template ({known})"))
    if template is None:
        _fail(ScaffoldError(f"choose a template with --template: {known} (see --list)"))
    try:
        project = init_project(name, template)
    except ScaffoldError as error:
        _fail(error)
    console.print(f"[bold green]created[/] {project.root} from template {project.template}")
    console.print(f"task: {project.task} · {len(project.files)} files · git and DVC initialised")
    console.print(f"next: cd {project.root.name} && loopline run && pytest")


def _print_templates(found) -> None:
    table = Table(title="loopline init NAME --template T")
    table.add_column("template")
    table.add_column("what it is")
    for template in found:
        table.add_row(template.name, template.description)
    out = Console()
    (out if out.is_terminal else Console(width=200)).print(table)


@app.command()
def run(
    project: ProjectOption = None,
    task: Annotated[str | None, typer.Option(help="Task to run (overrides params `task`).")] = None,
    param: Annotated[
        list[str] | None,
        typer.Option("-P", "--param", help="Override a param: section.key=value (repeatable)."),
    ] = None,
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
    from loopline.config import load_params

    paths = _paths(project)
    overrides = list(param or []) + ([f"task={task}"] if task else [])
    if resume and overrides:
        _fail(LooplineError("--resume reruns a flow run with its own params; drop -P / --task"))
    try:
        # Validate every knob before any work (and before Prefect starts).
        load_params(paths.params_file, overrides)
    except LooplineError as error:
        _fail(error)
    console.print(f"[bold]Loopline offline flow[/] · project {paths.root}")
    console.print(f"MLflow {redact(paths.tracking_uri())}")
    _temporary_prefect(paths)
    try:
        if resume:
            from pipelines.resume import resume_offline_run

            summary = resume_offline_run(resume)
        else:
            from pipelines.offline import offline_flow

            summary = offline_flow(root=str(paths.root), overrides=overrides, trigger=reason)
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
    split: Annotated[
        str | None,
        typer.Option(
            "--split",
            metavar="VERSION",
            help="Rows per split set of one version (--json: the keys of each set).",
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Registered model for --split (default: params).")
    ] = None,
) -> None:
    """Registered versions: aliases, key metrics, data version, commit."""
    from loopline import registry

    paths = _paths(project)
    uri = paths.tracking_uri()
    if split is not None:
        show_split(paths, model, split, as_json)
        return
    rows = registry.list_models(uri)
    histories = {name: registry.champion_history(uri, name) for name in {r["name"] for r in rows}}
    if as_json:
        typer.echo(
            json.dumps(
                {"tracking_uri": redact(uri), "versions": rows, "history": histories},
                indent=1,
                default=str,
            )
        )
        return
    if not rows:
        console.print(f"No registered models in {redact(uri)}. Run `loopline run` first.")
        return
    table = Table(title=f"Registered models · {redact(uri)}")
    for column in (
        "model",
        "version",
        "aliases",
        "created",
        "test metric",
        "gate",
        "data version",
        "commit",
        "refused",
    ):
        table.add_column(column)
    for r in rows:
        table.add_row(
            r["name"],
            r["version"],
            ", ".join(r["aliases"]),
            r["created"],
            headline_metric(r["metrics"]),
            gate_cell(r["tags"]),
            (r["data_version"] or "-")[:12],
            (r["git_commit"] or "-")[:10],
            (registry.refusal_in(r["tags"]) or {}).get("why", "")[:40],
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
                if move.get("gate"):
                    console.print(f"      gate: {describe_gate(move['gate'])}")
                if move.get("trigger"):
                    console.print(f"      started by: {move['trigger']}")


def headline_metric(metrics: dict[str, float]) -> str:
    """The test metric a version was judged on: accuracy for a classifier, else RMSE."""
    for name in ("test_accuracy", "test_rmse"):
        if name in metrics:
            return f"{name.removeprefix('test_')} {metrics[name]:.4g}"
    return "-"


def gate_cell(tags: dict[str, str]) -> str:
    """The gate's verdict with its test's p-value and interval (`loopline.gate_test`)."""
    from loopline.offline.publishing import GATE_TAG, GATE_TEST_TAG

    verdict = tags.get(GATE_TAG) or "-"
    try:
        test = json.loads(tags.get(GATE_TEST_TAG) or "null")
    except ValueError:
        test = None
    if not test:
        return verdict
    low, high = (test.get("interval") or [float("nan")] * 2)[:2]
    return (
        f"{verdict} vs {test.get('against')}: p {test.get('p_value', float('nan')):.3g}, "
        f"[{low:+.3g}, {high:+.3g}]"
    )


def describe_gate(gate: dict) -> str:
    """One line of a champion move's test: method, statistic, p-value, interval, rows."""
    low, high = (gate.get("interval") or [float("nan"), float("nan")])[:2]
    return (
        f"{gate.get('method')} statistic {gate.get('statistic', float('nan')):.4g}, "
        f"p {gate.get('p_value', float('nan')):.3g} (alpha {gate.get('alpha')}), difference "
        f"{gate.get('difference', float('nan')):+.4g}, interval [{low:+.4g}, {high:+.4g}] "
        f"on {gate.get('rows')} rows"
    )


def show_split(paths, model: str | None, version: str, as_json: bool) -> None:
    """Print which rows a registered version trained, validated and was tested on."""
    import tempfile

    from loopline import registry
    from loopline.config import load_params
    from loopline.offline.membership import Membership

    name = model or load_params(paths.params_file).model_name
    with tempfile.TemporaryDirectory() as scratch:
        folder = registry.download_model(
            paths.tracking_uri(), f"models:/{name}/{version}", Path(scratch)
        )
        membership = Membership.read(folder)
    if membership is None:
        raise LooplineError(
            f"{name} v{version} was published before split memberships were recorded: its "
            "sets are not known"
        )
    if as_json:
        typer.echo(json.dumps(membership.sets, default=str))
        return
    what = "time ranges per series" if membership.kind == "periods" else "keys"
    console.print(f"{name} v{version}: split sets by {', '.join(membership.key_columns)} ({what})")
    for name_, count in membership.counts().items():
        typer.echo(f"{name_:5s} {count}")


def served_task(paths, params) -> str:
    """The task reference of the model `serve.model` names: `LOOPLINE_TASK` when set, else
    the task its registered versions' lineage names (`deploy.task_reference`)."""
    import os

    from loopline.watch.deploy import task_reference

    return os.environ.get("LOOPLINE_TASK") or task_reference(
        paths.tracking_uri(), params.served_model, params
    )


@app.command()
def serve(
    project: ProjectOption = None,
    model: Annotated[str | None, typer.Option(help="Registered model (default: params).")] = None,
    alias: Annotated[str | None, typer.Option(help="Alias to serve and follow.")] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 3000,
    workers: Annotated[int | None, typer.Option(help="Worker processes.")] = None,
    poll_interval: Annotated[
        float | None, typer.Option(help="Seconds between alias checks (hot swap).")
    ] = None,
) -> None:
    """Serve the registry's champion (bentoml serve): predict, stream, metadata, metrics."""
    import os
    import shutil

    from loopline.config import SERVE_ENV_PREFIX, load_params, serve_env_overrides

    paths = _paths(project)
    chosen = {"model": model, "alias": alias, "workers": workers, "poll_interval_s": poll_interval}
    overrides = [f"serve.{k}={v}" for k, v in chosen.items() if v is not None]
    try:
        params = load_params(paths.params_file, serve_env_overrides(dict(os.environ)) + overrides)
    except LooplineError as error:
        _fail(error)
    env = dict(os.environ)
    # The service reads these at import (decorator arguments) and at start-up.
    for key, value in params.serve.model_dump().items():
        if value is not None:
            env[f"{SERVE_ENV_PREFIX}{key.upper()}"] = str(value)
    env.setdefault(f"{SERVE_ENV_PREFIX}MODEL", params.served_model)
    env["LOOPLINE_PROJECT"] = str(paths.root)
    env.setdefault("BENTOML_HOME", str(paths.state / "bentoml"))
    env.setdefault("BENTOML_DO_NOT_TRACK", "true")
    # Each service its own Prometheus folder (the server wipes it at every start).
    metrics = paths.state / "metrics" / f"{params.served_model}-{port}"
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
    from loopline.online.models import use_service_deadlines

    # Short registry deadlines for this process's own look-up and for the service it becomes.
    use_service_deadlines(env)
    os.environ.update({k: env[k] for k in use_service_deadlines(env)})
    try:
        env["LOOPLINE_TASK"] = served_task(paths, params)
    except LooplineError as error:
        _fail(error)
    bentoml = shutil.which("bentoml") or str(Path(sys.executable).with_name("bentoml"))
    service_dir = Path(__file__).resolve().parents[3]
    command = [bentoml, "serve", "serving.service:Loopline", "--host", host, "--port", str(port)]
    if (service_dir / "serving" / "service.py").is_file():
        command += ["--working-dir", str(service_dir)]
    console.print(
        f"[bold]Serving[/] {params.served_model}@{params.serve.alias} "
        f"(task {env['LOOPLINE_TASK']}) from "
        f"{redact(paths.tracking_uri())} on http://{host}:{port}"
    )
    if not params.serve.token and host not in LOOPBACK_HOSTS:
        console.print(
            f"[yellow]no token:[/] anyone who reaches {host}:{port} can predict and write the "
            "prediction log; set LOOPLINE_SERVE_TOKEN for production"
        )
    # exec: the server gets signals (Ctrl-C, docker stop) directly and shuts down cleanly.
    os.execvpe(command[0], command, env)


@app.command()
def schedule(
    project: ProjectOption = None,
    list_: Annotated[
        bool, typer.Option("--list", help="Show deployments: cron, zone, next run, last state.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="With --list: machine-readable.")] = False,
    param: Annotated[
        list[str] | None,
        typer.Option("-P", "--param", help="Override a param for the scheduled runs (repeatable)."),
    ] = None,
    pool: Annotated[
        str | None,
        typer.Option(
            "--pool",
            help="Register the deployment on this Prefect work pool and return; a worker "
            "(`prefect worker start --pool NAME`) runs it. A process pool is created if missing.",
        ),
    ] = None,
) -> None:
    """Register the deployments and serve them (prefect serve) until Ctrl-C.

    Uses the Prefect server at PREFECT_API_URL, or starts one on loopback with its database
    under the project's state folder (the temporary API cannot run schedules). With --pool
    the deployment goes to a work pool instead (needs PREFECT_API_URL: the pool's workers
    must reach the server).
    """
    import asyncio
    import os
    from contextlib import nullcontext

    from loopline.config import load_params

    paths = _paths(project)
    overrides = list(param or [])
    try:
        params = load_params(paths.params_file, overrides)
    except LooplineError as error:
        _fail(error)
    from pipelines.deployments import (
        list_deployments,
        local_server,
        monitor_deployment,
        offline_deployment,
    )

    given = os.environ.get("PREFECT_API_URL")
    if pool and not list_:
        if not given:
            _fail(
                LooplineError(
                    "--pool needs a Prefect server its workers reach: set PREFECT_API_URL "
                    "(`prefect server start`, or `loopline schedule` serving on this machine)"
                )
            )
        from pipelines.deployments import deploy_to_pool

        deployment_id = deploy_to_pool(params, paths, pool, overrides)
        console.print(
            f"[bold]Deployed[/] offline-{params.task_name} ({deployment_id}) "
            f"to work pool {pool!r}: "
            f"cron {params.schedule.cron!r} in {params.schedule.timezone}, one run at a time. "
            f"Start a worker: prefect worker start --pool {pool}"
        )
        return
    server = nullcontext(given) if given else local_server(paths)
    with server as api_url:
        os.environ["PREFECT_API_URL"] = api_url
        if list_:
            rows = asyncio.run(list_deployments())
            if as_json:
                typer.echo(json.dumps(rows, indent=1, default=str))
                return
            table = Table(title=f"Deployments · {api_url}")
            for column in ("name", "cron", "timezone", "next run", "last state", "limit"):
                table.add_column(column)
            for r in rows:
                table.add_row(
                    r["name"],
                    r["cron"] or "-",
                    r["timezone"],
                    r["next_run"] or "-",
                    r["last_state"] or "-",
                    str(r["concurrency_limit"] or "-"),
                )
            out = Console()
            (out if out.is_terminal else Console(width=200)).print(table)
            return
        from prefect import serve as prefect_serve

        deployment = offline_deployment(params, paths, overrides)
        console.print(
            f"[bold]Scheduling[/] {deployment.name}: cron {params.schedule.cron!r} in "
            f"{params.schedule.timezone}, one run at a time ({params.schedule.overlap}); "
            f"Prefect API {api_url}. Ctrl-C stops."
        )
        watch = monitor_deployment(params, paths, overrides)
        if watch is not None:
            console.print(
                f"[bold]Monitoring[/] {watch.name}: cron {params.schedule.monitor_cron!r}; "
                f"an alarm starts {deployment.name} (monitor.cooldown_h "
                f"{params.monitor.cooldown_h:g} between alarm-started runs)"
            )
        served = [deployment, *([watch] if watch is not None else [])]
        prefect_serve(*served, print_starting_message=False)


@app.command()
def monitor(
    project: ProjectOption = None,
    model: Annotated[
        str | None, typer.Option(help="Registered model to monitor (default: the served one).")
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option("-P", "--param", help="Override a param: section.key=value (repeatable)."),
    ] = None,
) -> None:
    """One monitoring pass now: drift and live quality of every window of the prediction
    log not yet tested, against each version's reference profile; a report in MLflow, the
    rows in the `monitoring` table. Exit code 3 when a signal alarms."""
    from loopline.config import load_params

    paths = _paths(project)
    overrides = list(param or [])
    try:
        load_params(paths.params_file, overrides)
    except LooplineError as error:
        _fail(error)
    from pipelines.monitoring import monitoring_flow

    _temporary_prefect(paths)
    try:
        summary = monitoring_flow(root=str(paths.root), overrides=overrides, model=model)
    except LooplineError as error:
        _fail(error)
    for decided in summary.get("deployments") or []:
        _print_deployment(decided)
    for note in summary["notes"]:
        console.print(f"[yellow]note:[/] {note}")
    for alarm in summary["alarms"]:
        console.print(
            f"[bold red]alarm:[/] {alarm['signal']} v{alarm['model_version']} window "
            f"{alarm['window_start']} ({alarm['note'] or 'over threshold'})"
        )
    console.print(
        f"{summary['windows']} windows tested of {summary['predictions']} predictions; "
        f"report in MLflow run {summary['mlflow_run_id']}"
    )
    typer.echo(json.dumps(summary, default=str))
    if summary["alarm"]:
        raise typer.Exit(code=3)


def _temporary_prefect(paths) -> None:
    """Start the temporary Prefect API a flow run in this process uses (unless
    `PREFECT_API_URL` names a server), stopped however the process ends, SIGTERM included;
    first stop one a SIGKILL'ed command left behind."""
    from pipelines.temporary_server import start_temporary_api, stop_orphans

    for pid in stop_orphans(paths):
        console.print(f"stopped the temporary Prefect server a killed run left (pid {pid})")
    start_temporary_api(paths)


def _print_deployment(decided: dict | None) -> None:
    if not decided:
        return
    deployment, verdict = decided["deployment"], decided["verdict"]
    colour = {"promote": "green", "rollback": "red"}.get(verdict["decision"], "yellow")
    model = f"{decided['model']} " if decided.get("model") else ""
    console.print(
        f"[bold {colour}]{model}{deployment['mode']} v{deployment['version']}: "
        f"{verdict['decision']}[/] ({verdict['reason']})"
    )


def _who() -> str:
    """Who runs this command, for the histories ("by hand" when the user is unknown)."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "by hand"


@app.command("deploy")
def deploy_command(
    model: Annotated[str | None, typer.Argument(help="Registered model (default: served).")] = None,
    version: Annotated[str | None, typer.Argument(help="The challenger version.")] = None,
    shadow: Annotated[
        bool, typer.Option("--shadow", help="Mirror traffic to it; answers logged, not returned.")
    ] = False,
    canary: Annotated[
        float | None, typer.Option("--canary", help="Send this percent of keys to it (sticky).")
    ] = None,
    status: Annotated[bool, typer.Option("--status", help="The live comparison now.")] = False,
    decide: Annotated[bool, typer.Option("--decide", help="Run the policy now.")] = False,
    end: Annotated[bool, typer.Option("--end", help="End it; the champion stays.")] = False,
    reason: Annotated[str, typer.Option(help="Why (kept in the history).")] = "",
    project: ProjectOption = None,
) -> None:
    """Deploy a challenger beside the champion (--shadow or --canary PCT), see how it does
    (--status), let the policy decide now (--decide; `loopline monitor` does it too), or
    end it (--end). Services follow within their poll interval."""
    from loopline.config import load_params
    from loopline.watch import deploy

    paths = _paths(project)
    try:
        params = load_params(paths.params_file)
        name = model or params.served_model
        uri = paths.tracking_uri()
        if version is not None:
            if shadow == (canary is not None):
                raise LooplineError("choose one of --shadow or --canary PCT")
            mode = "shadow" if shadow else "canary"
            made = deploy.start(uri, name, version, mode, canary or 100.0, reason)
            console.print(f"[bold green]{name} v{version}[/] deployed: {mode} ({made.share:g}%)")
            typer.echo(made.to_json())
            return
        if end:
            running = deploy.current(uri, name)
            if running is None:
                raise LooplineError(f"{name!r} has no deployment running")
            ended = deploy.end(
                uri, name, running.id, "ended", reason or "ended by hand", {}, who=_who()
            )
            typer.echo(json.dumps(ended))
            return
        if model is None:  # every deployment of every model in the registry
            decided = deploy.decide_all(params, paths, act=decide)
        else:
            own = deploy.params_for_model(params, paths, name)
            found = deploy.decide(own, paths, decide)
            decided = [deploy.Decided(name, *found)] if found is not None else []
    except (LooplineError, ValueError) as error:
        _fail(error)
    if not decided:
        console.print(f"{model or 'the registry'}: no deployment running")
    for one in decided:
        _print_deployment(one.to_dict())
        for key, value in one.verdict.statistics.items():
            console.print(f"  {key}: {value}")
        for entry in deploy.history(uri, one.model)[-10:]:
            console.print(
                f"  {entry['when'][:19]} {entry['mode']} v{entry['version']}: "
                f"{entry['outcome']} ({entry['why']}, by {entry['who']})"
            )
    for one in decided:
        typer.echo(json.dumps(one.to_dict(), default=str))


def _replay_rows(params, task, root, warmup: int, limit: int | None):
    """Held-out rows of the source (the test share of a chronological split), each stream
    key's last `warmup` earlier readings first so answers start at the held-out period."""
    from loopline.offline.ingest import parsed_times, read_source
    from loopline.offline.split import chronological_split

    # Each stream key (say, a site) gets its own warm-up readings; a single series is one.
    keys = [c for c in task.key_columns if c != task.time_column]
    frame = read_source(params, task, root)
    # A file's times are text until validation types them: the replay orders by time.
    frame[task.time_column] = parsed_times(frame, task.time_column)
    frame = frame[frame[task.time_column].notna()]
    frame = chronological_split(frame, params.split, task.time_column)
    test_start = frame.loc[frame["split"] == "test", task.time_column].min()
    parts = []
    for _, rows in frame.groupby(keys, sort=True) if keys else [(None, frame)]:
        rows = rows.sort_values(task.time_column)
        before = rows[rows[task.time_column] < test_start].tail(warmup)
        parts += [before, rows[rows[task.time_column] >= test_start]]
    import pandas as pd

    replay = pd.concat(parts).sort_values([task.time_column, *keys])
    replay = replay[list(task.schema)]
    if limit:
        replay = replay.head(limit)
    for record in replay.to_dict("records"):
        record[task.time_column] = record[task.time_column].isoformat()
        yield record


def _streaming_task(paths, source: str | None):
    """The params and the bound task of a project whose task streams, time-ordered."""
    from loopline.config import load_params

    overrides = [f"ingest.source={source}"] if source else []
    params = load_params(paths.params_file, overrides)
    task = params.plugin
    if task.time_column is None or task.Serving.StreamLine is None:
        raise LooplineError(
            f"loopline stream replays a time-ordered source to a streaming service; task "
            f"{task.name} has no time column or does not stream"
        )
    return params, task


@app.command()
def stream(
    project: ProjectOption = None,
    url: Annotated[str, typer.Option(help="The service's base URL.")] = "http://127.0.0.1:3000",
    source: Annotated[
        str | None, typer.Option(help="Source to replay (default: params ingest.source).")
    ] = None,
    rate: Annotated[
        str, typer.Option(help="Readings per second: 20/s, 600/min, 0 = max.")
    ] = "20/s",
    limit: Annotated[int | None, typer.Option(help="Stop after this many readings.")] = None,
    warmup: Annotated[
        int | None,
        typer.Option(
            help="Readings per stream key before the held-out part (default: the history "
            "the task's evaluation reads, enough for a first answer)."
        ),
    ] = None,
) -> None:
    """Replay the source's held-out readings to a running service; print live answers."""
    import asyncio

    from loopline.online.stream_client import is_answer, parse_rate, stream_readings

    paths = _paths(project)
    try:
        per_second = parse_rate(rate)
    except ValueError as error:
        _fail(error)
    out = Console()
    out = out if out.is_terminal else Console(width=200)

    try:
        params, task = _streaming_task(paths, source)
        serving = task.Serving(task, params)

        def show(answer: dict) -> None:
            if "error" in answer:
                out.print(f"[red]line {answer.get('line')}: {answer['error']}[/]")
            elif is_answer(answer):
                out.print(serving.summary(answer), markup=False, highlight=False)
            else:
                out.print(f"[yellow]line {answer.get('line')}: {answer.get('notice')}[/]")

        if warmup is None:
            warmup = task.history_steps(params)
        rows = _replay_rows(params, task, paths.root, warmup, limit)
        stats = asyncio.run(stream_readings(url, rows, show, rate=per_second))
    except (LooplineError, ValueError) as error:
        _fail(error)
    versions = sorted(set(stats.versions), key=lambda v: int(v) if v.isdigit() else 0)
    console.print(
        f"sent {stats.sent} readings · {stats.answers} {serving.answers_are} · "
        f"{stats.errors} errors · model versions {', '.join(versions) or '-'}"
    )


@app.command()
def explain(
    file: Annotated[
        Path, typer.Argument(help="A file the model reads (say, an image).", exists=True)
    ],
    model: Annotated[str | None, typer.Option(help="Registered model (default: params).")] = None,
    version: Annotated[
        str | None, typer.Option(help="Model version (default: the champion).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Where to write the picture (PNG).")
    ] = None,
    project: ProjectOption = None,
) -> None:
    """Why a model answers what it does for FILE: its answer and a picture of what the
    answer rests on (for an image: red pixels support it, blue ones speak against it)."""
    import tempfile

    from mlflow.exceptions import MlflowException

    from loopline import registry
    from loopline.config import load_params
    from loopline.offline.export import embedded_spec, onnx_session
    from loopline.tasks.base import Explaining

    paths = _paths(project)
    try:
        params = load_params(paths.params_file)
    except LooplineError as error:
        _fail(error)
    task, model = params.plugin, model or params.model_name
    if not isinstance(task, Explaining):
        _fail(LooplineError(f"task {task.name} has no explanations (the Explaining ability)"))
    reference = f"models:/{model}/{version}" if version else f"models:/{model}@champion"
    with tempfile.TemporaryDirectory() as scratch:
        try:
            folder = registry.download_model(paths.tracking_uri(), reference, Path(scratch))
        except (MlflowException, OSError) as error:
            _fail(ValueError(f"cannot load {reference} from {paths.tracking_uri()}: {error}"))
        session = onnx_session(folder / "model.onnx")
    try:
        spec = embedded_spec(session, task)
        explained = task.explain_file(file.read_bytes(), session, spec, params)
    except ValueError as error:
        _fail(ValueError(f"{file}: {error}"))
    target = out or file.with_name(f"{file.stem}.saliency.png")
    if explained.picture is not None:
        target.write_bytes(explained.picture)
    answer = explained.answer
    console.print(f"[bold]{file.name}[/]: {answer} ({reference}); picture → {target}")
    typer.echo(json.dumps({**answer, "model": reference, "saliency_png": str(target)}))


@app.command()
def ui(
    host: Annotated[str | None, typer.Option(help="Address to listen on (ui.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (ui.port).")] = None,
    service: Annotated[
        list[str] | None,
        typer.Option("--service", help="A running service's URL to watch (repeatable)."),
    ] = None,
    project: ProjectOption = None,
) -> None:
    """The operator's web page: per registered model, the champion and services now, live
    predictions, monitoring, the history, and promote or roll back with a diff. Reading
    needs nothing; moves need LOOPLINE_UI_TOKEN (set it before starting)."""
    import os

    import uvicorn

    from loopline.app.ui.app import Project, create_app
    from loopline.config import load_params
    from loopline.online.models import use_service_deadlines

    use_service_deadlines()  # a registry that is down: a panel says so in seconds, not minutes
    paths = _paths(project)
    try:
        params = load_params(paths.params_file)
    except LooplineError as error:
        _fail(error)
    settings = params.ui
    token = os.environ.get("LOOPLINE_UI_TOKEN") or None
    if token is not None and len(token) < 16:
        _fail(LooplineError("LOOPLINE_UI_TOKEN must be 16 characters or more"))
    services = [*settings.services, *(service or [])]
    host, port = host or settings.host, port or settings.port
    app = create_app(Project(params, paths, token, services), host)
    actions = "on (token set)" if token else "off (set LOOPLINE_UI_TOKEN to allow them)"
    console.print(f"[bold green]loopline ui[/] on http://{host}:{port} · actions {actions}")
    uvicorn.run(app, host=host, port=port, log_level="warning")


@app.command()
def consume(
    stream: Annotated[str | None, typer.Option(help="Input stream (consume.stream).")] = None,
    name: Annotated[
        str | None,
        typer.Option(
            help="This consumer's name in the group (default: the host's name); "
            "a restarted consumer answers what it left unacknowledged first."
        ),
    ] = None,
    idle_exit: Annotated[
        float | None,
        typer.Option("--idle-exit", help="Stop after this many seconds without a message."),
    ] = None,
    project: ProjectOption = None,
) -> None:
    """Answer a Redis stream's messages (one JSON stream line each, as `/stream` takes)
    with the champion, one answer per message in `<stream>:answers`, malformed ones in
    `<stream>:dead`; exactly once across crashes and restarts."""
    import signal
    import socket
    import threading
    import time

    from loopline.config import load_params
    from loopline.online.consume import open_consumer
    from loopline.online.models import use_service_deadlines

    use_service_deadlines()
    paths = _paths(project)
    try:
        params = load_params(paths.params_file, [f"consume.stream={stream}"] if stream else [])
        consumer, champion = open_consumer(params, paths, name or socket.gethostname())
    except (LooplineError, ValueError) as error:
        _fail(error)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    settings = params.consume
    console.print(f"[bold green]consuming[/] {settings.stream} as {consumer.source.consumer}")
    started = last_seen = last_print = time.monotonic()
    while not stop.is_set():
        consumer.use(champion.current(params.serve.poll_interval_s))
        if consumer.round_through_outages():
            last_seen = time.monotonic()
        elif idle_exit is not None and time.monotonic() - last_seen > idle_exit:
            break
        if time.monotonic() - last_print > 5:
            last_print = time.monotonic()
            rate = consumer.counts["messages"] / (last_print - started)
            console.print(f"  {consumer.counts} · {rate:,.0f} messages/s")
    consumer.ledger.close()
    typer.echo(json.dumps(consumer.counts))


def _move(
    project, model: str, version: str | None, reason: str, action: str, retry: bool = False
) -> None:
    import contextlib

    from loopline import registry
    from loopline.config import load_params
    from loopline.online.models import service_check

    paths = _paths(project)
    uri = paths.tracking_uri()
    # A rollback is how an operator gets off a bad champion: it must not land on a version
    # nobody served yet that no service will load.
    check = None
    if action.startswith("rollback"):
        # The project's params bind its task: the check then reads a team's own models too.
        with contextlib.suppress(LooplineError):
            load_params(paths.params_file)
        check = service_check(uri)
    try:
        entry = registry.move_champion(
            uri, model, version, reason=reason, action=action, retry=retry, check=check
        )
    except LooplineError as error:
        _fail(error)
    for passed in entry.get("skipped", []):
        found = "fails a service's load check (now marked refused)"
        found = found if passed.get("checked") else "refused by a service"
        console.print(f"skipped v{passed['version']}: {found}: {passed['why']}")
    if entry.get("retried"):
        console.print(f"cleared the refusal mark of v{entry['to']}: services will try it again")
    if entry.get("noop"):
        console.print(f"[bold]{model}[/] v{entry['to']} is already champion: nothing recorded")
    else:
        before = f"v{entry['from']}" if entry["from"] else "(none)"
        console.print(f"[bold green]{model}[/] champion {before} → v{entry['to']} ({action})")
    typer.echo(json.dumps(entry))


RetryOption = Annotated[
    bool,
    typer.Option(
        "--retry",
        help="The version was refused by a service and has been repaired: clear its mark "
        "and make it champion again (services try it once more).",
    ),
]


@app.command()
def rollback(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    to: Annotated[str | None, typer.Option("--to", help="Version to roll back to.")] = None,
    reason: Annotated[str, typer.Option(help="Why (kept in the history).")] = "manual rollback",
    retry: RetryOption = False,
    project: ProjectOption = None,
) -> None:
    """Move `champion` back to the previous champion (or --to VERSION), skipping versions a
    service refused or that fail a service's load check (run here first: a failing version
    is marked refused); services follow."""
    if retry and to is None:
        _fail(LooplineError("--retry needs --to VERSION: the version that was repaired"))
    _move(project, model, to, reason, "rollback_to" if to else "rollback", retry)


@app.command()
def promote(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="Version to make champion.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the history).")] = "manual promotion",
    retry: RetryOption = False,
    project: ProjectOption = None,
) -> None:
    """Make any registered version the champion; services follow within their poll interval.
    A version a service refused needs --retry once it is repaired."""
    _move(project, model, version, reason, "promote", retry)


@app.command()
def pretrain(
    project: ProjectOption = None,
    param: Annotated[
        list[str] | None,
        typer.Option("-P", "--param", help="Override a param: section.key=value (repeatable)."),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, or cuda where a GPU is present.")] = "cpu",
) -> None:
    """Pretrain the task's model on the snapshot's rows, labels unused (where the task can,
    say masked tokens of a text) and register it as model `<model>-encoder`; the printed
    override fine-tunes from it."""
    import shutil
    import tempfile
    import time

    from loopline import registry
    from loopline.config import load_params
    from loopline.offline.datastore import SnapshotStore
    from loopline.tasks.base import Pretraining

    paths = _paths(project)
    try:
        params = load_params(paths.params_file, list(param or []))
    except LooplineError as error:
        _fail(error)
    task = params.plugin
    if not isinstance(task, Pretraining):
        _fail(LooplineError(f"task {task.name} has no pretraining (the Pretraining ability)"))
    store = SnapshotStore(paths.snapshots(task.name))
    rows = store.load()
    if rows.empty:
        _fail(LooplineError(f"no {task.name} snapshot yet: run `loopline run` first"))
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
            _fail(error)
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


label_app = typer.Typer(
    help="Labels from people: export the batch active learning picks, import the answers.",
    no_args_is_help=True,
)
app.add_typer(label_app, name="label")


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
    from loopline.config import load_params
    from loopline.offline.human_labels import export_batch, label_studio_config

    paths = _paths(project)
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
        _fail(error)
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
    from loopline.config import load_params
    from loopline.offline import datastore
    from loopline.offline.human_labels import LabelStore, import_answers, known_texts

    paths = _paths(project)
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
        _fail(error)
    console.print(
        f"[bold green]imported:[/] {report.added} new label(s), {report.unchanged} already "
        f"held, {report.unanswered} row(s) left unanswered; {report.total_labels} human "
        f"labels in {store.path.relative_to(paths.root)}"
        + (f" (data version {version})" if version else "")
    )
    console.print("The next `loopline run` trains on them.")


def main() -> None:  # pragma: no cover - console entry for `python -m loopline.app.cli`
    sys.exit(app())


if __name__ == "__main__":
    main()
