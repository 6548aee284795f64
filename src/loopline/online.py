"""The online process: load a registered model, turn live readings into its inputs, forecast.

Everything here is plain Python on plain data so the BentoML service (`serving/`) stays a thin
shell: it resolves the alias, holds a `LoadedModel`, and calls `forecast_windows` and
`StreamWindows`. Features are computed by the task's own `add_features` and `normalize` from
the feature spec saved with the model, the very code the offline process trained with.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loopline.errors import LooplineError
from loopline.features import FeatureSpec, normalize
from loopline.registry import GOLDEN_FILE

log = logging.getLogger(__name__)


class ModelLoadError(LooplineError):
    """A registered version could not be loaded or failed its check: it is not served."""


class ModelDownloadError(ModelLoadError):
    """A version's files could not be fetched (may be transient: worth trying again)."""


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

    @property
    def lags(self) -> int:
        return max(getattr(self.spec.options, "lags", None) or [0])

    @property
    def required_readings(self) -> int:
        """Consecutive readings one forecast needs: the window plus the longest lag."""
        return self.spec.window + self.lags

    def describe(self) -> dict[str, Any]:
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
            **self._inputs(),
        }

    def _inputs(self) -> dict[str, Any]:
        """What a request must hold for this model."""
        options = self.spec.options
        if "image_size" in options:  # an image model
            return {
                "labels": options.get("labels"),
                "image_size": options["image_size"],
                "channels": options.get("channels"),
            }
        if "vocabulary" in options:  # a text model
            return {
                "labels": options.get("labels"),
                "max_length": options.get("max_length"),
                "vocabulary_size": len(json.loads(options["vocabulary"])["tokens"]),
            }
        return {
            "window": self.spec.window,
            "required_readings": self.required_readings,
            "horizon": self.spec.horizon,
            "freq": self.spec.freq,
            "sites": sorted(options.get("sites", {})),
        }


def check_model(session, spec: FeatureSpec, folder: Path, atol: float = 1e-2) -> float:
    """Warm the session up and check it before it serves; returns the max |diff| checked.

    With the golden batch published beside the model, its outputs must match the ones
    recorded at export (a corrupt or mismatched file fails here, not on a live request);
    without one, a batch of zeros must give finite forecasts of the right shape.
    """
    from loopline.export import run_onnx

    golden = folder / GOLDEN_FILE
    if golden.is_file():
        with np.load(golden) as stored:
            x, expected = stored["x"], stored["y"]
    else:
        x = np.zeros((2, spec.window, len(spec.feature_columns)), np.float32)
        expected = None
    try:
        actual = run_onnx(session, x)
        run_onnx(session, x[:1])  # batch 1 too: the exporter's batch-1 trap shows up here
    except Exception as error:
        raise ModelLoadError(f"the model failed on its check batch: {error}") from None
    shape = expected.shape if expected is not None else (len(x), spec.horizon)
    if actual.shape != shape:
        raise ModelLoadError(f"the model returned shape {actual.shape}, expected {shape}")
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
    from loopline.export import embedded_spec

    session = build_session(folder / "model.onnx", threads, prefer_gpu)
    try:
        spec = embedded_spec(session)
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
        raise RegistryUnavailable(f"registry {tracking_uri}: {error.message}") from None
    except Exception as error:  # connection refused, timeouts: whatever the transport raises
        raise RegistryUnavailable(f"registry {tracking_uri}: {error}") from None


def load_version(
    tracking_uri: str,
    model_version,
    alias: str,
    cache: Path,
    threads: int,
    prefer_gpu: bool = True,
) -> LoadedModel:
    """Download a registered version into `cache` and load it (see `load_model_folder`)."""
    from loopline.registry import download_model

    name, version = model_version.name, str(model_version.version)
    cache.mkdir(parents=True, exist_ok=True)
    dest = Path(tempfile.mkdtemp(prefix=f"{name}-v{version}-", dir=cache))
    try:
        try:
            folder = download_model(tracking_uri, f"models:/{name}/{version}", dest)
        except Exception as error:  # whatever the artifact store's transport raises
            message = f"{name} v{version} could not be downloaded: {error}"
            raise ModelDownloadError(message) from None
        try:
            return load_model_folder(
                folder, name, version, alias, threads, model_version.tags, prefer_gpu
            )
        except ModelLoadError as error:
            raise ModelLoadError(f"{name} v{version}: {error}") from None
        except Exception as error:
            raise ModelLoadError(f"{name} v{version} failed to load: {error}") from None
    finally:
        # The session holds the model in memory; the files are not needed after loading.
        shutil.rmtree(dest, ignore_errors=True)


# --------------------------------------------------------------------------- inference


@dataclass(frozen=True)
class Window:
    """Consecutive raw readings of one site, oldest first, ending at the forecast origin.

    `rows` holds one numpy array per raw column (timestamps as naive-UTC datetime64[ns]),
    not a DataFrame: a frame per window costs more than the model call itself.
    """

    site_id: str
    rows: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(next(iter(self.rows.values()))) if self.rows else 0

    def tail(self, n: int) -> Window:
        return Window(self.site_id, {c: v[-n:] for c, v in self.rows.items()})

    def last(self) -> dict[str, Any]:
        """The newest reading, as plain JSON-ready values."""
        return {c: plain_value(v[-1]) for c, v in self.rows.items()}


def plain_value(value: Any) -> Any:
    if isinstance(value, np.datetime64):
        return pd.Timestamp(value).tz_localize("UTC").isoformat()
    return value.item() if isinstance(value, np.generic) else value


@dataclass(frozen=True)
class Forecast:
    site_id: str
    origin: pd.Timestamp
    times: list[pd.Timestamp]
    values: np.ndarray
    version: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "site_id": self.site_id,
            "origin": self.origin.isoformat(),
            "model_version": self.version,
            "timestamps": [t.isoformat() for t in self.times],
            "forecast": [round(float(v), 3) for v in self.values],
        }


def window_inputs(task, spec: FeatureSpec, windows: list[Window], window: int) -> np.ndarray:
    """Model inputs (N, window, features) for raw windows, in one feature pass.

    Each window becomes its own group (`<site>#<i>`) located where its site is, so lags
    never reach into another window, and the task's `add_features` runs once for the batch.
    """
    sites = spec.options.sites
    located = {}
    for i, item in enumerate(windows):
        if item.site_id not in sites:
            raise ValueError(f"site {item.site_id!r} has no location in the model's feature spec")
        located[f"{item.site_id}#{i}"] = sites[item.site_id]
    n_rows = len(windows[0])
    # One frame for the whole batch, built from concatenated columns.
    columns = {c: np.concatenate([w.rows[c] for w in windows]) for c in windows[0].rows}
    columns[spec.group_column] = np.repeat(list(located), n_rows)
    batch_spec = replace(spec, options=replace(spec.options, sites=located))
    features = task.add_features(pd.DataFrame(columns), batch_spec)
    x = normalize(features, spec)
    # add_features sorts by (group, time); groups sort as strings, so index them by key.
    order = {key: n for n, key in enumerate(sorted(located))}
    x = x.reshape(len(windows), n_rows, -1)[:, -window:]
    ranks = [order[f"{w.site_id}#{i}"] for i, w in enumerate(windows)]
    return np.ascontiguousarray(x[ranks])


def forecast_windows(task, model: LoadedModel, windows: list[Window]) -> list[Forecast]:
    """Forecast each window (all of `model.required_readings` rows) with the ONNX session."""
    from loopline.export import run_onnx

    if not windows:
        return []
    spec, required = model.spec, model.required_readings
    if any(len(w) < required for w in windows):
        raise ValueError(f"v{model.version} needs {required} consecutive readings per window")
    windows = [w.tail(required) for w in windows]
    x = window_inputs(task, spec, windows, spec.window)
    finite = np.isfinite(x).all(axis=(1, 2))
    if not finite.all():
        bad = sorted({w.site_id for w, ok in zip(windows, finite, strict=True) if not ok})
        raise ValueError(f"windows of {bad} give non-finite features (missing or bad values)")
    values = run_onnx(model.session, x)
    step = pd.Timedelta(spec.freq)
    out = []
    for item, row in zip(windows, values, strict=True):
        origin = pd.Timestamp(item.rows[spec.time_column][-1]).tz_localize("UTC")
        times = [origin + step * h for h in range(1, spec.horizon + 1)]
        out.append(Forecast(item.site_id, origin, times, row, model.version))
    return out


def window_problem(times: list[datetime], freq: str, required: int) -> str | None:
    """Why readings at `times` (oldest first) are not a complete window (None when they are).

    Plain datetimes, not pandas: this runs on every request before it is batched.
    """
    if len(times) < required:
        return f"needs {required} consecutive readings, got {len(times)}"
    step = pd.Timedelta(freq).to_pytimedelta()
    for n, (before, after) in enumerate(itertools.pairwise(times), start=1):
        if after <= before:
            return f"readings must be in strictly increasing time order (reading {n})"
        if after - before != step:
            return f"readings must be consecutive, one every {freq} (gap before reading {n})"
    return None


# --------------------------------------------------------------------------- streaming


@dataclass
class StreamEvent:
    """One line of a stream's answer: a forecast, an error about a reading, or a notice."""

    kind: str  # "forecast" | "error" | "notice"
    payload: dict[str, Any]


class StreamWindows:
    """Per-site window state of one stream: readings in, complete windows out, per site in
    order. A reading that is malformed, duplicated or out of order gets an error and is not
    kept; a gap restarts that site's window (with a notice), because a window must be
    consecutive readings."""

    def __init__(self, task, spec: FeatureSpec, required: int):
        self.task, self.spec, self.required = task, spec, required
        self.schema = task.schema
        self.step = pd.Timedelta(spec.freq)
        self.buffers: dict[str, deque[dict[str, Any]]] = {}
        self.last: dict[str, pd.Timestamp] = {}

    def resize(self, spec: FeatureSpec, required: int) -> None:
        """Follow a hot-swapped model: keep the readings, change the window length."""
        self.spec, self.required, self.step = spec, required, pd.Timedelta(spec.freq)
        for site, buffer in self.buffers.items():
            self.buffers[site] = deque(buffer, maxlen=required)

    def push(self, reading: dict[str, Any], line: int) -> tuple[Window | None, StreamEvent | None]:
        """Add one parsed reading; returns (a complete window or None, an event or None)."""
        site = reading[self.spec.group_column]
        time = pd.Timestamp(reading[self.spec.time_column])
        last = self.last.get(site)
        if last is not None and time == last:
            message = f"duplicate reading for site {site!r} at {time.isoformat()}"
            return None, error_event(line, message, site)
        if last is not None and time < last:
            return None, error_event(
                line,
                f"out of order: site {site!r} reading at {time.isoformat()} is before the "
                f"last one at {last.isoformat()}",
                site,
            )
        buffer = self.buffers.setdefault(site, deque(maxlen=self.required))
        notice = None
        if last is not None and time - last != self.step:
            notice = StreamEvent(
                "notice",
                {
                    "line": line,
                    "site_id": site,
                    "notice": f"gap of {time - last} before {time.isoformat()}: "
                    f"the window restarts and needs {self.required} consecutive readings",
                },
            )
            buffer.clear()
        buffer.append(reading)
        self.last[site] = time
        if len(buffer) < self.required:
            return None, notice
        columns = {
            column: [r[column] for r in buffer]
            for column in self.schema
            if column != self.spec.group_column
        }
        return Window(site, typed_columns(columns, self.schema)), notice


def error_event(line: int, message: str, site: str | None = None) -> StreamEvent:
    payload: dict[str, Any] = {"line": line, "error": message}
    if site is not None:
        payload["site_id"] = site
    return StreamEvent("error", payload)


def readings_columns(
    readings: list[Mapping[str, Any]], schema: Mapping[str, str]
) -> dict[str, np.ndarray]:
    """Raw readings (dicts) as typed column arrays of the task's columns present."""
    present = [c for c in schema if not readings or c in readings[0]]
    return typed_columns({c: [r[c] for r in readings] for c in present}, schema)


def typed_columns(
    columns: Mapping[str, list[Any]], schema: Mapping[str, str]
) -> dict[str, np.ndarray]:
    """Column lists as numpy arrays; times become naive-UTC datetime64[ns]."""
    typed = {}
    for column, values in columns.items():
        kind = schema.get(column)
        if kind == "datetime":
            typed[column] = utc_datetime64(values)
        elif kind == "float":
            typed[column] = np.asarray(values, dtype=np.float64)
        else:
            typed[column] = np.asarray(values, dtype=object)
    return typed


def utc_datetime64(values: list[Any]) -> np.ndarray:
    """Datetimes (aware: converted; naive: taken as UTC) or ISO strings → datetime64[ns]."""
    if values and all(isinstance(v, datetime) for v in values):
        naive = [v.astimezone(UTC).replace(tzinfo=None) if v.tzinfo else v for v in values]
        return np.array(naive, dtype="datetime64[ns]")
    return pd.to_datetime(values, utc=True).tz_convert(None).to_numpy(dtype="datetime64[ns]")
