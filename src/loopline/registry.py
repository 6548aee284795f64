"""Registry: publish models to MLflow, move aliases, keep the champion history.

Aliases, not stages: every new version gets `challenger`; only the gate (or an operator's
promote / rollback) moves `champion`. Each champion move is appended to the history as its
own registered-model tag keyed by time and a random suffix, so concurrent writers never
overwrite each other's entries.
"""

from __future__ import annotations

import getpass
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loopline.errors import RegistryError

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_PREFIX = "champion_history/"
TAG = "loopline."  # prefix of every tag Loopline writes
PUBLISH_COMPLETE = f"{TAG}publish_complete"  # set last, once the gate has been carried out


def client(tracking_uri: str):
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
    """Log the ONNX file to run `run_id`, register it, tag the version, alias it challenger."""
    import mlflow
    import onnx

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
    version = str(info.registered_model_version)
    mlflow_client = client(tracking_uri)
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(name, version, key, value)
    mlflow_client.set_registered_model_alias(name, CHALLENGER, version)
    return Published(name, version, f"models:/{name}/{version}", info.run_id)


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


def move_champion(
    tracking_uri: str, name: str, version: str, reason: str, who: str | None = None
) -> dict[str, Any]:
    """Point `champion` at `version` and append the move to the history."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client(tracking_uri)
    try:
        mlflow_client.get_model_version(name, str(version))
    except MlflowException:
        raise RegistryError(f"model {name!r} has no version {version!r}") from None
    previous = champion_version(tracking_uri, name)
    entry = {
        "when": datetime.now(UTC).isoformat(),
        "who": who or getpass.getuser(),
        "from": str(previous.version) if previous is not None else None,
        "to": str(version),
        "why": reason,
    }
    mlflow_client.set_registered_model_alias(name, CHAMPION, str(version))
    key = f"{HISTORY_PREFIX}{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}"
    mlflow_client.set_registered_model_tag(name, key, json.dumps(entry))
    return entry


def champion_history(tracking_uri: str, name: str) -> list[dict[str, Any]]:
    """Every champion move, oldest first."""
    model = client(tracking_uri).get_registered_model(name)
    keys = sorted(k for k in model.tags if k.startswith(HISTORY_PREFIX))
    return [json.loads(model.tags[k]) for k in keys]


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


def load_champion(tracking_uri: str, name: str, dest: Path):
    """(onnx session, feature spec, version) of the current champion, or None."""
    from loopline.export import embedded_spec, onnx_session

    version = champion_version(tracking_uri, name)
    if version is None:
        return None
    folder = download_model(tracking_uri, f"models:/{name}/{version.version}", dest)
    session = onnx_session(folder / "model.onnx")
    return session, embedded_spec(session), version
