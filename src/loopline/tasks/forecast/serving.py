"""How a forecaster is served: raw readings in, forecasts out, per-series windows in streams.

Features are computed by the task's own `add_features` and `normalize` from the feature spec
saved with the model, the very code the offline process trained with. Windows are plain
numpy columns, not DataFrames: a frame per window costs more than the model call itself.

The request types name the task's own columns: `types_for` makes them from the family's
settings (solar declares its own, documented ones). Each answer names its series by the
entity column (`site_id` for solar); a single series has none.
"""

from __future__ import annotations

import functools
import itertools
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import numpy as np
import pandas as pd
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    create_model,
    model_validator,
)

from loopline.offline.features import FeatureSpec, normalize
from loopline.online.adapter import (
    Answer,
    BadInput,
    Refused,
    Serving,
    StreamState,
    items_from_rows,
    nonfinite_items,
    refusal,
)
from loopline.onnx_runtime import run_onnx
from loopline.tasks.forecast.arrays import (
    iso_instant,
    iso_utc,
    joined_columns,
    normalized,
    stack_windows,
)

if TYPE_CHECKING:
    from loopline.online.models import LoadedModel

# ----------------------------------------------------------------------------- API types

Finite = Annotated[float, Field(allow_inf_nan=False)]

# The times a window may hold, UTC. Windows become numpy datetime64[ns], which ends in 1677
# and 2262 (past that, nanoseconds since 1970 wrap around silently); lags reach back from
# a window and forecasts ahead of it, so both ends leave decades to spare.
EARLIEST, LATEST = datetime(1700, 1, 1, tzinfo=UTC), datetime(2200, 1, 1, tzinfo=UTC)
_EPOCH, _EPOCH_NAIVE = datetime(1970, 1, 1, tzinfo=UTC), datetime(1970, 1, 1)
_MICROSECOND = timedelta(microseconds=1)
_EARLIEST_US, _LATEST_US = ((t - _EPOCH) // _MICROSECOND for t in (EARLIEST, LATEST))


def in_time_range(value: datetime) -> datetime:
    """`value` (naive: UTC) if it lies in [EARLIEST, LATEST); compared without converting
    it, since a far year with a zone offset leaves Python's own range when converted."""
    if EARLIEST.year < value.year < LATEST.year - 1:
        # Inside by its year alone, whatever its zone (an offset is under a day): the
        # comparison below costs five times the parse of a time, so only the edges pay it.
        return value
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if not EARLIEST <= aware < LATEST:
        raise ValueError(
            f"{value.isoformat()} is out of range: times run from {EARLIEST:%Y-%m-%d} "
            f"to before {LATEST:%Y-%m-%d}, UTC"
        )
    return value


# A reading's time, checked to fit the window's arrays before anything converts it.
Instant = Annotated[datetime, AfterValidator(in_time_range)]
_EXACT_INSTANTS = TypeAdapter(list[Instant])


class Instants(list):
    """A window's times as sent (ISO text), with their UTC epoch nanoseconds (`ns`),
    converted once while the body is validated: the checks and the features read `ns`."""

    ns: np.ndarray


# Zones numpy's ISO parser need not see: a time in UTC, or naive (taken as UTC). The
# second-precision form (19 characters) with one of these is what clients and pandas send.
_UTC_TAILS = frozenset({19, "Z", "+00:00"})


def instants(value: Any, handler: ValidatorFunctionWrapHandler) -> Instants:
    """A column of times (the columnar form's), parsed for the whole column at once: a
    parse and a range check per value cost more than the model call. Text in the common
    UTC form goes through numpy's ISO parser; anything else (another zone, fractions of a
    second, a malformed or out-of-range time) through pydantic's, which names the value."""
    ns = _known_instants(value)
    if ns is None:
        ns = _utc_column(value)
        if ns is None or (len(ns) and (ns.min() < _EARLIEST_US or ns.max() >= _LATEST_US)):
            parsed = _EXACT_INSTANTS.validate_python(value)  # raises, naming a bad one
            out = Instants(v.isoformat() for v in parsed)
            out.ns = epoch_micros(parsed) * 1000
            return out
        _remember_instants(value, ns)
    out = Instants(value)
    out.ns = ns * 1000
    return out


# Epoch microseconds of the ISO texts parsed before (valid, in range). Windows overlap: the
# next window of a series repeats all but its newest reading, and series share hours, so
# most texts of a request were seen, and a lookup costs a tenth of numpy's parse.
_INSTANTS: dict[str, int] = {}
_INSTANTS_LIMIT = 200_000


def _known_instants(value: Any) -> np.ndarray | None:
    """The texts' epoch microseconds when every one was parsed before, else None."""
    known = _INSTANTS
    try:
        return np.array([known[v] for v in value], dtype=np.int64)
    except (KeyError, TypeError):  # one not seen (or not text)
        return None


def _remember_instants(texts: list[str], micros: np.ndarray) -> None:
    if len(_INSTANTS) > _INSTANTS_LIMIT:
        _INSTANTS.clear()
    _INSTANTS.update(zip(texts, micros.tolist(), strict=True))


def _utc_column(value: Any) -> np.ndarray | None:
    """UTC epoch microseconds of ISO texts all in second precision, in UTC or naive;
    None for anything else."""
    try:
        tails = {v[19:] or len(v) for v in value}
        if not tails <= _UTC_TAILS:
            return None
        texts = value if tails == {19} else [v[:19] for v in value]
        return np.array(texts, dtype="datetime64[us]").view(np.int64)
    except (TypeError, ValueError):  # not text, or not a time numpy reads
        return None


# Times go out as the ISO strings the library already made: declared `date-time` for the
# OpenAPI spec, but not parsed back into datetimes only to be printed again.
IsoTime = Annotated[str, Field(json_schema_extra={"format": "date-time"})]


# A window's times as one column (the columnar form): see `instants`.
InstantColumn = Annotated[list[IsoTime], WrapValidator(instants)]


@dataclass(frozen=True)
class ForecastTypes:
    """The API types of one forecaster: a reading, a stream line (a reading with its
    series), a window (`/predict` item) and an answer."""

    Reading: type[BaseModel]
    StreamLine: type[BaseModel]
    Window: type[BaseModel]
    Response: type[BaseModel]
    ColumnWindow: type[BaseModel] | None = None


def columns_model(name: str, time: str, numbers: list[str]) -> type[BaseModel]:
    """A window's readings as columns: one list per field, all of one length (the columnar
    form of a `/predict` item: ~10x less to parse than a reading object per row)."""
    fields = {
        time: (InstantColumn, Field(min_length=1, description="Oldest first; UTC if no zone"))
    }
    fields |= {c: (list[Finite], Field(min_length=1)) for c in numbers}
    names = list(fields)

    def same_length(self):
        values = self.__dict__
        if len({len(values[c]) for c in names}) > 1:
            lengths = {c: len(values[c]) for c in names}
            raise ValueError(f"every column needs one value per reading, got lengths {lengths}")
        return self

    return create_model(
        name,
        __config__=ConfigDict(extra="forbid"),
        __validators__={"same_length": model_validator(mode="after")(same_length)},
        **fields,
    )


def types_for(
    entity: str | None, time: str, target: str, covariates: list[str], title: str
) -> ForecastTypes:
    """API types naming a series' own columns (`title` prefixes their names)."""
    strict = ConfigDict(extra="forbid")
    values = {c: (Finite, Field(description="observed with the target")) for c in covariates}
    reading = create_model(
        f"{title}Reading",
        __config__=strict,
        **{time: (Instant, Field(description="When it was read; UTC if no zone"))},
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
    columns = columns_model(f"{title}Columns", time, [*covariates, target])
    column_window = create_model(
        f"{title}ColumnWindow",
        __config__=strict,
        **key,
        columns=(columns, Field(description="The window's readings, one list per field")),
    )
    response = create_model(
        f"{title}Forecast",
        **{entity: (str, ...)} if entity else {},
        origin=(IsoTime, Field(description="Time of the last reading the forecast starts from")),
        model_version=(str, ...),
        timestamps=(list[IsoTime], ...),
        forecast=(list[float], Field(description=f"{target}, one per timestamp")),
    )
    return ForecastTypes(reading, line, window, response, column_window)


# ----------------------------------------------------------------------------- options


def required_readings(spec: FeatureSpec) -> int:
    """Consecutive readings one forecast needs: the window plus the longest lag."""
    return spec.options.window + max(spec.options.lags or [0])


# ----------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class Window:
    """Consecutive raw readings of one series, oldest first, ending at the forecast origin.

    `rows` holds one numpy array per raw column (timestamps as naive-UTC datetime64[ns]).
    """

    key: str
    rows: dict[str, np.ndarray]
    # How many of the newest readings no earlier window of its stream held (the rows it is
    # the first to stand for, `input_rows`); None: every reading (a `/predict` window).
    fresh: int | None = None

    def __len__(self) -> int:
        return len(next(iter(self.rows.values()))) if self.rows else 0

    def tail(self, n: int) -> Window:
        fresh = None if self.fresh is None else min(self.fresh, n)
        return Window(self.key, {c: v[-n:] for c, v in self.rows.items()}, fresh)

    def last(self) -> dict[str, Any]:
        """The newest reading, as plain JSON-ready values."""
        return {c: plain_value(v[-1]) for c, v in self.rows.items()}


# A window's first time and newest reading, JSON-ready (what the prediction log keeps).
WindowEnds = tuple[Any, dict[str, Any]]


def window_ends(
    windows: list[Window], time_column: str, joined: dict | None = None
) -> list[WindowEnds]:
    """Each window's `WindowEnds`, converted a column at a time for the batch (a conversion
    per value cost more than the window's forecast). `joined`: the windows'
    `joined_columns`, when the caller has them."""
    if not windows or any(w.rows.keys() != windows[0].rows.keys() for w in windows):
        return [(plain_value(w.rows[time_column][0]), w.last()) for w in windows]
    columns = {}
    for name in windows[0].rows:
        newest = newest_of(windows, name, joined)
        columns[name] = iso_utc(as_ns(newest)) if name == time_column else newest.tolist()
    if joined is not None:
        firsts = iso_utc(as_ns(joined[time_column][:: len(joined[time_column]) // len(windows)]))
    else:
        firsts = iso_utc(as_ns(np.array([w.rows[time_column][0] for w in windows])))
    lasts = [
        dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)
    ]
    return list(zip(firsts, lasts, strict=True))


def newest_of(windows: list[Window], column: str, joined: dict | None = None) -> np.ndarray:
    """The newest value of `column` in each window (from `joined`, when given)."""
    if joined is not None:
        values = joined[column]
        return values[len(values) // len(windows) - 1 :: len(values) // len(windows)]
    return np.array([w.rows[column][-1] for w in windows])


def as_ns(times: np.ndarray) -> np.ndarray:
    return times.astype("datetime64[ns]").view(np.int64)


def plain_value(value: Any) -> Any:
    if isinstance(value, np.datetime64):
        return iso_instant(int(value.astype("datetime64[ns]").astype(np.int64)))
    return value.item() if isinstance(value, np.generic) else value


@dataclass(frozen=True)
class Forecast:
    key: str
    origin_ns: int  # the forecast origin, UTC nanoseconds since the epoch
    timestamps: list[str]  # ISO, UTC: one per step ahead
    values: np.ndarray
    version: str
    # Why this window has no forecast (non-finite features or outputs); `values` are NaN.
    problem: str | None = None
    # `values` to 1 mW, when the batch rounded them all at once (`forecasts_of`).
    rounded_values: list[float] | None = None

    @property
    def origin(self) -> pd.Timestamp:
        return pd.Timestamp(self.origin_ns, tz="UTC")

    def origin_datetime(self) -> datetime:
        return _EPOCH + timedelta(microseconds=self.origin_ns // 1000)

    @property
    def times(self) -> list[pd.Timestamp]:
        return [pd.Timestamp(t) for t in self.timestamps]

    def rounded(self) -> list[float]:
        """The values to 1 mW (Python's `round`, as answers and the log always had)."""
        if self.rounded_values is not None:
            return self.rounded_values
        return [round(v, 3) for v in self.values.tolist()]

    def to_dict(self, entity: str | None, rounded: list[float] | None = None) -> dict[str, Any]:
        named = {entity: self.key} if entity else {}
        return {
            **named,
            "origin": iso_instant(self.origin_ns),
            "model_version": self.version,
            "timestamps": list(self.timestamps),  # a copy: the cached list is shared
            "forecast": self.rounded() if rounded is None else rounded,
        }


def window_inputs(
    task, spec: FeatureSpec, windows: list[Window], window: int, joined: dict | None = None
) -> np.ndarray:
    """Model inputs (N, window, features) for raw windows, in one feature pass: on column
    arrays (`task.window_features`) when the windows are complete and consecutive, as
    `/predict` checks and a stream keeps them, else through the offline `add_features`.
    `joined`: the windows' `joined_columns`, when the caller has them."""
    batch = stack_windows(windows, spec.options.time_column, spec.options.freq, joined)
    if (
        batch is not None
        and window == spec.options.window
        and batch.times.shape[1] >= required_readings(spec)
    ):
        return normalized(task.window_features(batch, spec), spec)
    return frame_inputs(task, spec, windows, window)


def frame_inputs(task, spec: FeatureSpec, windows: list[Window], window: int) -> np.ndarray:
    """Model inputs for raw windows through the offline `add_features` (a DataFrame).

    Each window becomes its own group (`<key>#<i>`), so lags never reach into another
    window, and the task's `add_features` runs once for the batch (`task.batch_spec` says
    what each group stands for, say the site whose sun it reads).
    """
    groups = {f"{item.key}#{i}": item.key for i, item in enumerate(windows)}
    n_rows = len(windows[0])
    # One frame for the whole batch, built from concatenated columns.
    columns = {c: np.concatenate([w.rows[c] for w in windows]) for c in windows[0].rows}
    columns[spec.options.group_column] = np.repeat(list(groups), n_rows)
    features = task.add_features(pd.DataFrame(columns), task.batch_spec(spec, groups))
    x = normalize(features, spec)
    # add_features sorts by (group, time); groups sort as strings, so index them by key.
    order = {key: n for n, key in enumerate(sorted(groups))}
    x = x.reshape(len(windows), n_rows, -1)[:, -window:]
    ranks = [order[f"{w.key}#{i}"] for i, w in enumerate(windows)]
    return np.ascontiguousarray(x[ranks])


def forecast_windows(
    task, model: LoadedModel, windows: list[Window], joined: dict | None = None
) -> list[Forecast]:
    """Forecast each window (all of the model's `required_readings` rows) with the ONNX
    session. A window whose features or forecast are not finite gets a `problem` naming
    the feature and reading, and the others are forecast all the same. `joined`: the
    windows' `joined_columns`, when the caller has them."""

    if not windows:
        return []
    spec = model.spec
    required = required_readings(spec)
    lengths = [len(w) for w in windows]
    if min(lengths) < required:
        raise ValueError(f"v{model.version} needs {required} consecutive readings per window")
    if max(lengths) > required:
        joined = None
        windows = [
            w if n == required else w.tail(required) for w, n in zip(windows, lengths, strict=True)
        ]
    with np.errstate(over="ignore", invalid="ignore"):  # an absurd reading: told per window
        x = window_inputs(task, spec, windows, spec.options.window, joined)
    # One window's absurd (finite) reading must not cost the batch its forecasts.
    answered = ~nonfinite_items(x)
    values = np.full((len(windows), spec.options.horizon), np.nan, dtype=np.float32)
    if answered.any():
        values[answered] = run_onnx(model.session, x if answered.all() else x[answered])
    outputs_bad = nonfinite_items(values)
    forecasts = forecasts_of(windows, values, spec, model.version, joined)
    for n in np.flatnonzero(~answered | outputs_bad):
        problem = (
            feature_problem(windows[n], x[n], spec)
            if not answered[n]
            else f"the model's forecast is not finite (v{model.version}): {values[n].tolist()}"
        )
        forecasts[n] = replace(forecasts[n], problem=problem)
    return forecasts


def forecasts_of(
    windows: list[Window],
    values: np.ndarray,
    spec: FeatureSpec,
    version: str,
    joined: dict | None = None,
) -> list[Forecast]:
    """One `Forecast` per window: its steps' times from the origin, as ISO text made for the
    whole batch at once (a pandas Timestamp per step cost more than the model call)."""
    step = _step_ns(spec.options.freq)
    origins = as_ns(newest_of(windows, spec.options.time_column, joined))
    # numpy's round is Python's here: a float32 times 1000 is exact in float64.
    rounded = np.round(values.astype(np.float64), 3).tolist()
    horizon = spec.options.horizon
    return [
        Forecast(item.key, origin, step_times(origin, step, horizon), row, version, None, near)
        for item, origin, row, near in zip(windows, origins.tolist(), values, rounded, strict=True)
    ]


_STEP_TIMES: dict[tuple[int, int, int], list[str]] = {}


def step_times(origin: int, step: int, horizon: int) -> list[str]:
    """The ISO times of the `horizon` steps after `origin` (UTC nanoseconds), cached per
    origin: every series forecast from the same hour shares them."""
    key = (origin, step, horizon)
    times = _STEP_TIMES.get(key)
    if times is None:
        if len(_STEP_TIMES) > 50_000:
            _STEP_TIMES.clear()
        times = iso_utc(origin + step * np.arange(1, horizon + 1, dtype=np.int64))
        _STEP_TIMES[key] = times
    return times


def feature_problem(window: Window, x: np.ndarray, spec: FeatureSpec) -> str:
    """Which feature of a window (its model input `x`, the last `spec.options.window` readings) is
    not finite, at which reading, with that reading's raw value(s)."""
    step, column = (int(i) for i in np.argwhere(~np.isfinite(x))[0])
    feature = spec.feature_columns[column]
    reading = len(window) - len(x) + step
    when = plain_value(window.rows[spec.options.time_column][reading])
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


def window_problem(ns: np.ndarray, freq: str, required: int) -> str | None:
    """Why readings at `ns` (UTC epoch nanoseconds, oldest first) are not a complete window
    (None when they are): one array comparison, since this runs on every request."""
    if len(ns) < required:
        return f"needs {required} consecutive readings, got {len(ns)}"
    steps = np.diff(ns)
    wrong = np.flatnonzero(steps != _step_ns(freq))
    if not len(wrong):
        return None
    n = int(wrong[0]) + 1
    if steps[n - 1] <= 0:
        return f"readings must be in strictly increasing time order (reading {n})"
    return f"readings must be consecutive, one every {freq} (gap before reading {n})"


def windows_out_of_step(times: dict[int, np.ndarray], step: int, required: int) -> list[int]:
    """Which windows (epoch nanoseconds by position) are shorter than `required` or not
    readings exactly `step` apart: windows of one length tested as one array."""
    by_length: dict[int, list[int]] = defaultdict(list)
    for n, ns in times.items():
        by_length[len(ns)].append(n)
    wrong = []
    for length, positions in by_length.items():
        if length < required:
            wrong += positions
            continue
        steps = np.diff(np.stack([times[n] for n in positions]), axis=1)
        wrong += [positions[k] for k in np.flatnonzero((steps != step).any(axis=1)).tolist()]
    return sorted(wrong)


@functools.cache
def _step_ns(freq: str) -> int:
    return pd.Timedelta(freq).value


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


def epoch_micros(values: list[datetime]) -> np.ndarray:
    """Datetimes (aware, or naive taken as UTC) as exact integer UTC epoch microseconds."""
    return np.array(
        [(v - (_EPOCH if v.tzinfo else _EPOCH_NAIVE)) // _MICROSECOND for v in values],
        dtype=np.int64,
    )


def utc_datetime64(values: list[Any]) -> np.ndarray:
    """Datetimes (aware: converted; naive: taken as UTC) or ISO strings → datetime64[ns]."""
    if isinstance(values, Instants):  # converted while the request was validated
        return values.ns.view("datetime64[ns]")
    if values and all(isinstance(v, datetime) and v.tzinfo is not None for v in values):
        # Aware (what requests parse to): `timestamp()` in C; whole seconds exactly by
        # rounding once the microseconds are taken off, which are added back as integers.
        micros = np.array([v.microsecond for v in values], dtype=np.int64)
        stamps = np.array([v.timestamp() for v in values]) - micros / 1e6
        seconds = np.rint(stamps).astype(np.int64)
        return micros_as_ns(seconds * 1_000_000 + micros)
    if values and all(isinstance(v, datetime) for v in values):
        # Exact integer microseconds since the epoch: no timezone conversion per value.
        micros = [(v - (_EPOCH if v.tzinfo else _EPOCH_NAIVE)) // _MICROSECOND for v in values]
        return micros_as_ns(np.array(micros, dtype=np.int64))
    return pd.to_datetime(values, utc=True).tz_convert(None).to_numpy(dtype="datetime64[ns]")


_NS_LIMIT_US = np.iinfo(np.int64).max // 1000  # epoch microseconds whose nanoseconds fit


def micros_as_ns(micros: np.ndarray) -> np.ndarray:
    """Epoch microseconds as datetime64[ns]. Past ±292 years from 1970 the nanoseconds
    would wrap around silently (2300 becoming 1715): raise instead, for a time that got
    past the request types' `Instant` check."""
    if len(micros) and int(np.abs(micros).max()) > _NS_LIMIT_US:
        first = int(micros[np.abs(micros) > _NS_LIMIT_US][0])
        when = _EPOCH_NAIVE + timedelta(microseconds=first)
        raise ValueError(f"{when.isoformat()} (UTC) does not fit datetime64[ns] nanoseconds")
    return (micros * 1000).view("datetime64[ns]")


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

    # Readings handed to `input_rows`' caller already, per series (epoch ns): skipped
    # before they are converted again (a client's `/predict` windows overlap, and repeat).
    # Forgotten all at once past this many; the live-input log and the database's unique
    # key still store each once.
    handed_limit: ClassVar[int] = 500_000
    # Windows whose readings were all handed over, by series and exact reading times: a
    # client repeating a window (a retry, a dashboard's refresh, a load test) costs one
    # lookup, not a conversion and set test per reading. Forgotten with `handed`.
    handed_windows_limit: ClassVar[int] = 20_000

    def __init__(self, task: Any, params: Any) -> None:
        super().__init__(task, params)
        self.handed: dict[str, set[int]] = defaultdict(set)
        self.handed_count = 0
        self.handed_windows: set[tuple[str, str, bytes]] = set()
        self._missing: tuple[FeatureSpec, list[str]] | None = None

    def known_keys(self, spec: FeatureSpec) -> set[str] | None:
        """The series the model can forecast (None: any, as a global model of the family
        forecasts a series it never saw from its own readings)."""
        return None

    def key_of(self, item: BaseModel) -> str:
        return getattr(item, self.entity) if self.entity else SINGLE

    def route_key(self, item: BaseModel | Window) -> str:
        """A series goes to the canary whole (a stream's window or a request's)."""
        return item.key if isinstance(item, Window) else self.key_of(item)

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
        problem = window_problem(
            self.times_of(item), model.spec.options.freq, required_readings(model.spec)
        )
        if problem:
            raise BadInput(f"{'columns' if is_columnar(item) else 'readings'}: {problem}")

    def check_items(self, items: list[BaseModel], model: LoadedModel) -> dict[int, str]:
        """`check` for a body's windows together: the consecutive-readings test one array
        comparison for all windows of a length (a test per window cost more than its
        forecast)."""
        spec = model.spec
        missing = self.missing_columns(spec)
        if missing:
            message = f"the served model reads column(s) {missing}, which readings lack"
            return dict.fromkeys(range(len(items)), message)
        problems: dict[int, str] = {}
        known = self.known_keys(spec)
        if known is not None:
            for n, item in enumerate(items):
                if self.key_of(item) not in known:
                    problems[n] = self.unknown(self.key_of(item), model)
        times = {n: self.times_of(item) for n, item in enumerate(items) if n not in problems}
        required, freq = required_readings(spec), spec.options.freq
        for n in windows_out_of_step(times, _step_ns(freq), required):
            form = "columns" if is_columnar(items[n]) else "readings"
            problems[n] = f"{form}: {window_problem(times[n], freq, required)}"
        return problems

    def times_of(self, item: BaseModel) -> np.ndarray:
        """The UTC epoch nanoseconds of a window's readings, either form."""
        if is_columnar(item):
            return getattr(item.columns, self.time_field).ns
        return epoch_micros([getattr(r, self.time_field) for r in item.readings]) * 1000

    def window_of(self, item: BaseModel | Window) -> Window:
        """A `/predict` item (readings or columns) as numpy columns."""
        if isinstance(item, Window):
            return item
        schema = self.task.schema
        if is_columnar(item):
            return Window(self.key_of(item), typed_columns(item.columns.__dict__, schema))
        return Window(
            self.key_of(item), readings_columns([r.__dict__ for r in item.readings], schema)
        )

    def windows_of(self, items: list[BaseModel | Window]) -> tuple[list[Window], dict | None]:
        """The items as windows, with their `joined_columns`. Columnar items of one length
        are converted a column at a time for the batch (an array per window and column
        cost more than a small window's forecast), each window a view of those arrays."""
        columns = self._same_shape_columns(items)
        if columns is None:
            windows = [self.window_of(item) for item in items]
            return windows, joined_columns(windows)
        first, time = columns[0], self.time_field
        width = len(first[time])
        schema, size = self.task.schema, width * len(columns)
        joined = {}
        for name in first:
            if name == time:
                joined[name] = np.concatenate([c[time].ns for c in columns]).view("datetime64[ns]")
                continue
            values = itertools.chain.from_iterable(c[name] for c in columns)
            if schema.get(name) == "float":  # straight into the array, no list between
                joined[name] = np.fromiter(values, np.float64, size)
            else:
                joined[name] = typed_columns({name: list(values)}, schema)[name]
        # Each window's columns are rows of the joined columns seen as (windows, readings):
        # numpy makes the views a column at a time (a slice per window and column cost more).
        names = list(joined)
        split = [list(values.reshape(len(items), width)) for values in joined.values()]
        views = zip(*split, strict=True)
        windows = [
            Window(self.key_of(item), dict(zip(names, columns, strict=True)))
            for item, columns in zip(items, views, strict=True)
        ]
        return windows, joined

    def _same_shape_columns(self, items: list[BaseModel | Window]) -> list[dict] | None:
        """Each item's columns when there are several, all columnar, with the same fields
        and length and their times converted (`Instants`); else None."""
        if len(items) < 2 or not all(is_columnar(item) for item in items):
            return None
        columns = [item.columns.__dict__ for item in items]
        first, time = columns[0], self.time_field
        width = len(first[time])
        same = all(
            c.keys() == first.keys() and len(c[time]) == width and isinstance(c[time], Instants)
            for c in columns
        )
        return columns if same else None

    def missing_columns(self, spec: FeatureSpec) -> list[str]:
        """Raw columns the served model reads that a reading of this service lacks (found
        once per served spec: every request asks)."""
        found = self._missing
        if found is None or found[0] is not spec:
            fields = self.Reading.model_fields
            found = self._missing = (
                spec,
                [c for c in self.task.model_columns(spec) if c not in fields],
            )
        return found[1]

    def predict(self, model: LoadedModel, items: list[BaseModel | Window]) -> list[Answer]:
        """Each window's forecast; a window that breaks the data contract, is too short for
        the model (swapped since `check`), or gives non-finite features or outputs gets its
        own error answer, and the others are forecast all the same."""
        # Each column of all windows end to end, once: the contract, the features and the
        # answers read it (joining per stage cost more than a small batch's forecast).
        windows, joined = self.windows_of(items)
        # Stream windows (`Window`s) were checked reading by reading as they came in.
        requested = [n for n, item in enumerate(items) if not isinstance(item, Window)]
        every = len(requested) == len(windows)
        answers: dict[int, Answer] = self.refusals(
            [windows[n] for n in requested], requested, joined if every else None
        )
        required = required_readings(model.spec)
        for n, window in enumerate(windows):
            if n not in answers and len(window) < required:
                message = f"readings: v{model.version} needs {required} consecutive readings"
                answers[n] = Answer(self.named(window.key, message), error=True)
        asked = [n for n in range(len(windows)) if n not in answers]
        if len(asked) < len(windows):
            joined = None
        asked_windows = [windows[n] for n in asked] if joined is None else windows
        forecasts = forecast_windows(self.task, model, asked_windows, joined)
        ends = window_ends(asked_windows, model.spec.options.time_column, joined)
        for n, forecast, end in zip(asked, forecasts, ends, strict=True):
            answers[n] = self.forecast_answer(windows[n], forecast, end)
        return [answers[n] for n in range(len(windows))]

    def series(self, key: str) -> dict[str, Any]:
        """The answer's field naming the series (none for a single series)."""
        return {self.entity: key} if self.entity else {}

    def named(self, key: str, message: str) -> dict[str, Any]:
        """An error response naming the series."""
        return {**self.series(key), "error": message}

    def refusals(
        self, windows: list[Window], positions: list[int], joined: dict | None = None
    ) -> dict[int, Answer]:
        """Error answers (by position) of the windows whose readings break the data
        contract: the first bad reading named by its place in the window, with each rule,
        field and value; counted under every rule any of its readings broke. `joined`: the
        windows' `joined_columns`, when the caller has them."""
        if not windows:
            return {}
        columns = [*windows[0].rows, *([self.entity] if self.entity else [])]
        contract = self.contract(columns)
        if not contract.rules:
            return {}
        lengths = [len(w) for w in windows]
        if joined is None:
            joined = {c: np.concatenate([w.rows[c] for w in windows]) for c in windows[0].rows}
        rows = dict(joined)
        if self.entity:
            # Objects, not text: the contract tests each distinct key once, by identity.
            keys = np.array([w.key for w in windows], dtype=object)
            rows[self.entity] = np.repeat(keys, lengths)
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

    def forecast_answer(self, window: Window, forecast: Forecast, ends: WindowEnds) -> Answer:
        """A window's error answer when it has no forecast, else its answer."""
        if forecast.problem is not None:
            return Answer(self.named(window.key, forecast.problem), key=window.key, error=True)
        return self.answer_of(window, forecast, ends)

    def answer_of(self, window: Window, forecast: Forecast, ends: WindowEnds) -> Answer:
        """One window's answer and the prediction log's record of it."""
        rounded = forecast.rounded()
        first, last = ends
        return Answer(
            response=forecast.to_dict(self.entity, rounded),
            key=window.key,
            origin=forecast.origin_datetime(),
            inputs={"readings": len(window), "first": first, "last": last},
            output=rounded,
            source=window,
        )

    def input_rows(self, answers: list[Answer]) -> list[dict[str, Any]]:
        """Each reading of the answered windows (a stream window: only the readings no
        earlier window of its stream held), with its series' entity. A stream's windows
        carry their rows, made as the readings came in; the others' are converted for the
        batch at once (a conversion per window cost more than its forecast), once per
        batch (`/predict` windows of one series overlap)."""
        rows: list[dict[str, Any]] = []
        windows: list[Window] = []
        for answer in answers:
            window = answer.source
            if isinstance(window, StreamWindow) and (window.readings or not window.fresh):
                rows += window.readings
            elif isinstance(window, Window):
                windows.append(window)
        return rows + self._window_rows(windows) if windows else rows

    def _window_rows(self, windows: list[Window]) -> list[dict[str, Any]]:
        """The rows of `windows`' (fresh) readings not handed over before, from the arrays."""
        time, entity = self.time_field, self.entity
        batches: dict[tuple[str, ...], list[tuple[Window, int]]] = defaultdict(list)
        if self.handed_count > self.handed_limit:
            self._forget_handed()
        known, seen = self.handed_windows, set()
        for window in windows:
            n = len(window) if window.fresh is None else min(window.fresh, len(window))
            if n <= 0:
                continue
            times = window.rows[time][-n:]
            mark = (window.key, times.dtype.str, times.tobytes())
            if mark in known or mark in seen:
                continue
            seen.add(mark)
            batches[tuple(window.rows)].append((window, n))
        if len(known) + len(seen) > self.handed_windows_limit:
            known.clear()
        known.update(seen)  # (each reading of these is handed over below, or was before)
        rows: list[dict[str, Any]] = []
        for names, windows in batches.items():
            counts = [n for _, n in windows]
            keys = list(dict.fromkeys(w.key for w, _ in windows))
            series = np.repeat([keys.index(w.key) for w, _ in windows], counts)
            ns = np.concatenate([w.rows[time][-n:] for w, n in windows])
            ns = ns.astype("datetime64[ns]").view(np.int64)
            keep = self._not_handed(keys, series, ns, first_of_each(series, ns))
            if not len(keep):
                continue
            columns = [
                iso_utc(ns[keep])
                if name == time
                else np.concatenate([w.rows[name][-n:] for w, n in windows])[keep].tolist()
                for name in names
            ]
            if entity:
                names = (entity, *names)
                columns.insert(0, [keys[k] for k in series[keep].tolist()])
            rows += [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]
        return rows

    def _not_handed(
        self, keys: list[str], series: np.ndarray, ns: np.ndarray, positions: np.ndarray
    ) -> np.ndarray:
        """`positions` whose reading was not handed over before, now marked handed."""
        fresh, count = [], 0
        for k, key in enumerate(keys):
            chosen = positions if len(keys) == 1 else positions[series[positions] == k]
            times = ns[chosen]
            known = self.handed[key]
            # Set arithmetic in C, not a test per reading: windows of a series overlap, and
            # most of their readings were handed over with an earlier window.
            new = set(times.tolist()).difference(known)
            if not new:
                continue
            known.update(new)
            count += len(new)
            if len(new) < len(chosen):
                chosen = chosen[np.isin(times, np.fromiter(new, np.int64, len(new)))]
            fresh.append(chosen)
        self.handed_count += count
        if not fresh:
            return np.zeros(0, dtype=np.int64)
        return fresh[0] if len(fresh) == 1 else np.sort(np.concatenate(fresh))

    def _forget_handed(self) -> None:
        self.handed.clear()
        self.handed_count = 0
        self.handed_windows.clear()

    def describe(self, model: LoadedModel) -> dict[str, Any]:
        spec = model.spec
        known = self.known_keys(spec)
        return {
            "window": spec.options.window,
            "required_readings": required_readings(spec),
            "horizon": spec.options.horizon,
            "freq": spec.options.freq,
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


def first_of_each(series: np.ndarray, ns: np.ndarray) -> np.ndarray:
    """The positions of the first reading of each (series, time) pair, in order."""
    order = np.lexsort((ns, series))
    k, t = series[order], ns[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (k[1:] != k[:-1]) | (t[1:] != t[:-1])
    return np.sort(order[first])


def is_columnar(item: Any) -> bool:
    """Whether a `/predict` item is the columnar form (`columns`, not `readings`)."""
    # (`__pydantic_fields__`: `model_fields` builds its answer on every read)
    return isinstance(item, BaseModel) and "columns" in type(item).__pydantic_fields__


def serving_for(types: ForecastTypes, entity: str | None, time: str) -> type[ForecastServing]:
    """The serving adapter of one forecast configuration."""
    return type(
        "ForecastServing",
        (ForecastServing,),
        {
            "Request": types.Window,
            "ColumnarRequest": types.ColumnWindow,
            "Reading": types.Reading,
            "Response": types.Response,
            "StreamLine": types.StreamLine,
            "entity": entity,
            "time_field": time,
        },
    )


class SeriesBuffer:
    """The latest readings of one series as arrays: epoch nanoseconds and one row of
    numbers per reading, appended in place (a frame or a dict per reading cost more than
    the forecast). Room for several windows; when full, the newest readings move to new
    arrays, so a window (`window`: views) never sees a later append change it."""

    ROOM = 4  # windows' worth of readings per pair of arrays

    def __init__(self, required: int, width: int):
        self.required, self.width = required, width
        self._new_arrays()
        self.size = 0  # readings held, at most `required`
        self.end = 0  # one past the newest

    def _new_arrays(self) -> None:
        self.times = np.empty(self.ROOM * self.required, dtype=np.int64)
        self.values = np.empty((self.ROOM * self.required, self.width))

    def clear(self) -> None:
        self._new_arrays()  # (windows may still hold views of the old ones)
        self.size = self.end = 0

    def append(self, ns: int, row: list[float]) -> None:
        if self.end == len(self.times):  # full: the newest required - 1 to new arrays
            keep = self.required - 1
            times, values = self.times, self.values
            self._new_arrays()
            self.times[:keep] = times[self.end - keep : self.end]
            self.values[:keep] = values[self.end - keep : self.end]
            self.end = keep
        self.times[self.end] = ns
        self.values[self.end] = row
        self.end += 1
        self.size = min(self.size + 1, self.required)

    def resized(self, required: int) -> SeriesBuffer:
        """The same newest readings (as many as fit) in a buffer for `required`."""
        out = SeriesBuffer(required, self.width)
        keep = min(self.size, required)
        out.times[:keep] = self.times[self.end - keep : self.end]
        out.values[:keep] = self.values[self.end - keep : self.end]
        out.size = out.end = keep
        return out

    def window(self) -> tuple[np.ndarray, np.ndarray]:
        """The newest `required` readings: views no later append writes into."""
        start = self.end - self.required
        return self.times[start : self.end], self.values[start : self.end]


def epoch_ns(value: datetime) -> int:
    """A datetime (naive: UTC) as integer UTC nanoseconds since the epoch, exactly."""
    return (value - (_EPOCH if value.tzinfo else _EPOCH_NAIVE)) // _MICROSECOND * 1000


# A chunk of at least this many stream lines has its data contract checked in one
# vectorised pass before its readings are pushed; a smaller one (a stream with a reading or
# two in flight) reading by reading, which costs less than numpy's overhead per call.
CHUNK_CHECK_MIN = 16


@dataclass(frozen=True)
class StreamWindow(Window):
    """A window a stream made, with the raw rows of its fresh readings (`input_rows`' rows:
    JSON-ready, with the series), made as each reading came in: storing them converts
    nothing back from the window's arrays."""

    readings: tuple[dict[str, Any], ...] = ()


class StreamWindows(StreamState):
    """Per-series window state of one stream: readings in, complete windows out, per series
    in order. A reading of an unknown series, duplicated or out of order gets an error and
    is not kept; a gap restarts that series' window (with a notice), because a window must
    be consecutive readings. State is arrays per series (`SeriesBuffer`)."""

    def __init__(self, serving: ForecastServing, model: LoadedModel):
        super().__init__(serving, model)
        schema = serving.task.schema
        self.time_column = serving.time_field
        self.numbers = [c for c, kind in schema.items() if kind == "float"]
        self.contract = serving.contract(type(serving).StreamLine.__pydantic_fields__)
        self.contract_columns = list(
            dict.fromkeys(
                c
                for rule in self.contract.rules
                for c in ([rule.column] if rule.column else rule.columns)
            )
        )
        entity = serving.entity
        self.row_names = (*([entity] if entity else []), self.time_column, *self.numbers)
        params = serving.params
        # The readings' raw rows are made only where the service stores them.
        self.keeps_rows = params is None or params.serve.store_inputs
        self.buffers: dict[str, SeriesBuffer] = {}
        self.last: dict[str, int] = {}
        # Per series: the readings in the buffer no window handed over yet (their raw rows,
        # or None where none are kept).
        self.unsent: dict[str, list[dict[str, Any] | None]] = {}
        self._sizes(model)

    def _sizes(self, model: LoadedModel) -> None:
        self.spec, self.required = model.spec, required_readings(model.spec)
        self.step = pd.Timedelta(model.spec.options.freq).value
        self.known = self.serving.known_keys(model.spec)

    def follow(self, model: LoadedModel) -> None:
        """Keep the readings, change the window length."""
        super().follow(model)
        self._sizes(model)
        for key, buffer in self.buffers.items():
            self.buffers[key] = buffer.resized(self.required)

    def push(self, line: int, item: BaseModel):
        return self._push(line, item, checked=False)

    def push_many(self, lines: list[tuple[int, BaseModel]]) -> list[tuple[list, list]]:
        """`push` for each of one chunk's lines, in order, their data contract checked in
        one vectorised pass first (a bulk stream's chunk holds hundreds of readings, and a
        check each cost a fifth of a forecast). A reading the pass flags is checked again
        alone, so its error line is the one it gets pushed alone."""
        flagged = None
        if len(lines) >= CHUNK_CHECK_MIN:
            flagged = self._flagged([item for _, item in lines])
        return [
            self._push(line, item, checked=flagged is not None and n not in flagged)
            for n, (line, item) in enumerate(lines)
        ]

    def _flagged(self, items: list[BaseModel]) -> set[int] | None:
        """The positions of the readings that break a rule of the contract (None: not
        known, each is checked alone)."""
        if not self.contract.rules:
            return set()
        values = [item.__dict__ for item in items]
        columns: dict[str, np.ndarray] = {}
        try:
            for name in self.contract_columns:
                column = [v[name] for v in values]
                columns[name] = (
                    utc_datetime64(column)
                    if name == self.time_column
                    else np.asarray(column, dtype=None if name in self.numbers else object)
                )
            return set(self.contract.check(columns))
        except Exception:  # (say, a time numpy cannot hold): each reading's own check says
            return None

    def _push(self, line: int, item: BaseModel, checked: bool):
        values = item.__dict__  # the fields as parsed (a model_dump copied them)
        entity = self.serving.entity
        key = values[entity] if entity else SINGLE
        if self.known is not None and key not in self.known:
            return [], [{"error": self.serving.unknown(key, self.model), **self._named(key)}]
        when = utc(values[self.time_column])
        if not checked:
            broken = self.contract.check_row({**values, self.time_column: when})
            if broken:  # answered in line order, and kept out of the window
                return [(line, Refused(refusal(broken, named=self._named(key))))], []
        ns = epoch_ns(when)
        last = self.last.get(key)
        if last is not None and ns <= last:
            return [], [{"error": self._disorder(key, ns, last), **self._named(key)}]
        buffer = self.buffers.get(key)
        if buffer is None:
            buffer = self.buffers[key] = SeriesBuffer(self.required, len(self.numbers))
            self.unsent[key] = []
        unsent = self.unsent[key]
        events = []
        if last is not None and ns - last != self.step:
            notice = (
                f"gap of {pd.Timedelta(ns - last)} before {iso(ns)}: the window restarts and "
                f"needs {self.required} consecutive readings"
            )
            events = [{**self._named(key), "notice": notice}]
            buffer.clear()
            unsent.clear()
        numbers = [values[c] for c in self.numbers]
        buffer.append(ns, numbers)
        self.last[key] = ns
        unsent.append(self._row(key, when, numbers) if self.keeps_rows else None)
        if buffer.size < self.required:
            return [], events
        return [(line, self._window(key, buffer, unsent))], events

    def _named(self, key: str) -> dict[str, str]:
        """The field naming the series, for an event or error line."""
        return {self.serving.entity: key} if self.serving.entity else {}

    def _row(self, key: str, when: datetime, numbers: list[float]) -> dict[str, Any]:
        """A reading's raw row as `input_rows` gives it (the time as ISO text in UTC)."""
        named = (key, when.isoformat()) if self.serving.entity else (when.isoformat(),)
        return dict(zip(self.row_names, (*named, *numbers), strict=True))

    def _window(self, key: str, buffer: SeriesBuffer, unsent: list) -> StreamWindow:
        """The buffer's newest window; its fresh readings are the ones no window held."""
        times, values = buffer.window()
        rows = {self.time_column: times.view("datetime64[ns]")}
        rows |= {c: values[:, n] for n, c in enumerate(self.numbers)}
        fresh = min(len(unsent), self.required)
        readings = tuple(unsent[-fresh:]) if self.keeps_rows else ()
        unsent.clear()
        return StreamWindow(key, rows, fresh, readings)

    @staticmethod
    def _disorder(key: str, ns: int, last: int) -> str:
        if ns == last:
            return f"duplicate reading for {key!r} at {iso(ns)}"
        return f"out of order: {key!r} reading at {iso(ns)} is before the last one at {iso(last)}"


def iso(ns: int) -> str:
    return pd.Timestamp(ns, tz="UTC").isoformat()
