"""Serving and delivery: serve the champion (`serve`), deploy a challenger beside it
(`deploy`), replay held-out readings to a service (`stream`), answer a broker's stream
(`consume`), and the operator's page (`ui`)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import typer

from loopline.app.cli.common import (
    ProjectOption,
    console,
    fail,
    print_deployment,
    project_paths,
    who,
    wide_console,
)
from loopline.errors import LooplineError
from loopline.health import LOOPBACK_HOSTS
from loopline.redaction import redact


def served_task(paths, params) -> str:
    """The task reference of the model `serve.model` names: `LOOPLINE_TASK` when set, else
    the task its registered versions' lineage names (`deploy.task_reference`)."""

    from loopline.watch.deploy import task_reference

    return os.environ.get("LOOPLINE_TASK") or task_reference(
        paths.tracking_uri(), params.served_model, params
    )


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

    from loopline.config import serve_env_overrides
    from loopline.params import load_params

    paths = project_paths(project)
    chosen = {"model": model, "alias": alias, "workers": workers, "poll_interval_s": poll_interval}
    overrides = [f"serve.{k}={v}" for k, v in chosen.items() if v is not None]
    try:
        params = load_params(paths.params_file, serve_env_overrides(dict(os.environ)) + overrides)
    except LooplineError as error:
        fail(error)
    env = service_env(params, paths, port)
    try:
        env["LOOPLINE_TASK"] = served_task(paths, params)
    except LooplineError as error:
        fail(error)
    bentoml = shutil.which("bentoml") or str(Path(sys.executable).with_name("bentoml"))
    service_dir = Path(__file__).resolve().parents[4]
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


def service_env(params, paths, port: int) -> dict[str, str]:
    """The environment `bentoml serve` runs the service in (its settings, project, state
    folders, registry deadlines); this process takes the deadlines too."""
    from loopline.config import SERVE_ENV_PREFIX
    from loopline.online.models import use_service_deadlines

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
    # Short registry deadlines for this process's own look-up and for the service it becomes.
    os.environ.update({k: env[k] for k in use_service_deadlines(env)})
    return env


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
    from loopline.params import load_params
    from loopline.watch import deploy

    paths = project_paths(project)
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
                uri, name, running.id, "ended", reason or "ended by hand", {}, who=who()
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
        fail(error)
    if not decided:
        console.print(f"{model or 'the registry'}: no deployment running")
    print_decided(decided, uri)


def print_decided(decided: list, uri: str) -> None:
    """Each deployment's verdict, its statistics and its last moves; then each as JSON."""
    from loopline.watch import deploy

    for one in decided:
        print_deployment(one.to_dict())
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
    import pandas as pd

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
    replay = pd.concat(parts).sort_values([task.time_column, *keys])
    replay = replay[list(task.schema)]
    if limit:
        replay = replay.head(limit)
    for record in replay.to_dict("records"):
        record[task.time_column] = record[task.time_column].isoformat()
        yield record


def _streaming_task(paths, source: str | None):
    """The params and the bound task of a project whose task streams, time-ordered."""
    from loopline.params import load_params

    overrides = [f"ingest.source={source}"] if source else []
    params = load_params(paths.params_file, overrides)
    task = params.plugin
    if task.time_column is None or task.Serving.StreamLine is None:
        raise LooplineError(
            f"loopline stream replays a time-ordered source to a streaming service; task "
            f"{task.name} has no time column or does not stream"
        )
    return params, task


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

    from loopline.online.stream_client import is_answer, parse_rate, stream_readings

    paths = project_paths(project)
    try:
        per_second = parse_rate(rate)
    except ValueError as error:
        fail(error)
    out = wide_console()

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
        fail(error)
    versions = sorted(set(stats.versions), key=lambda v: int(v) if v.isdigit() else 0)
    console.print(
        f"sent {stats.sent} readings · {stats.answers} {serving.answers_are} · "
        f"{stats.errors} errors · model versions {', '.join(versions) or '-'}"
    )


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

    import uvicorn

    from loopline.app.ui.app import Project, create_app
    from loopline.online.models import use_service_deadlines
    from loopline.params import load_params

    use_service_deadlines()  # a registry that is down: a panel says so in seconds, not minutes
    paths = project_paths(project)
    try:
        params = load_params(paths.params_file)
    except LooplineError as error:
        fail(error)
    settings = params.ui
    token = os.environ.get("LOOPLINE_UI_TOKEN") or None
    if token is not None and len(token) < 16:
        fail(LooplineError("LOOPLINE_UI_TOKEN must be 16 characters or more"))
    services = [*settings.services, *(service or [])]
    host, port = host or settings.host, port or settings.port
    app = create_app(Project(params, paths, token, services), host)
    actions = "on (token set)" if token else "off (set LOOPLINE_UI_TOKEN to allow them)"
    console.print(f"[bold green]loopline ui[/] on http://{host}:{port} · actions {actions}")
    uvicorn.run(app, host=host, port=port, log_level="warning")


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

    from loopline.online.consume import open_consumer
    from loopline.online.models import use_service_deadlines
    from loopline.params import load_params

    use_service_deadlines()
    paths = project_paths(project)
    try:
        params = load_params(paths.params_file, [f"consume.stream={stream}"] if stream else [])
        consumer, champion = open_consumer(params, paths, name or socket.gethostname())
    except (LooplineError, ValueError) as error:
        fail(error)
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
