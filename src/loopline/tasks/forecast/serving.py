"""How a forecaster is served: raw readings in, forecasts out, per-series windows in streams.

Features are computed by the task's own `add_features` and `normalize` from the feature spec
saved with the model, the very code the offline process trained with. Windows are plain
numpy columns, not DataFrames: a frame per window costs more than the model call itself.

The request types name the task's own columns: `types_for` makes them from the family's
settings (solar declares its own, documented ones). Each answer names its series by the
entity column (`site_id` for solar); a single series has none.
"""

from __future__ import annotations

import itertools
from collections import defaultdict, deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, create_model

from loopline.features import FeatureSpec, normalize
from loopline.serving_adapter import (
    Answer,
    BadInput,
    Refused,
    Serving,
    StreamState,
    items_from_rows,
    nonfinite_items,
    refusal,
)

if TYPE_CHECKING:
    from loopline.online import LoadedModel

# ----------------------------------------------------------------------------- API types

Finite = Annotated[float, Field(allow_inf_nan=False)]
# Times go out as the ISO strings the library already made: declared `date-time` for the
# OpenAPI spec, but not parsed back into datetimes only to be printed again.
IsoTime = Annotated[str, Field(json_schema_extra={"format": "date-time"})]


@dataclass(frozen=True)
class ForecastTypes:
    """The API types of one forecaster: a reading, a stream line (a reading with its
    series), a window (`/predict` item) and an answer."""

    Reading: type[BaseModel]
    StreamLine: type[BaseModel]
    Window: type[BaseModel]
    Response: type[BaseModel]


def types_for(
    entity: str | None, time: str, target: str, covariates: list[str], title: str
) -> ForecastTypes:
    """API types naming a series' own columns (`title` prefixes their names)."""
    strict = ConfigDict(extra="forbid")
    values = {c: (Finite, Field(description="observed with the target")) for c in covariates}
    reading = create_model(
        f"{title}Reading",
        __config__=strict,
        **{time: (datetime, Field(description="When it was read; UTC if no zone"))},
        **values,
        **{target: (Finite, Field(description="The value forecast"))},
    )
    key = {entity: (str, Field(min_length=1))} if entity else {}
    line = create_model(f"{title}StreamReading", __base__=reading, **key)
    window = create_model(
        f"{title}Window",
        __config__=strict,
        **key,
        readings=(list[reading], Field(min_length=1, description="Oldest first")),
    )
    response = create_model(
        f"{title}Forecast",
        **{entity: (str, ...)} if entity else {},
        origin=(IsoTime, Field(description="Time of the last reading the forecast starts from")),
        model_version=(str, ...),
        timestamps=(list[IsoTime], ...),
        forecast=(list[float], Field(description=f"{target}, one per timestamp")),
    )
    return ForecastTypes(reading, line, window, response)


# ----------------------------------------------------------------------------- options


def required_readings(spec: FeatureSpec) -> int:
    """Consecutive readings one forecast needs: the window plus the longest lag."""
    return spec.window + max(spec.options.lags or [0])


# ----------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class Window:
    """Consecutive raw readings of one series, oldest first, ending at the forecast origin.

    `rows` holds one numpy array per raw column (timestamps as naive-UTC datetime64[ns]).
    """

    key: str
    rows: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(next(iter(self.rows.values()))) if self.rows else 0

    def tail(self, n: int) -> Window:
        return Window(self.key, {c: v[-n:] for c, v in self.rows.items()})

    def last(self) -> dict[str, Any]:
        """The newest reading, as plain JSON-ready values."""
        return {c: plain_value(v[-1]) for c, v in self.rows.items()}


def plain_value(value: Any) -> Any:
    if isinstance(value, np.datetime64):
        return pd.Timestamp(value).tz_localize("UTC").isoformat()
    return value.item() if isinstance(value, np.generic) else value


@dataclass(frozen=True)
class Forecast:
    key: str
    origin: pd.Timestamp
    times: list[pd.Timestamp]
    values: np.ndarray
    version: str
    # Why this window has no forecast (non-finite features or outputs); `values` are NaN.
    problem: str | None = None

    def to_dict(self, entity: str | None) -> dict[str, Any]:
        named = {entity: self.key} if entity else {}
        return {
            **named,
            "origin": self.origin.isoformat(),
            "model_version": self.version,
            "timestamps": [t.isoformat() for t in self.times],
            "forecast": [round(float(v), 3) for v in self.values],
        }


def window_inputs(task, spec: FeatureSpec, windows: list[Window], window: int) -> np.ndarray:
    """Model inputs (N, window, features) for raw windows, in one feature pass.

    Each window becomes its own group (`<key>#<i>`), so lags never reach into another
    window, and the task's `add_features` runs once for the batch (`task.batch_spec` says
    what each group stands for, say the site whose sun it reads).
    """
    groups = {f"{item.key}#{i}": item.key for i, item in enumerate(windows)}
    n_rows = len(windows[0])
    # One frame for the whole batch, built from concatenated columns.
    columns = {c: np.concatenate([w.rows[c] for w in windows]) for c in windows[0].rows}
    columns[spec.group_column] = np.repeat(list(groups), n_rows)
    features = task.add_features(pd.DataFrame(columns), task.batch_spec(spec, groups))
    x = normalize(features, spec)
    # add_features sorts by (group, time); groups sort as strings, so index them by key.
    order = {key: n for n, key in enumerate(sorted(groups))}
    x = x.reshape(len(windows), n_rows, -1)[:, -window:]
    ranks = [order[f"{w.key}#{i}"] for i, w in enumerate(windows)]
    return np.ascontiguousarray(x[ranks])


def forecast_windows(task, model: LoadedModel, windows: list[Window]) -> list[Forecast]:
    """Forecast each window (all of the model's `required_readings` rows) with the ONNX
    session. A window whose features or forecast are not finite gets a `problem` naming
    the feature and reading, and the others are forecast all the same."""
    from loopline.export import run_onnx

    if not windows:
        return []
    spec = model.spec
    required = required_readings(spec)
    if any(len(w) < required for w in windows):
        raise ValueError(f"v{model.version} needs {required} consecutive readings per window")
    windows = [w.tail(required) for w in windows]
    with np.errstate(over="ignore", invalid="ignore"):  # an absurd reading: told per window
        x = window_inputs(task, spec, windows, spec.window)
    # One window's absurd (finite) reading must not cost the batch its forecasts.
    answered = ~nonfinite_items(x)
    values = np.full((len(windows), spec.horizon), np.nan, dtype=np.float32)
    if answered.any():
        values[answered] = run_onnx(model.session, x if answered.all() else x[answered])
    outputs_bad = nonfinite_items(values)
    step = pd.Timedelta(spec.freq)
    out = []
    for n, (item, row) in enumerate(zip(windows, values, strict=True)):
        origin = pd.Timestamp(item.rows[spec.time_column][-1]).tz_localize("UTC")
        times = [origin + step * h for h in range(1, spec.horizon + 1)]
        problem = None
        if not answered[n]:
            problem = feature_problem(item, x[n], spec)
        elif outputs_bad[n]:
            problem = f"the model's forecast is not finite (v{model.version}): {row.tolist()}"
        out.append(Forecast(item.key, origin, times, row, model.version, problem))
    return out


def feature_problem(window: Window, x: np.ndarray, spec: FeatureSpec) -> str:
    """Which feature of a window (its model input `x`, the last `spec.window` readings) is
    not finite, at which reading, with that reading's raw value(s)."""
    step, column = (int(i) for i in np.argwhere(~np.isfinite(x))[0])
    feature = spec.feature_columns[column]
    reading = len(window) - len(x) + step
    when = plain_value(window.rows[spec.time_column][reading])
    raw = (
        [feature]
        if feature in window.rows
        else [c for c, v in window.rows.items() if v.dtype.kind == "f"]
    )
    values = ", ".join(f"{c}={window.rows[c][reading]:g}" for c in raw)
    return (
        f"feature {feature!r} is not finite for the reading at {when} ({values}): "
        "a value out of any plausible range"
    )


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

SINGLE = "series"  # the key of a single series (no entity column)


class ForecastServing(Serving):
    """`/predict` takes complete windows of raw readings; `/stream` takes readings one per
    line, keeps a window per series and forecasts as soon as one is complete.

    A subclass sets the types (`types_for`), the `entity` field naming a series (None: a
    single series) and `time_field`; `known_keys` says which series a model can forecast."""

    input_name: ClassVar[str] = "windows"
    answers_are: ClassVar[str] = "forecasts"
    unit: ClassVar[str] = ""  # the target's unit, for console lines
    Reading: ClassVar[type[BaseModel]]
    entity: ClassVar[str | None] = None
    time_field: ClassVar[str] = "timestamp"

    def known_keys(self, spec: FeatureSpec) -> set[str] | None:
        """The series the model can forecast (None: any, as a global model of the family
        forecasts a series it never saw from its own readings)."""
        return None

    def key_of(self, item: BaseModel) -> str:
        return getattr(item, self.entity) if self.entity else SINGLE

    def unknown(self, key: str, model: LoadedModel) -> str | None:
        known = self.known_keys(model.spec)
        if known is None or key in known:
            return None
        return (
            f"{self.entity} {key!r} is unknown to {model.name} v{model.version} "
            f"(known: {sorted(known)})"
        )

    def check(self, item: BaseModel, model: LoadedModel) -> None:
        # The length a window needs depends on the model being served, which can change at
        # any poll: checked against the current one, per request, before batching.
        problem = self.unknown(self.key_of(item), model)
        if problem:
            raise BadInput(problem)
        missing = self.missing_columns(model.spec)
        if missing:
            raise BadInput(f"the served model reads column(s) {missing}, which readings lack")
        times = [utc(getattr(r, self.time_field)) for r in item.readings]
        problem = window_problem(times, model.spec.freq, required_readings(model.spec))
        if problem:
            raise BadInput(f"readings: {problem}")

    def missing_columns(self, spec: FeatureSpec) -> list[str]:
        """Raw columns the served model reads that a reading of this service lacks."""
        fields = self.Reading.model_fields
        return [c for c in self.task.model_columns(spec) if c not in fields]

    def predict(self, model: LoadedModel, items: list[BaseModel | Window]) -> list[Answer]:
        """Each window's forecast; a window that breaks the data contract, is too short for
        the model (swapped since `check`), or gives non-finite features or outputs gets its
        own error answer, and the others are forecast all the same."""
        schema = self.task.schema
        windows = [
            item
            if isinstance(item, Window)
            else Window(
                self.key_of(item), readings_columns([r.__dict__ for r in item.readings], schema)
            )
            for item in items
        ]
        # Stream windows (`Window`s) were checked reading by reading as they came in.
        requested = [n for n, item in enumerate(items) if not isinstance(item, Window)]
        answers: dict[int, Answer] = self.refusals([windows[n] for n in requested], requested)
        required = required_readings(model.spec)
        for n, window in enumerate(windows):
            if n not in answers and len(window) < required:
                message = f"readings: v{model.version} needs {required} consecutive readings"
                answers[n] = Answer(self.named(window.key, message), error=True)
        asked = [n for n in range(len(windows)) if n not in answers]
        forecasts = forecast_windows(self.task, model, [windows[n] for n in asked])
        for n, forecast in zip(asked, forecasts, strict=True):
            answers[n] = self.forecast_answer(windows[n], forecast, model)
        return [answers[n] for n in range(len(windows))]

    def series(self, key: str) -> dict[str, Any]:
        """The answer's field naming the series (none for a single series)."""
        return {self.entity: key} if self.entity else {}

    def named(self, key: str, message: str) -> dict[str, Any]:
        """An error response naming the series."""
        return {**self.series(key), "error": message}

    def refusals(self, windows: list[Window], positions: list[int]) -> dict[int, Answer]:
        """Error answers (by position) of the windows whose readings break the data
        contract: the first bad reading named by its place in the window, with each rule,
        field and value; counted under every rule any of its readings broke."""
        if not windows:
            return {}
        columns = [*windows[0].rows, *([self.entity] if self.entity else [])]
        contract = self.contract(columns)
        if not contract.rules:
            return {}
        lengths = [len(w) for w in windows]
        rows = {c: np.concatenate([w.rows[c] for w in windows]) for c in windows[0].rows}
        if self.entity:
            rows[self.entity] = np.repeat([w.key for w in windows], lengths)
        starts = np.cumsum([0, *lengths])
        first: dict[int, tuple[int, list]] = {}  # window → its first bad reading
        bad_readings: dict[int, int] = defaultdict(int)
        rules: dict[int, set[str]] = defaultdict(set)
        for row, broken in contract.check(rows).items():
            n = int(np.searchsorted(starts, row, side="right")) - 1
            first.setdefault(n, (row - int(starts[n]), broken))
            bad_readings[n] += 1
            rules[n].update(b.rule for b in broken)
        out = {}
        for n, (reading, broken) in first.items():
            answer = refusal(broken, f"readings[{reading}]", self.series(windows[n].key))
            more = bad_readings[n] - 1
            if more:
                answer.response["error"] += f" (and {more} more reading{'s' * (more > 1)})"
            answer.refused = tuple(sorted(rules[n]))
            out[positions[n]] = answer
        return out

    def forecast_answer(self, window: Window, forecast: Forecast, model: LoadedModel) -> Answer:
        if forecast.problem is not None:
            return Answer(self.named(window.key, forecast.problem), key=window.key, error=True)
        return Answer(
            response=forecast.to_dict(self.entity),
            key=window.key,
            origin=forecast.origin.to_pydatetime(),
            inputs={
                "readings": len(window),
                "first": plain_value(window.rows[model.spec.time_column][0]),
                "last": window.last(),
            },
            output=[round(float(v), 3) for v in forecast.values],
        )

    def describe(self, model: LoadedModel) -> dict[str, Any]:
        spec = model.spec
        known = self.known_keys(spec)
        return {
            "window": spec.window,
            "required_readings": required_readings(spec),
            "horizon": spec.horizon,
            "freq": spec.freq,
            "entity": self.entity,
            "columns": self.task.model_columns(spec),
            **({"sites": sorted(known)} if known is not None else {}),
        }

    def summary(self, answer: dict[str, Any]) -> str:
        """The series, origin and version, the first six steps and the peak."""
        values = answer["forecast"]
        peak = max(range(len(values)), key=values.__getitem__)
        key = answer.get(self.entity, SINGLE) if self.entity else SINGLE
        unit = f" {self.unit}" if self.unit else ""
        return (
            f"{key:<12} {answer['origin'][:16]}  v{answer['model_version']}  "
            f"next 6 steps: {' '.join(f'{v:5.0f}' for v in values[:6])}{unit}  "
            f"peak {values[peak]:.0f}{unit} at {answer['timestamps'][peak][11:16]}"
        )

    def open_stream(self, model: LoadedModel) -> StreamWindows:
        return StreamWindows(self, model)

    def requests(self, rows: pd.DataFrame, model: LoadedModel) -> list[BaseModel]:
        """A window ending at every reading with enough consecutive ones before it."""
        required = required_readings(model.spec)
        time_column = self.time_field
        reading = self.Reading
        rows = rows.sort_values(time_column)
        groups = rows.groupby(self.entity, sort=True) if self.entity else [(SINGLE, rows)]
        windows = []
        for key, readings in groups:
            lines = items_from_rows(reading, readings)
            named = {self.entity: key} if self.entity else {}
            windows += [
                self.Request(**named, readings=lines[end - required : end])
                for end in range(required, len(lines) + 1)
            ]
        return windows

    def stream_lines(self, rows: pd.DataFrame) -> list[BaseModel]:
        """One reading per line, in time order."""
        return items_from_rows(self.StreamLine, rows.sort_values(self.time_field))


def serving_for(types: ForecastTypes, entity: str | None, time: str) -> type[ForecastServing]:
    """The serving adapter of one forecast configuration."""
    return type(
        "ForecastServing",
        (ForecastServing,),
        {
            "Request": types.Window,
            "Reading": types.Reading,
            "Response": types.Response,
            "StreamLine": types.StreamLine,
            "entity": entity,
            "time_field": time,
        },
    )


class StreamWindows(StreamState):
    """Per-series window state of one stream: readings in, complete windows out, per series
    in order. A reading of an unknown series, duplicated or out of order gets an error and
    is not kept; a gap restarts that series' window (with a notice), because a window must
    be consecutive readings."""

    def __init__(self, serving: ForecastServing, model: LoadedModel):
        super().__init__(serving, model)
        self.schema = serving.task.schema
        self.buffers: dict[str, deque[dict[str, Any]]] = {}
        self.last: dict[str, pd.Timestamp] = {}
        self._sizes(model)

    def _sizes(self, model: LoadedModel) -> None:
        self.spec, self.required = model.spec, required_readings(model.spec)
        self.step = pd.Timedelta(model.spec.freq)

    def follow(self, model: LoadedModel) -> None:
        """Keep the readings, change the window length."""
        super().follow(model)
        self._sizes(model)
        for key, buffer in self.buffers.items():
            self.buffers[key] = deque(buffer, maxlen=self.required)

    def push(self, line: int, item: BaseModel):
        serving: ForecastServing = self.serving
        key = serving.key_of(item)
        named = {serving.entity: key} if serving.entity else {}
        problem = serving.unknown(key, self.model)
        if problem:
            return [], [{"error": problem, **named}]
        reading = item.model_dump()
        time_column = serving.time_field
        reading[time_column] = utc(reading[time_column])
        broken = serving.contract(reading).check_row(reading)
        if broken:  # answered in line order, and kept out of the window
            return [(line, Refused(refusal(broken, named=named)))], []
        time = pd.Timestamp(reading[time_column])
        last = self.last.get(key)
        if last is not None and time == last:
            message = f"duplicate reading for {key!r} at {time.isoformat()}"
            return [], [{"error": message, **named}]
        if last is not None and time < last:
            message = (
                f"out of order: {key!r} reading at {time.isoformat()} is before the "
                f"last one at {last.isoformat()}"
            )
            return [], [{"error": message, **named}]
        buffer = self.buffers.setdefault(key, deque(maxlen=self.required))
        events = []
        if last is not None and time - last != self.step:
            notice = (
                f"gap of {time - last} before {time.isoformat()}: the window restarts and "
                f"needs {self.required} consecutive readings"
            )
            events.append({**named, "notice": notice})
            buffer.clear()
        buffer.append(reading)
        self.last[key] = time
        if len(buffer) < self.required:
            return [], events
        columns = {
            column: [r[column] for r in buffer]
            for column in self.schema
            if column != serving.entity
        }
        return [(line, Window(key, typed_columns(columns, self.schema)))], events
