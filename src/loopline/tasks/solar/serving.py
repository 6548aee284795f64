"""How the forecaster is served: raw readings in, forecasts out, per-site windows in streams.

Features are computed by the task's own `add_features` and `normalize` from the feature spec
saved with the model, the very code the offline process trained with. Windows are plain
numpy columns, not DataFrames: a frame per window costs more than the model call itself.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from loopline.features import FeatureSpec, normalize
from loopline.serving_adapter import Answer, BadInput, Serving, StreamState, items_from_rows

if TYPE_CHECKING:
    from loopline.online import LoadedModel

# ----------------------------------------------------------------------------- API types

Finite = Annotated[float, Field(allow_inf_nan=False)]


class Reading(BaseModel):
    """One measurement of a site: weather and the AC power it produced."""

    model_config = ConfigDict(extra="forbid")
    timestamp: datetime = Field(description="Start of the reading's interval; UTC if no zone")
    ghi: Finite = Field(description="Global horizontal irradiance, W/m²")
    dni: Finite = Field(description="Direct normal irradiance, W/m²")
    dhi: Finite = Field(description="Diffuse horizontal irradiance, W/m²")
    temp_air: Finite = Field(description="Air temperature, °C")
    wind_speed: Finite = Field(description="Wind speed, m/s")
    power_w: Finite = Field(description="AC power measured over the interval, W")


class SiteReading(Reading):
    """A reading in a stream: one NDJSON line."""

    site_id: str = Field(min_length=1)


class ForecastWindow(BaseModel):
    """Consecutive readings of one site, oldest first, ending at the forecast origin."""

    model_config = ConfigDict(extra="forbid")
    site_id: str = Field(min_length=1)
    readings: list[Reading] = Field(min_length=1)


# Times go out as the ISO strings the library already made: declared `date-time` for the
# OpenAPI spec, but not parsed back into datetimes only to be printed again.
IsoTime = Annotated[str, Field(json_schema_extra={"format": "date-time"})]


class ForecastOut(BaseModel):
    site_id: str
    origin: IsoTime = Field(description="Time of the last reading the forecast starts from")
    model_version: str
    timestamps: list[IsoTime]
    forecast: list[float] = Field(description="AC power, W, one per timestamp")


# ----------------------------------------------------------------------------- options


def site_locations(spec: FeatureSpec) -> dict[str, dict[str, float]]:
    """The sites the model knows, with their locations."""
    return spec.options.sites


def required_readings(spec: FeatureSpec) -> int:
    """Consecutive readings one forecast needs: the window plus the longest lag."""
    return spec.window + max(spec.options.lags or [0])


# ----------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class Window:
    """Consecutive raw readings of one site, oldest first, ending at the forecast origin.

    `rows` holds one numpy array per raw column (timestamps as naive-UTC datetime64[ns]).
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
    sites = site_locations(spec)
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
    """Forecast each window (all of the model's `required_readings` rows) with the ONNX
    session; raises ValueError when one cannot be forecast."""
    from loopline.export import run_onnx

    if not windows:
        return []
    spec = model.spec
    required = required_readings(spec)
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


def utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# ----------------------------------------------------------------------------- the adapter


class SolarServing(Serving):
    """`/predict` takes complete windows of raw readings; `/stream` takes readings one per
    line, keeps a window per site and forecasts as soon as one is complete."""

    Request: ClassVar[type[BaseModel]] = ForecastWindow
    Response: ClassVar[type[BaseModel]] = ForecastOut
    input_name: ClassVar[str] = "windows"
    StreamLine: ClassVar[type[BaseModel] | None] = SiteReading

    def check(self, item: ForecastWindow, model: LoadedModel) -> None:
        # The length a window needs depends on the model being served, which can change at
        # any poll: checked against the current one, per request, before batching.
        sites = site_locations(model.spec)
        if item.site_id not in sites:
            raise BadInput(
                f"site_id {item.site_id!r} is unknown to {model.name} v{model.version} "
                f"(known: {sorted(sites)})"
            )
        times = [utc(r.timestamp) for r in item.readings]
        problem = window_problem(times, model.spec.freq, required_readings(model.spec))
        if problem:
            raise BadInput(f"readings: {problem}")

    def predict(self, model: LoadedModel, items: list[ForecastWindow | Window]) -> list[Answer]:
        schema = self.task.schema
        windows = [
            item
            if isinstance(item, Window)
            else Window(item.site_id, readings_columns([r.__dict__ for r in item.readings], schema))
            for item in items
        ]
        try:
            forecasts = forecast_windows(self.task, model, windows)
        except ValueError as error:  # the batch's features: say which sites
            raise BadInput(str(error)) from None
        return [
            Answer(
                response=forecast.to_dict(),
                key=window.site_id,
                origin=forecast.origin.to_pydatetime(),
                inputs={
                    "readings": len(window),
                    "first": plain_value(window.rows[model.spec.time_column][0]),
                    "last": window.last(),
                },
                output=[round(float(v), 3) for v in forecast.values],
            )
            for window, forecast in zip(windows, forecasts, strict=True)
        ]

    def describe(self, model: LoadedModel) -> dict[str, Any]:
        spec = model.spec
        return {
            "window": spec.window,
            "required_readings": required_readings(spec),
            "horizon": spec.horizon,
            "freq": spec.freq,
            "sites": sorted(site_locations(spec)),
        }

    def open_stream(self, model: LoadedModel) -> StreamWindows:
        return StreamWindows(self, model)

    def requests(self, rows: pd.DataFrame, model: LoadedModel) -> list[ForecastWindow]:
        """A window ending at every reading with enough consecutive ones before it."""
        required = required_readings(model.spec)
        site_column, time_column = model.spec.group_column, model.spec.time_column
        windows = []
        for site, readings in rows.sort_values(time_column).groupby(site_column, sort=True):
            lines = items_from_rows(Reading, readings)
            windows += [
                ForecastWindow(site_id=site, readings=lines[end - required : end])
                for end in range(required, len(lines) + 1)
            ]
        return windows

    def stream_lines(self, rows: pd.DataFrame) -> list[SiteReading]:
        """One reading per line, in time order."""
        return items_from_rows(SiteReading, rows.sort_values(self.task.time_column))


class StreamWindows(StreamState):
    """Per-site window state of one stream: readings in, complete windows out, per site in
    order. A reading of an unknown site, duplicated or out of order gets an error and is not
    kept; a gap restarts that site's window (with a notice), because a window must be
    consecutive readings."""

    def __init__(self, serving: SolarServing, model: LoadedModel):
        super().__init__(serving, model)
        self.schema = serving.task.schema
        self.buffers: dict[str, deque[dict[str, Any]]] = {}
        self.last: dict[str, pd.Timestamp] = {}
        self._sizes(model)

    def _sizes(self, model: LoadedModel) -> None:
        self.spec, self.required = model.spec, required_readings(model.spec)
        self.step = pd.Timedelta(model.spec.freq)
        self.sites = site_locations(model.spec)

    def follow(self, model: LoadedModel) -> None:
        """Keep the readings, change the window length."""
        super().follow(model)
        self._sizes(model)
        for site, buffer in self.buffers.items():
            self.buffers[site] = deque(buffer, maxlen=self.required)

    def push(self, line: int, item: SiteReading):
        site = item.site_id
        if site not in self.sites:
            message = f"site_id {site!r} is unknown to {self.model.name} v{self.model.version}"
            return [], [{"error": message, "site_id": site}]
        reading = item.model_dump()
        time_column = self.spec.time_column
        reading[time_column] = utc(reading[time_column])
        time = pd.Timestamp(reading[time_column])
        last = self.last.get(site)
        if last is not None and time == last:
            message = f"duplicate reading for site {site!r} at {time.isoformat()}"
            return [], [{"error": message, "site_id": site}]
        if last is not None and time < last:
            message = (
                f"out of order: site {site!r} reading at {time.isoformat()} is before the "
                f"last one at {last.isoformat()}"
            )
            return [], [{"error": message, "site_id": site}]
        buffer = self.buffers.setdefault(site, deque(maxlen=self.required))
        events = []
        if last is not None and time - last != self.step:
            notice = (
                f"gap of {time - last} before {time.isoformat()}: the window restarts and "
                f"needs {self.required} consecutive readings"
            )
            events.append({"site_id": site, "notice": notice})
            buffer.clear()
        buffer.append(reading)
        self.last[site] = time
        if len(buffer) < self.required:
            return [], events
        columns = {
            column: [r[column] for r in buffer]
            for column in self.schema
            if column != self.spec.group_column
        }
        return [(line, Window(site, typed_columns(columns, self.schema)))], events
