"""The online process's generic part: load a registered model, warm and check it, serve it.

Plain Python on plain data, so the BentoML service (`serving/`) stays a thin shell: it
resolves the alias, holds a `LoadedModel`, and hands requests to the task's serving adapter
(`loopline.online.adapter`), which turns them into model inputs and outputs into answers.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from loopline.errors import ConfigError, LooplineError
from loopline.offline.features import FeatureSpec
from loopline.onnx_runtime import embedded_spec, run_onnx
from loopline.redaction import redact
from loopline.registry import GOLDEN_FILE, download_model
from loopline.tasks import task_named

if TYPE_CHECKING:
    from loopline.online.adapter import Serving

log = logging.getLogger(__name__)


class ModelLoadError(LooplineError):
    """A registered version could not be loaded or failed its check: it is not served."""


class NotJudged(ModelLoadError):
    """The version could not be judged here, which says nothing against it: it is never
    marked refused for this."""


class ModelDownloadError(NotJudged):
    """A version's files could not be fetched (may be transient: worth trying again)."""


class TaskNotLoaded(NotJudged):
    """The version is of a task this process has not loaded (say, a team's own task read
    by a process without the project's params)."""


class RegistryUnavailable(LooplineError):
    """The registry could not be asked which version an alias points at."""


# --------------------------------------------------------------------------- model loading


def execution_providers(prefer_gpu: bool = True) -> list[str]:
    """onnxruntime providers in order of preference: CUDA first when it is usable."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = ["CUDAExecutionProvider"] if prefer_gpu else []
    return [p for p in wanted if p in available] + ["CPUExecutionProvider"]


def default_threads(workers: int) -> int:
    """Intra-op threads per worker: the cores shared out, so workers do not oversubscribe."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, workers))


def build_session(path: Path, threads: int, prefer_gpu: bool = True):
    """An onnxruntime session on the best provider; `get_providers()` says what it got
    (onnxruntime-gpu lists CUDA even where there is no GPU, then falls back to CPU)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(path), options, providers=execution_providers(prefer_gpu))
    except Exception as error:  # onnxruntime raises its own untyped errors for bad files
        raise ModelLoadError(f"{path.name} is not a loadable ONNX model: {error}") from None


@dataclass
class LoadedModel:
    """One registered version, ready to serve."""

    name: str
    version: str
    alias: str
    session: Any
    spec: FeatureSpec
    providers: list[str]
    loaded_at: str
    data_version: str | None = None
    git_commit: str | None = None
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    def describe(self, serving: Serving | None = None) -> dict[str, Any]:
        """What `/metadata` says of the model: its lineage, and what a request must hold
        for it (the task's serving adapter says)."""
        return {
            "name": self.name,
            "version": self.version,
            "alias": self.alias,
            "task": self.spec.task,
            "data_version": self.data_version,
            "git_commit": self.git_commit,
            "run_id": self.run_id,
            "metrics": self.metrics,
            "loaded_at": self.loaded_at,
            "providers": self.providers,
            **(serving.describe(self) if serving is not None else {}),
        }


def check_model(
    session, spec: FeatureSpec, folder: Path, atol: float = 1e-2, task: Any = None
) -> float:
    """Warm the session up and check it before it serves; returns the max |diff| checked.

    With the golden batch published beside the model, its outputs must match the ones
    recorded at export (a corrupt or mismatched file fails here, not on a live request);
    without one, the task's probe batch (`Task.probe_input`; `task` defaults to the one the
    spec names) must give finite outputs, one per row.
    """
    golden = folder / GOLDEN_FILE
    if golden.is_file():
        with np.load(golden) as stored:
            x, expected = stored["x"], stored["y"]
    else:
        x = (task or task_named(spec.task)).probe_input(spec)
        expected = None
    try:
        actual = run_onnx(session, x)
        run_onnx(session, x[:1])  # batch 1 too: the exporter's batch-1 trap shows up here
    except Exception as error:
        raise ModelLoadError(f"the model failed on its check batch: {error}") from None
    if expected is not None and actual.shape != expected.shape:
        raise ModelLoadError(f"the model returned shape {actual.shape}, expected {expected.shape}")
    if expected is None and (actual.ndim == 0 or len(actual) != len(x)):
        raise ModelLoadError(f"the model returned shape {actual.shape} for {len(x)} rows")
    if not np.isfinite(actual).all():
        raise ModelLoadError("the model returned non-finite values on its check batch")
    if expected is None:
        return 0.0
    diff = float(np.abs(actual - expected).max())
    if diff > atol:
        raise ModelLoadError(
            f"outputs differ from the ones recorded at export by {diff:.3g} (> {atol:g})"
        )
    return diff


def load_model_folder(
    folder: Path,
    name: str,
    version: str,
    alias: str,
    threads: int,
    tags: Mapping[str, str] | None = None,
    prefer_gpu: bool = True,
) -> LoadedModel:
    """Build, warm and check a session from a downloaded model folder."""
    session = build_session(folder / "model.onnx", threads, prefer_gpu)
    try:
        spec = embedded_spec(session)
    except ConfigError as error:  # its task, not its files
        raise TaskNotLoaded(str(error)) from None
    except ValueError as error:
        raise ModelLoadError(str(error)) from None
    atol = 1e-2
    params_file = folder / "extra_files" / "params.json"
    if params_file.is_file():
        atol = json.loads(params_file.read_text()).get("export", {}).get("parity_atol", atol)
    check_model(session, spec, folder / "extra_files", atol=atol)
    tags = dict(tags or {})
    return LoadedModel(
        name=name,
        version=str(version),
        alias=alias,
        session=session,
        spec=spec,
        providers=list(session.get_providers()),
        loaded_at=datetime.now(UTC).isoformat(timespec="seconds"),
        data_version=tags.get("loopline.data_version"),
        git_commit=tags.get("loopline.git_commit"),
        run_id=tags.get("loopline.pipeline_run_id"),
        metrics={
            k.removeprefix("loopline.metric."): float(v)
            for k, v in tags.items()
            if k.startswith("loopline.metric.")
        },
    )


# MLflow's HTTP client waits up to 120 s per request and retries 7 times with backoff
# (~4 minutes before a failure surfaces): right for a pipeline riding out a rate limit, an
# outage for a service whose polls must report a dead registry at the next poll. A service
# process sets these (an operator's own values in the environment win); the offline flow
# keeps MLflow's defaults. The names are MLflow 3's `mlflow.environment_variables`.
SERVICE_REGISTRY_DEADLINES = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",  # seconds per connect / read
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
}


def use_service_deadlines(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Give a service process's registry calls short deadlines (see above); returns the
    settings in force. MLflow reads them at each call, so this applies from the next one."""
    target = os.environ if environ is None else environ
    for key, value in SERVICE_REGISTRY_DEADLINES.items():
        target.setdefault(key, value)
    return {key: target[key] for key in SERVICE_REGISTRY_DEADLINES}


def resolve_alias(tracking_uri: str, name: str, alias: str):
    """The ModelVersion `alias` points at, None when there is none yet.

    Raises RegistryUnavailable when the registry cannot be asked (server down, DB locked):
    a caller that already serves a model keeps serving it.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return MlflowClient(tracking_uri, registry_uri=tracking_uri).get_model_version_by_alias(
            name, alias
        )
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise RegistryUnavailable(redact(f"registry {tracking_uri}: {error.message}")) from None
    except Exception as error:  # connection refused, timeouts: whatever the transport raises
        raise RegistryUnavailable(redact(f"registry {tracking_uri}: {error}")) from None


def load_version(
    tracking_uri: str,
    model_version,
    alias: str,
    cache: Path,
    threads: int,
    prefer_gpu: bool = True,
) -> LoadedModel:
    """Download a registered version into `cache` and load it (see `load_model_folder`)."""
    name, version = model_version.name, str(model_version.version)
    cache.mkdir(parents=True, exist_ok=True)
    dest = Path(tempfile.mkdtemp(prefix=f"{name}-v{version}-", dir=cache))
    try:
        try:
            folder = download_model(tracking_uri, f"models:/{name}/{version}", dest)
        except Exception as error:  # whatever the artifact store's transport raises
            message = redact(f"{name} v{version} could not be downloaded: {error}")
            raise ModelDownloadError(message) from None
        try:
            return load_model_folder(
                folder, name, version, alias, threads, model_version.tags, prefer_gpu
            )
        except ModelLoadError as error:
            raise type(error)(f"{name} v{version}: {error}") from None
        except Exception as error:
            raise ModelLoadError(f"{name} v{version} failed to load: {error}") from None
    finally:
        # The session holds the model in memory; the files are not needed after loading.
        shutil.rmtree(dest, ignore_errors=True)


def service_check(tracking_uri: str):
    """The check a service makes before serving a version (download, onnxruntime session,
    golden batch), as `registry.move_champion` runs it on a rollback's candidates: returns
    why a version fails, None when it passes. A download that fails says nothing against
    the version: the move is refused instead."""

    def check(model_version) -> str | None:
        with tempfile.TemporaryDirectory(prefix="loopline-check-") as cache:
            try:
                load_version(tracking_uri, model_version, "rollback", Path(cache), threads=1)
            except TaskNotLoaded as error:  # this process cannot judge it; a service can
                log.warning("%s: not checked here", error)
            except NotJudged as error:  # its files are away: so they are for the services
                raise LooplineError(f"{error}; it could not be checked: nothing moved") from None
            except ModelLoadError as error:
                return str(error)
        return None

    return check
