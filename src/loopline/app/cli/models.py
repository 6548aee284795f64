"""The registry's models: list them (`models`), see a version's split sets, move the
champion (`promote`, `rollback`), and explain an answer (`explain`)."""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from loopline import registry
from loopline.app.cli.common import (
    ProjectOption,
    console,
    fail,
    project_paths,
    wide_console,
)
from loopline.errors import LooplineError
from loopline.redaction import redact


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
    """Registered versions, a table per model: aliases, the model's own metrics, the
    gate, data version, commit."""
    paths = project_paths(project)
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
    for name in dict.fromkeys(r["name"] for r in rows):
        own = [r for r in rows if r["name"] == name]
        wide_console().print(versions_table(name, own, redact(uri)))
    if history:
        print_histories(histories)


def metric_columns(rows: list[dict], limit: int = 4) -> list[str]:
    """The metrics a model's versions carry, as columns: the test split's (`test_*`) where
    there are any, else all; the most common first, then as first seen; at most `limit`.
    Each task says its own (a classifier's accuracy, a regressor's RMSE), not a fixed list."""
    seen: dict[str, int] = {}
    for row in rows:
        for name in row["metrics"]:
            seen[name] = seen.get(name, 0) + 1
    tested = {name: count for name, count in seen.items() if name.startswith("test_")}
    chosen = tested or seen
    order = {name: i for i, name in enumerate(chosen)}
    return sorted(chosen, key=lambda name: (-chosen[name], order[name]))[:limit]


def versions_table(name: str, rows: list[dict], where: str) -> Table:
    """One model's versions: aliases, its own metrics, the gate, data version, commit."""
    metrics = metric_columns(rows)
    table = Table(title=f"{name} · {where}")
    for column in ("version", "aliases", "created", *metrics, "gate", "data version", "commit"):
        table.add_column(column.removeprefix("test_") if column in metrics else column)
    table.add_column("refused")
    for r in rows:
        table.add_row(
            r["version"],
            ", ".join(r["aliases"]),
            r["created"],
            *(f"{r['metrics'][m]:.4g}" if m in r["metrics"] else "-" for m in metrics),
            gate_cell(r["tags"]),
            (r["data_version"] or "-")[:12],
            (r["git_commit"] or "-")[:10],
            (registry.refusal_in(r["tags"]) or {}).get("why", "")[:40],
        )
    return table


def print_histories(histories: dict[str, list[dict]]) -> None:
    """Each model's champion moves: when, from and to, who, why, the gate's test, and
    what started the run."""
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
    from loopline.offline.membership import Membership
    from loopline.params import load_params

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
    from mlflow.exceptions import MlflowException

    from loopline.onnx_runtime import embedded_spec, onnx_session
    from loopline.params import load_params
    from loopline.tasks.base import Explaining

    paths = project_paths(project)
    try:
        params = load_params(paths.params_file)
    except LooplineError as error:
        fail(error)
    task, model = params.plugin, model or params.model_name
    if not isinstance(task, Explaining):
        fail(LooplineError(f"task {task.name} has no explanations (the Explaining ability)"))
    reference = f"models:/{model}/{version}" if version else f"models:/{model}@champion"
    with tempfile.TemporaryDirectory() as scratch:
        try:
            folder = registry.download_model(paths.tracking_uri(), reference, Path(scratch))
        except (MlflowException, OSError) as error:
            fail(ValueError(f"cannot load {reference} from {paths.tracking_uri()}: {error}"))
        session = onnx_session(folder / "model.onnx")
    try:
        spec = embedded_spec(session, task)
        explained = task.explain_file(file.read_bytes(), session, spec, params)
    except ValueError as error:
        fail(ValueError(f"{file}: {error}"))
    target = out or file.with_name(f"{file.stem}.saliency.png")
    if explained.picture is not None:
        target.write_bytes(explained.picture)
    answer = explained.answer
    console.print(f"[bold]{file.name}[/]: {answer} ({reference}); picture → {target}")
    typer.echo(json.dumps({**answer, "model": reference, "saliency_png": str(target)}))


def _move(
    project, model: str, version: str | None, reason: str, action: str, retry: bool = False
) -> None:
    from loopline.online.models import service_check
    from loopline.params import load_params

    paths = project_paths(project)
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
        fail(error)
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
        fail(LooplineError("--retry needs --to VERSION: the version that was repaired"))
    _move(project, model, to, reason, "rollback_to" if to else "rollback", retry)


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
