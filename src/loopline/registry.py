"""Registry: publish models to MLflow, move aliases, keep the champion history.

Aliases, not stages: every new version gets `challenger`; only the gate (or an operator's
promote / rollback) moves `champion`. Each champion move is appended to the history as its
own registered-model tag keyed by time and a random suffix, so concurrent writers never
overwrite each other's entries.

Safe versions: a version a service refused (it failed to load or its golden-batch check) is
tagged `loopline.refused` with the reason. Promote and `rollback --to` refuse it, a plain
rollback skips it, and a service that starts on it serves the last good champion of the
history instead. A version nobody served yet (promoted while no service ran) carries no
mark: given a service's load check, a rollback runs it on each version before landing there
and marks the ones that fail it. "Repaired" is an operator's word, not a guess: after fixing
the cause (re-uploading the artifact, a new onnxruntime), `loopline promote NAME VERSION
--retry` clears the mark and makes services try the version again (a service that still
cannot load it marks it again). A move to the version that is already champion changes
nothing and records nothing.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import socket
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from loopline.errors import ChampionMoved, RegistryError, RegistryUnreachable

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_PREFIX = "champion_history/"
TAG = "loopline."  # prefix of every tag Loopline writes
PUBLISH_COMPLETE = f"{TAG}publish_complete"  # set last, once the gate has been carried out
METRIC_TAG = f"{TAG}metric."  # a version's scores, one tag each (`tagged_metrics`)
REFUSED = f"{TAG}refused"  # version tag: a service refused to serve it (JSON: why, by, at)


def client(tracking_uri: str):
    """The MLflow client of `tracking_uri`, for the registry and its runs. MLflow is
    imported here, not at the top: the CLI imports this module, and `--help` stays instant."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


@contextmanager
def using_tracking_uri(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (needed by `log_model`) at `tracking_uri` for a block only.

    `mlflow.set_tracking_uri` also writes `MLFLOW_TRACKING_URI` into the environment, which
    would then override every later project's own store in this process: restore both.
    """
    import mlflow
    from mlflow.tracking._tracking_service import utils

    saved_env = os.environ.get("MLFLOW_TRACKING_URI")
    saved = utils._tracking_uri
    mlflow.set_tracking_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved)
        if saved_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env


def ensure_experiment(tracking_uri: str, name: str, artifact_root: Path | None) -> str:
    """The experiment's id, created with an absolute artifact location for local stores."""
    mlflow_client = client(tracking_uri)
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = (artifact_root / name).resolve().as_uri() if artifact_root else None
    return mlflow_client.create_experiment(name, artifact_location=location)


@dataclass(frozen=True)
class Published:
    name: str
    version: str
    model_uri: str
    run_id: str


def log_onnx_model(
    tracking_uri: str,
    run_id: str,
    onnx_path: Path,
    name: str,
    extra_files: list[Path],
    metadata: dict[str, Any],
    signature: Any,
    tags: dict[str, str],
) -> Published:
    """Log the ONNX file to run `run_id`, register it, tag the version, alias it challenger.

    Once per run: when run `run_id` already registered a version (a publish cut off by a
    crash, then resumed), that version is tagged and returned instead of a second one.
    """
    import mlflow
    import onnx

    existing = version_from_run(tracking_uri, name, run_id)
    if existing is not None:
        return _tag_challenger(tracking_uri, name, existing, tags, run_id)
    with using_tracking_uri(tracking_uri), mlflow.start_run(run_id=run_id):
        info = mlflow.onnx.log_model(
            onnx.load(str(onnx_path)),
            name="model",
            registered_model_name=name,
            signature=signature,
            # Inferring requirements costs ~10 s and guesses; these are what loading needs.
            pip_requirements=["onnx", "onnxruntime"],
            save_as_external_data=False,
            onnx_execution_providers=["CPUExecutionProvider"],
            metadata=metadata,
            extra_files=[str(p) for p in extra_files],
            await_registration_for=60,
        )
    return _tag_challenger(tracking_uri, name, str(info.registered_model_version), tags, run_id)


def _tag_challenger(
    tracking_uri: str, name: str, version: str, tags: dict[str, str], run_id: str
) -> Published:
    mlflow_client = client(tracking_uri)
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(name, version, key, value)
    mlflow_client.set_registered_model_alias(name, CHALLENGER, version)
    return Published(name, version, f"models:/{name}/{version}", run_id)


def version_from_run(tracking_uri: str, name: str, run_id: str) -> str | None:
    """The version that pipeline run `run_id` registered under `name`, if any."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client(tracking_uri).search_model_versions(
            f"name='{name}' and run_id='{run_id}'"
        )
    except MlflowException:  # no such model yet
        return None
    return str(min(int(v.version) for v in versions)) if versions else None


GOLDEN_FILE = "golden.npz"  # export-time inputs and ONNX outputs, checked before serving


def write_model_files(
    folder: Path,
    spec: Any,
    params: dict[str, Any],
    golden,
    golden_out,
    profile: Any = None,
    membership: Any = None,
) -> list[Path]:
    """The files published beside every model: its feature spec, its params, the golden
    batch (inputs and the ONNX outputs at export) a service checks a version against, the
    reference profile the monitor compares live predictions with (`reference.py`) and the
    keys of its split sets (`membership.Membership`)."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    spec_file, params_file = folder / "feature_spec.json", folder / "params.json"
    spec_file.write_text(spec.to_json())
    params_file.write_text(json.dumps(params, indent=1))
    np.savez(folder / GOLDEN_FILE, x=golden, y=golden_out)
    files = [spec_file, params_file, folder / GOLDEN_FILE]
    files += [profile.write(folder)] if profile is not None else []
    return files + ([membership.write(folder)] if membership is not None else [])


def mark_published(tracking_uri: str, published: Published) -> None:
    """Record that publishing (registration, tags, the gate's alias moves) finished."""
    client(tracking_uri).set_model_version_tag(
        published.name, published.version, PUBLISH_COMPLETE, "true"
    )


def champion_version(tracking_uri: str, name: str) -> Any | None:
    """The ModelVersion carrying `champion`, or None (no model or no champion yet)."""
    from mlflow.exceptions import MlflowException

    try:
        return client(tracking_uri).get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def _lock_url(tracking_uri: str) -> str:
    """Where champion moves are serialised: `LOOPLINE_REGISTRY_LOCK_URL`, else the tracking
    store itself when it is a database, else a lock file on this machine."""
    explicit = os.environ.get("LOOPLINE_REGISTRY_LOCK_URL")
    if explicit:
        return explicit
    if tracking_uri.startswith(("sqlite:", "postgresql")):
        return tracking_uri
    digest = hashlib.sha256(tracking_uri.encode()).hexdigest()[:16]
    return (Path.home() / ".cache" / "loopline" / "locks" / f"{digest}.lock").as_uri()


@contextmanager
def champion_lock(tracking_uri: str, name: str, timeout_s: float = 120.0) -> Iterator[None]:
    """Hold the lock that makes a champion move (read, alias, history entry) atomic.

    MLflow has no compare-and-set, so two operators rolling back at once could both read the
    same champion and write a history that contradicts itself. A PostgreSQL store takes an
    advisory lock in that database; SQLite and file URLs take a lock file beside it.
    """
    url = _lock_url(tracking_uri)
    if url.startswith("postgresql"):
        from sqlalchemy import create_engine, text

        scheme, rest = url.split("://", 1)
        engine = create_engine(
            f"postgresql+psycopg://{rest}" if "+" not in scheme else url, poolclass=_null_pool()
        )
        key = int(hashlib.sha256(f"loopline:{name}".encode()).hexdigest()[:15], 16)
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                connection.commit()
        engine.dispose()
        return
    from filelock import FileLock, Timeout

    if url.startswith("sqlite:"):
        target = Path(url.split(":///", 1)[1]).with_suffix(f".{name}.champion.lock")
    elif url.startswith("file:"):
        target = Path(unquote(urlparse(url).path))
    else:
        raise RegistryError(
            f"cannot lock champion moves with {url!r}: set LOOPLINE_REGISTRY_LOCK_URL to a "
            "postgresql:// URL or a file:// path every operator can reach"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(target), timeout=timeout_s):
            yield
    except Timeout:
        raise RegistryError(
            f"another champion move on {name!r} held {target} for over {timeout_s:.0f} s"
        ) from None


def _null_pool():
    from sqlalchemy.pool import NullPool

    return NullPool


def _history_tags(mlflow_client, name: str) -> list[tuple[str, dict[str, Any]]]:
    model = mlflow_client.get_registered_model(name)
    keys = sorted(k for k in model.tags if k.startswith(HISTORY_PREFIX))
    return [(k, json.loads(model.tags[k])) for k in keys]


def champion_lineage(history: list[dict[str, Any]]) -> list[str]:
    """The champions a plain rollback walks back through, oldest first.

    Promotions (by the gate or an operator) and `rollback --to` push a version; a plain
    rollback pops the current one, so rolling back twice goes two champions back rather than
    flip-flopping between the last two.
    """
    stack: list[str] = []
    for entry in history:
        if entry.get("action") == "rollback":
            if stack:
                stack.pop()
            # A rollback that skipped refused versions went back more than one step.
            skipped = {str(s["version"]) for s in entry.get("skipped", [])}
            while stack and stack[-1] in skipped:
                stack.pop()
            if not stack or stack[-1] != entry["to"]:
                stack.append(entry["to"])
        else:
            stack.append(str(entry["to"]))
    return stack


def refusal(model_version: Any) -> dict[str, Any] | None:
    """The refusal mark of a ModelVersion (why, by, at), None when it has none."""
    return refusal_in(getattr(model_version, "tags", None) or {})


def refusal_in(tags: dict[str, str]) -> dict[str, Any] | None:
    """The refusal mark in a version's tags, None when it has none."""
    raw = tags.get(REFUSED)
    if not raw:
        return None
    try:
        mark = json.loads(raw)
    except ValueError:  # written by hand: the text is the reason
        return {"why": raw}
    return mark if isinstance(mark, dict) else {"why": str(mark)}


def mark_refused(
    tracking_uri: str, name: str, version: str, reason: str, by: str | None = None
) -> dict[str, Any]:
    """Tag `version` as refused by a service (so rollbacks skip it), with the reason."""
    return _mark_refused(client(tracking_uri), name, version, reason, by)


def _mark_refused(
    mlflow_client, name: str, version: str, reason: str, by: str | None = None
) -> dict[str, Any]:
    mark = {
        "why": reason,
        "by": by or _operator(),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    mlflow_client.set_model_version_tag(name, str(version), REFUSED, json.dumps(mark))
    return mark


def _operator() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def clear_refused(tracking_uri: str, name: str, version: str) -> dict[str, Any] | None:
    """Remove `version`'s refusal mark (it was repaired); returns the mark it had."""
    mlflow_client = client(tracking_uri)
    mark = refusal(mlflow_client.get_model_version(name, str(version)))
    if mark is not None:
        mlflow_client.delete_model_version_tag(name, str(version), REFUSED)
    return mark


def describe_refusal(name: str, version: str, mark: dict[str, Any]) -> str:
    by = ", ".join(str(mark[k]) for k in ("by", "at") if mark.get(k))
    return f"{name} v{version} was refused by a service{f' ({by})' if by else ''}: {mark['why']}"


def last_good_versions(tracking_uri: str, name: str, exclude: set[str]) -> list[Any]:
    """ModelVersions a service may fall back to, the most recent champion first, none
    refused or in `exclude`.

    Most recent in time, not along the rollback lineage: a service that was running when
    the champion moved to a version it refuses keeps serving the one it had, which is the
    champion before that move (say v3 after a rollback from v3 landed on a broken v4). A
    service that starts then must pick the same one, not an older one of the lineage.
    """
    from mlflow.exceptions import MlflowException

    mlflow_client = client(tracking_uri)
    history = [entry for _, entry in _history_tags(mlflow_client, name)]
    # "from" too: a champion set before the history began is named only there.
    named = [str(e[key]) for e in reversed(history) for key in ("to", "from") if e.get(key)]
    out, seen = [], set(exclude)
    for version in named:
        if version in seen:
            continue
        seen.add(version)
        try:
            found = mlflow_client.get_model_version(name, version)
        except MlflowException:  # deleted since
            continue
        if refusal(found) is None:
            out.append(found)
    return out


def move_champion(
    tracking_uri: str,
    name: str,
    version: str | None,
    reason: str,
    who: str | None = None,
    action: str = "promote",
    retry: bool = False,
    gate: dict[str, Any] | None = None,
    trigger: str | None = None,
    expect: str | None = None,
    via: str | None = None,
    check: Callable[[Any], str | None] | None = None,
) -> dict[str, Any]:
    """Point `champion` at `version` and append the move to the history, atomically.

    `action` is "promote", "rollback" (to the previous champion: `version` None) or
    "rollback_to" (to a given version). A plain rollback skips refused versions (the entry
    lists them under "skipped"); promote and rollback_to refuse one unless `retry` (the
    operator repaired it), which clears its mark first. Moving to the current champion
    changes and records nothing: the entry says "noop". Raises RegistryError for an unknown
    model or version, a refused one, or when there is nothing to roll back to. `gate` (the
    paired test that promoted it, when one did) and `trigger` (why the pipeline run that
    made it started, say a monitoring alarm) are written into the entry.

    `expect`: the champion the operator saw when deciding (the web page sends it); if
    another move landed since, raises `ChampionMoved` and moves nothing. `via`: where the
    move was made (say "loopline ui"), kept in the entry.

    `check`: a service's load check on a ModelVersion, returning why it fails (None: it
    passes). A plain rollback runs it on each candidate and skips the ones that fail; any
    other move refuses a target that fails it. Either way the version is marked refused.
    """
    from mlflow.exceptions import MlflowException

    mlflow_client = client(tracking_uri)
    try:
        mlflow_client.get_registered_model(name)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise RegistryError(f"no registered model {name!r} in {tracking_uri}") from None
        first = str(error).splitlines()[0][:300]
        raise RegistryUnreachable(
            f"the registry at {tracking_uri} did not answer; nothing moved: {first}"
        ) from None
    with champion_lock(tracking_uri, name):
        tags = _history_tags(mlflow_client, name)
        previous = champion_version(tracking_uri, name)
        current = str(previous.version) if previous is not None else None
        if expect is not None and str(expect) != (current or ""):
            raise ChampionMoved(
                f"the champion of {name!r} is {f'v{current}' if current else 'none'} now, "
                f"not v{expect} as you saw it: another move landed meanwhile (see the "
                "history); look again and decide"
            )
        skipped: list[dict[str, Any]] = []
        if action == "rollback":
            version, skipped = _rollback_target(mlflow_client, name, tags, current, check)
        if version is None:
            raise RegistryError("a version is needed to promote")
        target = _existing_version(mlflow_client, name, str(version))
        mark = refusal(target)
        if mark is not None and not retry:
            raise RegistryError(
                f"{describe_refusal(name, str(version), mark)}. Repair it, then run `loopline "
                f"promote {name} {version} --retry` to clear the mark and try it again"
            )
        if check is not None and action != "rollback" and str(version) != current:
            failed = _check(mlflow_client, name, target, check)
            if failed is not None:
                raise RegistryError(
                    f"{name} v{version} fails the check a service makes before serving it, "
                    f"so it is marked refused now; nothing moved: {failed['why']}"
                )
        if mark is not None:
            mlflow_client.delete_model_version_tag(name, str(version), REFUSED)
        entry = {
            "who": who or getpass.getuser(),
            "from": current,
            "to": str(version),
            "why": reason,
            "action": action,
        }
        if mark is not None:
            entry["retried"] = mark
        if gate is not None:
            entry["gate"] = gate
        if trigger:
            entry["trigger"] = trigger
        if via:
            entry["via"] = via
        if str(version) == current:
            return {**entry, "noop": True}  # nothing moved: nothing to record
        if skipped:
            entry["skipped"] = skipped
        now = _next_stamp(tags)
        entry = {"when": now.isoformat(), **entry}
        mlflow_client.set_registered_model_alias(name, CHAMPION, str(version))
        key = f"{HISTORY_PREFIX}{now:%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}"
        mlflow_client.set_registered_model_tag(name, key, json.dumps(entry))
    return entry


def _rollback_target(
    mlflow_client,
    name: str,
    tags: list[tuple[str, dict[str, Any]]],
    current: str | None,
    check: Callable[[Any], str | None] | None,
) -> tuple[str, list[dict[str, Any]]]:
    """The champion before `current` that no service refused and that passes `check` (when
    given), and the versions passed on the way with their refusal marks."""
    lineage = champion_lineage([entry for _, entry in tags])
    skipped: list[dict[str, Any]] = []
    while lineage:
        candidate = lineage.pop()
        if candidate == current:  # a recorded v1 -> v1 move (older histories) is no step back
            continue
        found = _existing_version(mlflow_client, name, candidate)
        mark = refusal(found)
        if mark is None and check is not None:
            mark = _check(mlflow_client, name, found, check)
        if mark is None:
            return candidate, skipped
        skipped.append({"version": candidate, **mark})
    passed = "; ".join(f"v{s['version']} refused: {s['why']}" for s in skipped)
    raise RegistryError(
        f"{name!r} has no earlier champion to roll back to (champion: v{current})"
        + (f"; skipped {passed}" if passed else "")
    )


def _check(
    mlflow_client, name: str, model_version: Any, check: Callable[[Any], str | None]
) -> dict[str, Any] | None:
    """Run a service's load check on a version nobody marked: None when it passes, else
    the refusal mark written now (flagged "checked": found by this move, not a service)."""
    why = check(model_version)
    if not why:
        return None
    by = f"rollback check by {_operator()}"
    return {
        **_mark_refused(mlflow_client, name, str(model_version.version), why, by),
        "checked": True,
    }


def _existing_version(mlflow_client, name: str, version: str):
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_model_version(name, version)
    except MlflowException:
        known = ", ".join(
            sorted(
                (str(v.version) for v in mlflow_client.search_model_versions(f"name='{name}'")),
                key=int,
            )
        )
        raise RegistryError(
            f"model {name!r} has no version {version!r} (versions: {known or 'none'})"
        ) from None


def _next_stamp(tags: list[tuple[str, dict[str, Any]]]) -> datetime:
    now = datetime.now(UTC)
    if tags:
        # Keys order the history: keep them increasing even if clocks disagree.
        stamp = tags[-1][0][len(HISTORY_PREFIX) :].split("-")[0]
        last = datetime.strptime(stamp, "%Y%m%dT%H%M%S%f")
        now = max(now, last.replace(tzinfo=UTC) + timedelta(microseconds=1))
    return now


def existing_version(tracking_uri: str, name: str, version: str):
    """The registered `version` of `name`; RegistryError naming the versions there are."""
    return _existing_version(client(tracking_uri), name, str(version))


def version_tags(tracking_uri: str, name: str, version: str) -> dict[str, str]:
    """One registered version's tags."""
    return client(tracking_uri).get_model_version(name, str(version)).tags or {}


def model_tags(tracking_uri: str, name: str) -> dict[str, str]:
    """A registered model's own tags (the champion history, a running deployment)."""
    return client(tracking_uri).get_registered_model(name).tags or {}


def set_model_tag(tracking_uri: str, name: str, key: str, value: str) -> None:
    client(tracking_uri).set_registered_model_tag(name, key, value)


def delete_model_tag(tracking_uri: str, name: str, key: str) -> None:
    client(tracking_uri).delete_registered_model_tag(name, key)


def model_names(tracking_uri: str, tagged: str | None = None) -> list[str]:
    """Every registered model's name, sorted (only those holding tag `tagged`, if given),
    read page by page."""
    mlflow_client, names, token = client(tracking_uri), [], None
    while True:
        page = mlflow_client.search_registered_models(max_results=100, page_token=token)
        names += [m.name for m in page if tagged is None or (m.tags or {}).get(tagged)]
        token = page.token
        if not token:
            return sorted(names)


def model_versions(tracking_uri: str, name: str) -> list[Any]:
    """Every registered version of `name`, newest first."""
    versions = client(tracking_uri).search_model_versions(f"name='{name}'")
    return sorted(versions, key=lambda v: int(v.version), reverse=True)


def registered_model(tracking_uri: str, name: str) -> tuple[Any, list[Any]] | None:
    """A registered model and its versions; None when no model has that name (any other
    failure of the store or its transport is raised as it is)."""
    from mlflow.exceptions import MlflowException  # (mlflow: see `client`)

    mlflow_client = client(tracking_uri)
    try:
        model = mlflow_client.get_registered_model(name)
    except MlflowException as error:
        if "RESOURCE_DOES_NOT_EXIST" in str(error.error_code):
            return None
        raise
    return model, list(mlflow_client.search_model_versions(f"name='{name}'"))


def tagged_runs(
    tracking_uri: str, experiment: str, tag: str, value: str, count: int
) -> tuple[str | None, list[Any]]:
    """(the experiment's id, its latest `count` runs tagged `tag=value`, newest first);
    (None, []) when there is no such experiment."""
    mlflow_client = client(tracking_uri)
    found = mlflow_client.get_experiment_by_name(experiment)
    if found is None:
        return None, []
    runs = mlflow_client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`{tag}` = '{value}'",
        order_by=["attributes.start_time DESC"],
        max_results=count,
    )
    return found.experiment_id, list(runs)


def champion_history(tracking_uri: str, name: str) -> list[dict[str, Any]]:
    """Every champion move, oldest first."""
    return [entry for _, entry in _history_tags(client(tracking_uri), name)]


def list_models(tracking_uri: str) -> list[dict[str, Any]]:
    """Registered versions with aliases, tags, key metrics and URIs (for `loopline models`)."""
    mlflow_client = client(tracking_uri)
    rows = []
    for model in mlflow_client.search_registered_models():
        # search_model_versions leaves `aliases` empty; the registered model has them right.
        aliases: dict[str, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        versions = mlflow_client.search_model_versions(f"name='{model.name}'")
        for mv in sorted(versions, key=lambda v: int(v.version)):
            tags = dict(mv.tags)
            rows.append(
                {
                    "name": model.name,
                    "version": str(mv.version),
                    "aliases": sorted(aliases.get(str(mv.version), [])),
                    "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).isoformat(
                        timespec="seconds"
                    ),
                    "run_id": mv.run_id,
                    "model_uri": f"models:/{model.name}/{mv.version}",
                    "source": mv.source,
                    "data_version": tags.get(f"{TAG}data_version"),
                    "git_commit": tags.get(f"{TAG}git_commit"),
                    "metrics": {
                        k.removeprefix(f"{TAG}metric."): float(v)
                        for k, v in tags.items()
                        if k.startswith(f"{TAG}metric.")
                    },
                    "tags": tags,
                }
            )
    return rows


def download_model(tracking_uri: str, model_uri: str, dest: Path) -> Path:
    """Download a registered model's folder (model.onnx, feature_spec.json, MLmodel)."""
    import mlflow

    # `models:/` URIs resolve through the fluent registry URI whatever is passed in
    # (MLflow 3.17 ignores `registry_uri=` there), so point it at this store for the call.
    with using_tracking_uri(tracking_uri):
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dest)))


def latest_version(tracking_uri: str, name: str) -> Any | None:
    """The newest registered version of `name`, or None."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client(tracking_uri).search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    return max(versions, key=lambda v: int(v.version)) if versions else None


def download_champion(tracking_uri: str, name: str, dest: Path) -> tuple[Path, Any] | None:
    """(the folder of the current champion's files, its version), or None."""
    version = champion_version(tracking_uri, name)
    if version is None:
        return None
    return download_model(tracking_uri, f"models:/{name}/{version.version}", dest), version


def load_champion(tracking_uri: str, name: str, dest: Path):
    """(onnx session, feature spec, version) of the current champion, or None."""
    downloaded = download_champion(tracking_uri, name, dest)
    if downloaded is None:
        return None
    folder, version = downloaded
    # Imported here: export pulls in torch, and the CLI's light commands read the registry.
    from loopline.onnx_runtime import embedded_spec, onnx_session

    session = onnx_session(folder / "model.onnx")
    return session, embedded_spec(session), version


def recent_models(tracking_uri: str, name: str, count: int, dest: Path) -> list[tuple[Any, Any]]:
    """(onnx session, feature spec) of the last `count` registered versions, newest first
    (say, a committee for active learning)."""
    from loopline.onnx_runtime import embedded_spec, onnx_session  # torch: see above

    with using_tracking_uri(tracking_uri):
        versions = client(tracking_uri).search_model_versions(f"name = '{name}'")
    newest = sorted(versions, key=lambda v: int(v.version), reverse=True)[:count]
    out = []
    for version in newest:
        folder = download_model(
            tracking_uri, f"models:/{name}/{version.version}", dest / f"v{version.version}"
        )
        session = onnx_session(folder / "model.onnx")
        out.append((session, embedded_spec(session)))
    return out


def register_file(
    tracking_uri: str, run_id: str, path: Path, name: str, tags: dict[str, str]
) -> str:
    """Log one file (say, a pretrained encoder) to run `run_id` and register it as a new
    version of model `name`; returns the version. Not an MLflow flavour: the file is the
    model, read back by the code that wrote it."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client(tracking_uri)
    mlflow_client.log_artifact(run_id, str(path), "model")
    source = f"{mlflow_client.get_run(run_id).info.artifact_uri}/model"
    try:
        mlflow_client.create_registered_model(name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = mlflow_client.create_model_version(name, source, run_id=run_id, tags=tags)
    return str(version.version)


def tagged_metrics(tags: Mapping[str, str]) -> dict[str, float]:
    """The metrics a version carries as `loopline.metric.<name>` tags (unreadable left out)."""
    metrics = {}
    for key, value in tags.items():
        if key.startswith(METRIC_TAG):
            try:
                metrics[key[len(METRIC_TAG) :]] = float(value)
            except ValueError:
                continue
    return metrics
