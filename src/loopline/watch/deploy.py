"""Deliver safely: a challenger version in shadow or canary beside the champion, judged live
by a policy that promotes it or ends it.

The deployment lives in the registry (a registered-model tag), so every replica of the
service routes alike and a restarted one picks it up. Routing is sticky: a key (a site, a
request's id) goes to the challenger when its hash under the deployment's id falls in the
canary's share. In shadow mode the challenger answers every item off the response path; in
canary mode it answers its share, and the champion answers the same items off the path
("control"), so the policy compares both on the same keys and times either way.

The policy (`judge`) reads the prediction log since the deployment began: errors, p99
latency, agreement, and live quality where truth has joined, with a paired test. It runs
in one place (`loopline monitor`, its scheduled deployment, or `loopline deploy --decide`),
under the champion lock, and decides a deployment once: it promotes through the same
`move_champion` as the CLI (the statistics go into the champion history) or ends the
deployment, and either way appends the decision to the deployment history.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from loopline import registry
from loopline.config import apply_overrides
from loopline.errors import ChampionMoved, LooplineError, RegistryError
from loopline.offline.gate import diebold_mariano, paired_bootstrap
from loopline.offline.human_labels import LabelStore
from loopline.online.live import stored_since
from loopline.online.predlog import predictions_table, upgrade_predictions
from loopline.params import load_params, parse_params
from loopline.tasks import BUILTIN
from loopline.watch.monitor import load_version

TAG = "loopline.deploy"  # the registered model's tag holding the running deployment (JSON)
HISTORY_PREFIX = "deploy_history/"
CHALLENGER_ROLES = ("shadow", "canary")
CHAMPION_ROLES = ("champion", "control")

Mode = Literal["shadow", "canary"]


@dataclass(frozen=True)
class Deployment:
    """A challenger version deployed beside the champion."""

    id: str
    version: str
    mode: Mode
    share: float  # canary: percent of keys (0-100); shadow: 100
    champion: str  # the champion when it began (the policy compares against it)
    since: str
    by: str
    why: str

    def routes(self, key: Any) -> bool:
        """Whether `key`'s items go to the challenger (sticky: the same key, the same way,
        in every replica)."""
        if self.mode == "shadow":
            return False
        digest = hashlib.sha256(f"{self.id}:{key}".encode()).digest()
        return int.from_bytes(digest[:8], "big") % 10_000 < self.share * 100

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def current(tracking_uri: str, name: str) -> Deployment | None:
    """The running deployment of `name`, None when there is none."""
    raw = registry.model_tags(tracking_uri, name).get(TAG)
    return Deployment(**json.loads(raw)) if raw else None


def start(
    tracking_uri: str,
    name: str,
    version: str,
    mode: Mode,
    share: float = 100.0,
    reason: str = "",
    who: str | None = None,
    deployment_id: str | None = None,
) -> Deployment:
    """Deploy `version` as the challenger (replacing a running deployment, whose end is
    recorded). Refused: an unknown or refused version, the champion itself."""
    if mode == "canary" and not 0 < share <= 100:
        raise RegistryError(f"a canary's share is a percent in (0, 100], got {share:g}")
    with _lock(tracking_uri, name):
        champion = registry.champion_version(tracking_uri, name)
        if champion is None:
            raise RegistryError(f"{name!r} has no champion to deploy a challenger beside")
        target = registry.existing_version(tracking_uri, name, str(version))
        mark = registry.refusal(target)
        if mark is not None:
            raise RegistryError(registry.describe_refusal(name, str(version), mark))
        if str(version) == str(champion.version):
            raise RegistryError(f"v{version} is the champion already")
        running = current(tracking_uri, name)
        if running is not None:
            _record(tracking_uri, name, running, "replaced", f"v{version} deployed instead", {})
        deployment = Deployment(
            id=deployment_id or uuid.uuid4().hex[:12],
            version=str(version),
            mode=mode,
            share=100.0 if mode == "shadow" else float(share),
            champion=str(champion.version),
            since=datetime.now(UTC).isoformat(),
            by=who or getpass.getuser(),
            why=reason,
        )
        registry.set_model_tag(tracking_uri, name, TAG, deployment.to_json())
        _record(tracking_uri, name, deployment, "started", reason, {})
    return deployment


def end(
    tracking_uri: str,
    name: str,
    deployment_id: str,
    outcome: str,
    reason: str,
    statistics: dict[str, Any],
    who: str | None = None,
) -> dict[str, Any] | None:
    """End deployment `deployment_id` if it is still the running one ("promoted": the
    challenger becomes champion through `move_champion`, with the statistics; else the
    champion stays). Returns the history entry, None when it had ended already."""
    with _lock(tracking_uri, name):
        running = current(tracking_uri, name)
        if running is None or running.id != deployment_id:
            return None  # decided already (another replica or policy pass)
        if outcome == "promoted":
            try:
                registry.move_champion(
                    tracking_uri,
                    name,
                    running.version,
                    reason=f"{running.mode} deployment {running.id}: {reason}",
                    who=who or "deploy policy",
                    gate=statistics,
                    expect=running.champion,
                    via="deploy policy",
                )
            except ChampionMoved as error:
                outcome, reason = "ended", f"not promoted: {error}"
        registry.delete_model_tag(tracking_uri, name, TAG)
        return _record(tracking_uri, name, running, outcome, reason, statistics, who)


def _lock(tracking_uri: str, name: str):
    """Deployment changes are serialised apart from champion moves (a promotion takes the
    champion lock inside this one)."""
    return registry.champion_lock(tracking_uri, f"{name}.deploy")


def _record(tracking_uri, name, deployment, outcome, reason, statistics, who=None) -> dict:
    now = datetime.now(UTC)
    entry = {
        "when": now.isoformat(),
        "deployment": deployment.id,
        "version": deployment.version,
        "mode": deployment.mode,
        "share": deployment.share,
        "champion": deployment.champion,
        "outcome": outcome,
        "why": reason,
        "who": who or (deployment.by if outcome == "started" else "deploy policy"),
        "statistics": statistics,
    }
    key = f"{HISTORY_PREFIX}{now:%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:6]}"
    registry.set_model_tag(tracking_uri, name, key, json.dumps(entry, default=str))
    return entry


def history(tracking_uri: str, name: str) -> list[dict[str, Any]]:
    """Every deployment's start and end, oldest first."""
    tags = registry.model_tags(tracking_uri, name)
    return [json.loads(tags[k]) for k in sorted(k for k in tags if k.startswith(HISTORY_PREFIX))]


# ---------------------------------------------------------------------- the policy


@dataclass(frozen=True)
class Verdict:
    """What the policy makes of a deployment now, and why (its statistics as well)."""

    decision: Literal["promote", "rollback", "wait"]
    reason: str
    statistics: dict[str, Any] = field(default_factory=dict)


def read_records(engine: Any, name: str, since: str) -> pd.DataFrame:
    """The prediction log's records of `name` logged since `since`, with their roles."""
    from sqlalchemy import MetaData, inspect, select

    columns = ["model_version", "role", "api", "key", "origin", "output", "latency_ms"]
    if not inspect(engine).has_table("predictions"):  # no service has answered yet
        return pd.DataFrame(columns=[*columns, "logged_at"])
    upgrade_predictions(engine)
    t = predictions_table(MetaData())
    query = (
        select(*(t.c[c] for c in columns), t.c.logged_at)
        .where(t.c.model_name == name, t.c.logged_at >= datetime.fromisoformat(since))
        .order_by(t.c.id)
    )
    with engine.connect() as connection:
        result = connection.execute(query)
        return pd.DataFrame(result.fetchall(), columns=[*columns, "logged_at"])


def is_error(output: Any) -> bool:
    return isinstance(output, dict) and "error" in output


def paired(records: pd.DataFrame, deployment: Deployment) -> pd.DataFrame:
    """One row per item both sides answered (same api, key and origin): the champion's
    columns suffixed `_a`, the challenger's `_b`; the latest answer of each side."""

    def side(roles, version):
        part = records[records["role"].isin(roles) & (records["model_version"] == version)]
        part = part.assign(origin=part["origin"].astype(str))
        return part.drop_duplicates(["api", "key", "origin"], keep="last")

    champion = side(CHAMPION_ROLES, deployment.champion)
    challenger = side(CHALLENGER_ROLES, deployment.version)
    return champion.merge(challenger, on=["api", "key", "origin"], suffixes=("_a", "_b"))


def agreement(task: Any, spec: Any, a: list[Any], b: list[Any], tolerance: float) -> float:
    """The share of pairs whose watched outputs agree: the same label, or numbers within
    `tolerance` of each other (relative)."""
    left, right = task.monitor_outputs(a, spec), task.monitor_outputs(b, spec)
    if left.columns.empty or not len(left):
        return float("nan")
    x, y = left.iloc[:, 0], right.iloc[:, 0]
    if x.dtype.kind in "fiub":
        x, y = x.to_numpy(float), y.to_numpy(float)
        scale = np.maximum(np.abs(x) + np.abs(y), 1e-9)
        return float(np.mean(np.abs(x - y) <= tolerance * scale))
    return float(np.mean(x.astype(str).to_numpy() == y.astype(str).to_numpy()))


def judge(
    records: pd.DataFrame,
    deployment: Deployment,
    task: Any,
    spec: Any,
    rows: pd.DataFrame,
    labels: pd.DataFrame,
    settings: Any,
) -> Verdict:
    """The policy on the records since the deployment began (`settings`: `deploy:`)."""
    pairs = paired(records, deployment)
    stats: dict[str, Any] = {"mode": deployment.mode, "pairs": len(pairs)}
    # Errors over every answer of each side, judged before pairing: a challenger's error
    # answers pair with nothing, and a challenger that fails every item must not wait.
    sides = {
        side: records[records["role"].isin(roles) & (records["model_version"] == version)]
        for side, roles, version in (
            ("a", CHAMPION_ROLES, deployment.champion),
            ("b", CHALLENGER_ROLES, deployment.version),
        )
    }
    errors_a, errors_b = (
        float(np.mean([is_error(o) for o in sides[k]["output"]])) if len(sides[k]) else 0.0
        for k in ("a", "b")
    )
    stats.update(
        answers_challenger=len(sides["b"]),
        error_rate_champion=errors_a,
        error_rate_challenger=errors_b,
    )
    if (
        len(sides["b"]) >= settings.min_observations
        and errors_b > errors_a + settings.max_error_increase
    ):
        return Verdict(
            "rollback",
            f"errors {errors_b:.2%} of {len(sides['b'])} challenger answers against the "
            f"champion's {errors_a:.2%}",
            stats,
        )
    if len(pairs) < settings.min_observations:
        return Verdict("wait", f"{len(pairs)} of {settings.min_observations} paired answers", stats)
    good = pairs[
        [
            not (is_error(a) or is_error(b))
            for a, b in zip(pairs["output_a"], pairs["output_b"], strict=True)
        ]
    ]
    p99_a = float(np.nanpercentile(good["latency_ms_a"].astype(float), 99))
    p99_b = float(np.nanpercentile(good["latency_ms_b"].astype(float), 99))
    stats.update(p99_ms_champion=p99_a, p99_ms_challenger=p99_b)
    stats["agreement"] = agreement(
        task, spec, list(good["output_a"]), list(good["output_b"]), settings.agreement_tolerance
    )
    if p99_b > settings.max_latency_ratio * max(p99_a, settings.latency_floor_ms):
        return Verdict(
            "rollback", f"p99 {p99_b:.1f} ms against the champion's {p99_a:.1f} ms", stats
        )
    return _quality_verdict(good, task, spec, rows, labels, settings, stats)


def _quality_verdict(good, task, spec, rows, labels, settings, stats) -> Verdict:
    """Live quality on the pairs whose truth is known: a one-sided Diebold–Mariano test
    each way on the per-item losses (rows in time order; the task's overlap of neighbouring
    rows allowed: `Task.loss_dependence`)."""
    good = good.assign(origin=pd.to_datetime(good["origin"], utc=True, errors="coerce"))
    good = good.sort_values(["origin", "key"], kind="stable").reset_index(drop=True)
    losses = []
    for side in ("a", "b"):
        frame = pd.DataFrame(
            {"key": good["key"], "origin": good["origin"], "output": good[f"output_{side}"]}
        )
        losses.append(np.asarray(task.live_losses(frame, rows, labels, spec), float))
    known = np.isfinite(losses[0]) & np.isfinite(losses[1])
    a, b = losses[0][known], losses[1][known]
    stats.update(truth=int(known.sum()), quality=task.quality_name(spec))
    if known.sum() < settings.min_observations:
        return Verdict(
            "wait", f"truth for {int(known.sum())} of {settings.min_observations} pairs", stats
        )
    overlap = max(int(task.loss_dependence(spec)), 1)
    _, p_better = diebold_mariano(b, a, overlap)
    statistic, p_worse = diebold_mariano(a, b, overlap)
    difference, interval, _ = paired_bootstrap(
        (b, a),
        lambda x, y, axis=-1: np.mean(x, axis=axis) - np.mean(y, axis=axis),
        False,
        settings.alpha,
        0,
        999,
    )
    stats.update(
        method="diebold_mariano",
        statistic=-statistic,
        alpha=settings.alpha,
        p_value_better=p_better,
        p_value_worse=p_worse,
        loss_difference=difference,
        interval=list(interval),
        rows=int(known.sum()),
        champion_quality=float(task.quality_figure(a)),
        challenger_quality=float(task.quality_figure(b)),
    )
    name = stats["quality"]
    figures = (
        f"live {name} {stats['challenger_quality']:.4g} against {stats['champion_quality']:.4g}"
    )
    if p_worse < settings.alpha:
        return Verdict("rollback", f"worse: {figures} (p {p_worse:.3g})", stats)
    if p_better < settings.alpha:
        return Verdict("promote", f"better: {figures} (p {p_better:.3g})", stats)
    if known.sum() >= settings.max_observations:
        return Verdict(
            "rollback", f"no difference after {int(known.sum())} pairs: {figures}", stats
        )
    return Verdict("wait", f"no significant difference yet: {figures}", stats)


def deployed_models(tracking_uri: str) -> list[str]:
    """Every registered model with a deployment running (the policy judges them all)."""
    return registry.model_names(tracking_uri, tagged=TAG)


def task_reference(tracking_uri: str, name: str, params: Any) -> str:
    """The task reference of model `name`: the task its newest version's lineage names
    (params' own reference when that is params' task), else params' task. Raises
    RegistryError for a model of a task of its own that params does not name."""
    try:
        latest = registry.latest_version(tracking_uri, name)
    except Exception:  # the registry may be away: whoever asked reports that itself
        latest = None
    task = (latest.tags or {}).get("loopline.task") if latest is not None else None
    if task is None and name in BUILTIN:
        task = name  # a built-in task's default model name is the task's name
    if task is None or task == params.task_name:
        return params.task
    if task in BUILTIN:
        return task
    raise RegistryError(
        f"model {name} is a {task} model and params.yaml's task is {params.task_name}: set "
        f"task: (or LOOPLINE_TASK) to the reference of task {task} to serve or judge it"
    )


def params_for_model(params: Any, paths: Any, name: str) -> Any:
    """`params` for judging or serving model `name`: its own task, `serve.model` set."""
    reference = task_reference(paths.tracking_uri(), name, params)
    if reference == params.task:
        raw = apply_overrides(params.to_dict(), [f"serve.model={name}"])
        return parse_params(raw, origin=str(paths.params_file), root=paths.root)
    return load_params(paths.params_file, [f"task={reference}", f"serve.model={name}"])


@dataclass(frozen=True)
class Decided:
    """What the policy made of one model's deployment (`entry`: the history entry of a
    promote or rollback it carried out, else {})."""

    model: str
    deployment: Deployment
    verdict: Verdict
    entry: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide_all(params: Any, paths: Any, act: bool = True) -> list[Decided]:
    """Judge the running deployment of every model in the registry (`decide`); a model
    whose task params cannot name is reported as waiting, with why."""
    uri, judged = paths.tracking_uri(), []
    for name in deployed_models(uri):
        try:
            own = params_for_model(params, paths, name)
        except LooplineError as error:  # its task, or params for it, cannot be had here
            found = current(uri, name)
            if found is not None:
                judged.append(Decided(name, found, Verdict("wait", f"not judged: {error}"), {}))
            continue
        decided = decide(own, paths, act)
        if decided is not None:
            judged.append(Decided(name, *decided))
    return judged


def decide(params: Any, paths: Any, act: bool = True) -> tuple[Deployment, Verdict, dict] | None:
    """Judge the project's running deployment (None when there is none) and, with `act`,
    carry out a promote or rollback: returns (deployment, verdict, history entry or {})."""

    from sqlalchemy import create_engine

    uri, name = paths.tracking_uri(), params.served_model
    deployment = current(uri, name)
    if deployment is None:
        return None
    task = params.plugin
    mark = registry.refusal(registry.existing_version(uri, name, deployment.version))
    if mark is not None:
        verdict = Verdict("rollback", f"a service refused v{deployment.version}: {mark['why']}")
    else:
        engine = create_engine(paths.prediction_log_url(params))
        try:
            records = read_records(engine, name, deployment.since)
        finally:
            engine.dispose()
        with tempfile.TemporaryDirectory(prefix="loopline-deploy-") as scratch:
            spec = load_version(uri, name, deployment.version, task, Path(scratch)).spec
        # The truth of the judged answers: rows from their earliest event time on.
        columns = list(task.schema_for(params))
        url = paths.prediction_log_url(params)
        rows = stored_since(url, task, columns, records["origin"])
        labels = LabelStore(paths.labels(params.task_name)).load()  # people's labels
        verdict = judge(records, deployment, task, spec, rows, labels, params.deploy)
    entry: dict = {}
    if act and verdict.decision != "wait":
        outcome = "promoted" if verdict.decision == "promote" else "rolled_back"
        entry = end(uri, name, deployment.id, outcome, verdict.reason, verdict.statistics) or {}
    return deployment, verdict, entry
