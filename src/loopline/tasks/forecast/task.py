"""The forecast family: a team's own series, forecast `horizon` steps ahead, no code.

A params section `forecast:` names the columns (an entity per series, or none for a single
series; the time; the target; numeric covariates observed with it), the step between
readings, the horizon, the target's lags, the input windows tuning chooses among and the
seasons of the seasonal-naive baseline. From it the bound task (`Task.bind`) takes its data
contract, and every model's feature spec keeps it, so the service reads the model's own.

The machinery is the one solar uses (solar is this family plus pvlib physics): windows of
consecutive readings per series (a gap starts a new window, so a missing reading never
shifts a later one into its place; late rows are dropped at ingest by the per-series
watermark), an LSTM/GRU over the window, chronological sets with a gap, and baselines
scored on the very test windows the model is: persistence (the last reading, held) and
seasonal naive (the reading one season earlier).
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import pandas as pd

from loopline.config import Dimension, Params, Section
from loopline.offline.features import FeatureSpec, fit_normalization
from loopline.offline.labeling import Examples
from loopline.offline.reference import EVENT_TIME
from loopline.offline.split import evaluation_view
from loopline.offline.validate import Rule
from loopline.tasks.base import FeatureOptions, Hyperparameters, LivePicture, Task
from loopline.tasks.forecast.arrays import WindowBatch, day_of_week, hour_of_day
from loopline.tasks.forecast.options import SeriesOptions, with_window
from loopline.tasks.forecast.scoring import evaluate_candidate, plot_per_step_rmse
from loopline.tasks.forecast.serving import ForecastServing, serving_for, types_for
from loopline.tasks.forecast.settings import (
    CALENDAR,
    MOVED,
    SERIES,
    ForecastKnobs,
    ForecastSettings,
)
from loopline.tasks.forecast.windows import add_forecast_labels, make_windows, shifted_values

# Finite values only: an infinity passes a range without bounds and poisons training.
_LARGEST = float(np.finfo(np.float64).max)


@dataclass(frozen=True, kw_only=True)
class ForecastHyperparameters(Hyperparameters):
    """The forecaster's shape and regularisation, and the input window it reads."""

    hidden_size: int
    num_layers: int
    dropout: float
    window: int
    cell: Literal["lstm", "gru"]


@dataclass(frozen=True)
class ForecastOptions(SeriesOptions):
    """What a forecaster's spec keeps of its section: the series (`SeriesOptions`: horizon,
    step, window, group and time columns), its entity and covariate columns, the target's
    lags, the seasons of its baseline and whether it is clipped at zero."""

    entity: str | None = None
    covariates: list[str] | None = None
    lags: list[int] | None = None
    season: list[int] | None = None
    nonnegative: bool = False


def too_short_for_windows(frame: pd.DataFrame, spec: FeatureSpec, target_set: str) -> str:
    """Why `target_set` gave no windows: the rule a window meets, the most readings of that
    set any series has, and the knobs that change it."""
    options = spec.options
    in_set = frame["split"] == target_set
    most = int(in_set.groupby(frame[options.group_column]).sum().max()) if len(frame) else 0
    return (
        f"no {target_set} windows: a window's origin and its {options.horizon} readings ahead "
        f"(forecast.horizon) must lie in the {target_set} set, after {options.window} readings "
        f"of input (the window), all consecutive at {options.freq}; the most {target_set} "
        f"readings any series has is {most}. Give {target_set} more time (split.{target_set}, "
        "or more data), or shorten forecast.horizon or forecast.window"
    )


def lag_column(k: int) -> str:
    return f"target_lag_{k}"


@functools.lru_cache(maxsize=64)
def _serving(entity: str | None, time: str, target: str, covariates: tuple[str, ...]):
    """One serving adapter per configuration (its API types name the columns)."""
    types = types_for(entity, time, target, list(covariates), "Series")
    return serving_for(types, entity, time)


def calendar(stamps: pd.DatetimeIndex) -> dict[str, np.ndarray]:
    """Time of day and day of week as points on circles (UTC): daily and weekly cycles."""
    hour = (stamps.hour + stamps.minute / 60).to_numpy()
    day = (stamps.day_of_week + hour / 24).to_numpy()
    return circles(hour, day)


def calendar_of_epochs(ns: np.ndarray) -> dict[str, np.ndarray]:
    """`calendar` from UTC epoch nanoseconds (any shape): integer arithmetic, no pandas."""
    hour = hour_of_day(ns)
    return circles(hour, day_of_week(ns) + hour / 24)


def circles(hour: np.ndarray, day: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "hour_sin": np.sin(2 * np.pi * hour / 24),
        "hour_cos": np.cos(2 * np.pi * hour / 24),
        "dow_sin": np.sin(2 * np.pi * day / 7),
        "dow_cos": np.cos(2 * np.pi * day / 7),
    }


def seasonal_naive(
    frame: pd.DataFrame, keys: pd.DataFrame, spec: FeatureSpec, season: int
) -> np.ndarray:
    """At each key's origin, step h forecast by the reading one season before it, on the
    latest cycle already observed at the origin (a step past one season reads two back)."""
    group, time, target = spec.options.group_column, spec.options.time_column, spec.target_column
    out = np.full((len(keys), spec.options.horizon), np.nan)
    indexed = frame.set_index([group, time]).sort_index()
    step = pd.Timedelta(spec.options.freq)
    for key, rows in keys.groupby(group, sort=False):
        values = indexed.loc[key, target]
        origins = pd.DatetimeIndex(rows[time])
        for h in range(1, spec.options.horizon + 1):
            back = -(-h // season)  # ceil(h / season) cycles back
            at = origins + step * (h - season * back)
            out[rows.index, h - 1] = values.reindex(at).to_numpy()
    return out


class ForecastTask(Task):
    """A series of a team's own (section `forecast:`), or a subclass with fixed columns
    and physics of its own (solar)."""

    name: ClassVar[str] = "forecast"
    Settings: ClassVar[type[Section]] = ForecastSettings
    Hyperparameters: ClassVar[type[Hyperparameters]] = ForecastHyperparameters
    Options: ClassVar[type[FeatureOptions]] = ForecastOptions
    Serving: ClassVar[type] = ForecastServing
    architecture: ClassVar[tuple[str, ...]] = ("hidden_size", "num_layers", "cell")
    split_kind: ClassVar[Literal["chronological", "stratified", "grouped"]] = "chronological"
    transferred_features: ClassVar[tuple[str, ...]] = ("mean", "std", "target_mean", "target_std")
    # Keys of shared sections that moved into the family's own section (named in errors).
    moved_keys: ClassVar[dict[str, str]] = {".".join(k): v for k, v in MOVED.items()}
    # The unbound task: the section's defaults (bind sets the instance's own).
    schema: ClassVar[dict[str, str]] = {"timestamp": "datetime", "value": "float"}
    key_columns: ClassVar[list[str]] = ["timestamp"]
    time_column: ClassVar[str | None] = "timestamp"
    target_column: ClassVar[str] = "value"
    windows: ClassVar[tuple[int, ...]] = (24, 48)

    # ------------------------------------------------------------------ params

    def bind(self, settings: ForecastKnobs) -> ForecastTask:
        bound = copy.copy(self)
        bound.windows = tuple(settings.window)
        if isinstance(settings, ForecastSettings):
            bound._take_columns(settings)
        return bound

    def _take_columns(self, s: ForecastSettings) -> None:
        for column in (s.time, s.target, *s.covariates, *([s.entity] if s.entity else [])):
            if not column.isidentifier() or column.startswith("model_"):
                raise ValueError(
                    f"column {column!r} must be a plain name (letters, digits, '_'): it is a "
                    "field of the service's requests"
                )
        entity = [s.entity] if s.entity else []
        self.schema = {
            **dict.fromkeys(entity, "string"),
            s.time: "datetime",
            **dict.fromkeys(s.covariates, "float"),
            s.target: "float",
        }
        self.key_columns = [*entity, s.time]
        self.time_column, self.target_column = s.time, s.target
        self.Serving = _serving(s.entity, s.time, s.target, tuple(s.covariates))

    def knobs(self, params: Params) -> ForecastKnobs:
        """The family's knobs in the running task's own section."""
        return params.task_params

    def default_space(self) -> dict[str, Dimension]:
        return {
            "hidden_size": Dimension(choices=[32, 64]),
            "num_layers": Dimension(choices=[1, 2]),
            "dropout": Dimension(low=0.0, high=0.3),
            "learning_rate": Dimension(low=1e-3, high=1e-2, log=True),
            "batch_size": Dimension(choices=[64, 128]),
            "window": Dimension(choices=list(self.windows)),
            "cell": Dimension(choices=["lstm", "gru"]),
        }

    # ------------------------------------------------------------------ data

    def split_gap(self, params: Params) -> int:
        """The longest input window the search may pick, and at least the horizon."""
        windows = params.tune.search_space["window"]
        longest = max(windows.choices) if windows.choices else int(windows.high)
        return max(int(longest), self.knobs(params).horizon)

    def history_steps(self, params: Params) -> int:
        """A window plus the longest lag or season (a baseline reads that far back)."""
        knobs = self.knobs(params)
        return self.split_gap(params) + max([*knobs.lags, *knobs.season], default=0)

    def rules(self, params: Params) -> list[Rule]:
        entity = [c for c in self.key_columns if c != self.time_column]
        numbers = tuple(c for c, kind in self.schema.items() if kind == "float")
        rules = [Rule(f"{c}_not_null", "not_null", column=c) for c in self.schema]
        rules += [
            Rule(f"{c}_finite", "between", column=c, min=-_LARGEST, max=_LARGEST) for c in numbers
        ]
        if self.knobs(params).nonnegative:
            target = self.target_column
            rules.append(Rule(f"{target}_not_negative", "between", column=target, min=0))
        time = self.time_column
        rules += [
            Rule("reading_not_duplicated", "unique", columns=tuple(self.key_columns)),
            Rule(f"{time}_not_in_future", "not_future", column=time),
        ]
        if entity:  # a reading earlier than its series' last one in the same batch
            rules.append(Rule(f"{time}_in_order", "in_order", column=time, group=entity[0]))
        return rules

    # ------------------------------------------------------------------ features and labels

    def new_feature_spec(self, params: Params) -> FeatureSpec:
        s: ForecastSettings = self.knobs(params)
        return FeatureSpec(
            task=self.name,
            feature_columns=[
                s.target,
                *s.covariates,
                *CALENDAR,
                *(lag_column(k) for k in s.lags),
            ],
            target_column=s.target,
            options=ForecastOptions(
                horizon=s.horizon,
                freq=s.freq,
                group_column=s.entity or SERIES,
                time_column=s.time,
                entity=s.entity,
                covariates=list(s.covariates),
                lags=list(s.lags),
                season=list(s.season),
                nonnegative=s.nonnegative,
            ),
        )

    def model_columns(self, spec: FeatureSpec) -> list[str]:
        """The raw columns a model reads besides the entity (what a reading must hold)."""
        return [spec.options.time_column, *(spec.options.covariates or []), spec.target_column]

    def batch_spec(self, spec: FeatureSpec, groups: dict[str, str]) -> FeatureSpec:
        """The spec for a serving batch whose groups (`<key>#<i>`) stand for series keys;
        a task whose features depend on the series (a site's sun) re-keys them here."""
        return spec

    def add_features(self, frame: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
        """Calendar and lag columns for raw rows; pure in (rows, spec), shared with the
        service. A single series gets a constant group column."""
        group, time = spec.options.group_column, spec.options.time_column
        if group not in frame.columns:
            frame = frame.assign(**{group: "series"})
        frame = frame.sort_values([group, time]).reset_index(drop=True)
        stamps = pd.DatetimeIndex(pd.to_datetime(frame[time], utc=True))
        columns = calendar(stamps)
        for k in spec.options.lags or []:
            columns[lag_column(k)] = shifted_values(
                frame, spec.target_column, -k, group, time, spec.options.freq
            )
        return pd.concat([frame, pd.DataFrame(columns, index=frame.index)], axis=1)

    def window_features(self, batch: WindowBatch, spec: FeatureSpec) -> dict[str, np.ndarray]:
        """`add_features`' columns for the last `spec.options.window` readings of each window of a
        serving batch, on arrays (each (N, window)); equal to `add_features` on the same
        rows (tests/unit/test_forecast_arrays.py). Lags are readings k places back."""
        n = spec.options.window
        last = batch.last(n)
        columns = dict(last.values)
        columns.update(calendar_of_epochs(last.times))
        for k in spec.options.lags or []:
            columns[lag_column(k)] = batch.lagged(spec.target_column, k, n)
        return columns

    def add_labels(
        self, frame: pd.DataFrame, spec: FeatureSpec, human: pd.DataFrame | None = None
    ) -> pd.DataFrame:
        """Each row's next `horizon` readings: the data labels itself (no human labels)."""
        return add_forecast_labels(frame, spec)

    def fit_features(self, spec: FeatureSpec, train_rows: pd.DataFrame) -> FeatureSpec:
        return fit_normalization(spec, train_rows)

    def configure(self, spec: FeatureSpec, hparams: ForecastHyperparameters) -> FeatureSpec:
        """The input window is a hyperparameter: the spec records the one chosen."""
        return with_window(spec, hparams.window)

    def examples(self, frame: pd.DataFrame, spec: FeatureSpec, target_set: str) -> Examples:
        """Windows whose forecast origin and labels lie in `target_set`; validation and test
        windows may read the gap rows before their set (past readings a forecaster sees)."""
        history = () if target_set == "train" else ("gap",)
        window = spec.options.window
        made = make_windows(frame, spec, window, target_set=target_set, history_sets=history)
        if len(made) == 0 and target_set in ("train", "val"):
            # Training needs both; say which rule the series are too short for, not just
            # that a set came out empty.
            raise ValueError(too_short_for_windows(frame, spec, target_set))
        return made

    # ------------------------------------------------------------------ model

    def build_model(self, hparams: ForecastHyperparameters, spec: FeatureSpec):
        # torch: training only
        from loopline.tasks.forecast.model import Forecaster

        return Forecaster(
            n_features=len(spec.feature_columns),
            horizon=spec.options.horizon,
            hidden_size=hparams.hidden_size,
            num_layers=hparams.num_layers,
            dropout=hparams.dropout,
            cell=hparams.cell,
            target_mean=spec.target_mean,
            target_std=spec.target_std,
            nonnegative=self.nonnegative(spec),
        )

    def nonnegative(self, spec: FeatureSpec) -> bool:
        return bool(spec.options.nonnegative)

    def probe_input(self, spec: FeatureSpec) -> np.ndarray:
        """Two windows of zeros: (2, window, features), as the model reads them."""
        return np.zeros((2, spec.options.window, len(spec.feature_columns)), np.float32)

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, frame, spec: FeatureSpec, model, params: Params, champion=None):
        test_rows = evaluation_view(self, frame, spec, params)
        return evaluate_candidate(self, test_rows, spec, model, params, champion)

    def evaluation_report(self, evaluation, test_rows, spec, model, params, folder: Path):
        path = folder / "rmse_per_horizon_step.png"
        return [plot_per_step_rmse(evaluation.scores, path, unit=self.unit(spec))]

    def unit(self, spec: FeatureSpec) -> str:
        return spec.target_column

    def incomparable(self, candidate: FeatureSpec, champion: FeatureSpec) -> str | None:
        """Another horizon, step or series columns: the forecasts mean other things."""
        for name in ("horizon", "freq", "group_column", "time_column"):
            mine, theirs = getattr(candidate.options, name), getattr(champion.options, name)
            if mine != theirs:
                return f"its {name} is {theirs!r}, the candidate's {mine!r}"
        return None

    def loss_dependence(self, spec: FeatureSpec) -> int:
        """Windows starting a step apart share all but one of their `horizon` targets."""
        return int(spec.options.horizon)

    def baselines(
        self, frame: pd.DataFrame, keys: pd.DataFrame, spec: FeatureSpec, params: Params
    ) -> dict[str, np.ndarray]:
        """Persistence (the reading at the origin, held for every step) and seasonal naive
        (the reading one season back) per season: the first is `seasonal_naive`, the others
        `seasonal_naive_<steps>`."""
        out = {"persistence": persistence(frame, keys, spec)}
        for n, season in enumerate(spec.options.season or []):
            name = "seasonal_naive" if n == 0 else f"seasonal_naive_{season}"
            out[name] = seasonal_naive(frame, keys, spec, season)
        return out

    # ------------------------------------------------------------------ monitoring

    def monitor_inputs(self, rows: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
        """Every numeric reading column, the target too: a forecaster reads past power."""

        numbers = [c for c, kind in self.schema.items() if kind == "float" and c in rows]
        out = rows[numbers].apply(pd.to_numeric, errors="coerce")
        out[EVENT_TIME] = self._event_times(rows)
        return out

    def logged_rows(self, records: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
        """The newest reading of each logged window (the log keeps it as `inputs.last`),
        with its series' key; a reading several windows ended on is kept once."""
        readings = [i.get("last") if isinstance(i, dict) else None for i in records["inputs"]]
        keep = [n for n, r in enumerate(readings) if isinstance(r, dict)]
        if not keep:
            return pd.DataFrame(columns=[spec.options.group_column, *self.model_columns(spec)])
        rows = pd.DataFrame([readings[n] for n in keep])
        group, time = spec.options.group_column, spec.options.time_column
        rows[group] = records["key"].iloc[keep].astype(str).to_numpy()
        rows[time] = pd.to_datetime(rows[time], utc=True, errors="coerce")
        return rows.drop_duplicates([group, time], keep="last").reset_index(drop=True)

    def reference_times(self, examples, spec: FeatureSpec) -> np.ndarray:
        return pd.to_datetime(examples.keys[spec.options.time_column], utc=True).to_numpy()

    def monitor_outputs(self, outputs: list, spec: FeatureSpec) -> pd.DataFrame:
        """The forecast's mean over the horizon and its last step."""
        values = self.monitor_forecasts(outputs, spec)
        last = f"forecast_step_{spec.options.horizon}"
        return pd.DataFrame({"forecast_mean": values.mean(axis=1), last: values[:, -1]})

    def reference_losses(self, y: np.ndarray, outputs: np.ndarray, spec: FeatureSpec):
        """Squared error averaged over the horizon's steps, per test window."""
        return np.mean((np.asarray(outputs, np.float64) - np.asarray(y, np.float64)) ** 2, axis=1)

    def live_losses(self, predictions, rows, labels, spec: FeatureSpec) -> np.ndarray:
        """Squared error over the horizon of each logged forecast whose every step has a
        measured reading (the readings later windows brought), else NaN."""
        forecast, measured = self.joined(predictions, rows, spec)
        error = np.mean((forecast - measured) ** 2, axis=1)
        return np.where(np.isfinite(error), error, np.nan)

    def reference_bias(self, y: np.ndarray, outputs: np.ndarray, spec: FeatureSpec):
        """(forecast - measured, |measured|) summed over the horizon, per test window."""
        y, outputs = np.asarray(y, np.float64), np.asarray(outputs, np.float64)
        return np.stack([(outputs - y).sum(axis=1), np.abs(y).sum(axis=1)], axis=1)

    def live_bias(self, predictions, rows, labels, spec: FeatureSpec):
        forecast, measured = self.joined(predictions, rows, spec)
        pairs = self.reference_bias(measured, forecast, spec)
        pairs[~np.isfinite(pairs).all(axis=1)] = np.nan
        return pairs

    def joined(self, predictions, rows, spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
        """(the logged forecasts, the readings measured at their steps: NaN where none yet),
        each (N, horizon); the readings joined on series key and time."""
        forecast = self.monitor_forecasts(predictions["output"], spec)
        o = spec.options
        horizon, target, time, group = o.horizon, spec.target_column, o.time_column, o.group_column
        measured = np.full((len(predictions), horizon), np.nan)
        if rows.empty or target not in rows or not len(predictions):
            return forecast, measured
        if group not in rows and predictions["key"].nunique() == 1:  # a single series
            rows = rows.assign(**{group: str(predictions["key"].iloc[0])})
        truth = rows.dropna(subset=[target]).copy()
        truth[time] = pd.to_datetime(truth[time], utc=True)
        truth[group] = truth[group].astype(str)
        truth = truth.set_index([group, time])[target]
        truth = truth[~truth.index.duplicated(keep="last")]
        truth.index = truth.index.set_levels(truth.index.levels[1].as_unit("ns"), level=1)
        origins = pd.DatetimeIndex(pd.to_datetime(predictions["origin"], utc=True)).as_unit("ns")
        keys = predictions["key"].astype(str).to_numpy()
        steps = np.arange(1, horizon + 1) * pd.Timedelta(o.freq).to_timedelta64()
        # Every (forecast, step) time at once: one lookup, not one per step of the horizon.
        times = (origins.tz_convert(None).to_numpy()[:, None] + steps[None, :]).ravel()
        at = pd.MultiIndex.from_arrays(
            [np.repeat(keys, spec.options.horizon), pd.DatetimeIndex(times).tz_localize("UTC")]
        )
        measured = truth.reindex(at).to_numpy(dtype=np.float64).reshape(len(keys), -1)
        return forecast, measured

    def live_picture(self, predictions, rows, spec: FeatureSpec) -> LivePicture:
        """Each series' next-step forecast against the reading measured then (NaN until
        it arrives), at the time forecast."""
        forecast, measured = self.joined(predictions, rows, spec)
        at = pd.to_datetime(predictions["origin"], utc=True) + pd.Timedelta(spec.options.freq)
        frame = pd.DataFrame(
            {
                "time": at.to_numpy(),
                "key": predictions["key"].astype(str).to_numpy(),
                "forecast": forecast[:, 0],
                "measured": measured[:, 0],
            }
        )
        title = f"{spec.target_column}: forecast one step ahead against measured"
        return LivePicture("lines", title, frame.sort_values("time"), unit=spec.target_column)

    def monitor_forecasts(self, outputs, spec: FeatureSpec) -> np.ndarray:
        values = np.full((len(outputs), spec.options.horizon), np.nan)
        for n, output in enumerate(outputs):
            if isinstance(output, list) and len(output) == spec.options.horizon:
                values[n] = np.asarray(output, dtype=np.float64)
        return values

    def truth_delay(self, spec: FeatureSpec) -> pd.Timedelta:
        return pd.Timedelta(spec.options.freq) * spec.options.horizon

    def quality_name(self, spec: FeatureSpec) -> str:
        return "rmse"

    def quality_from_metrics(self, metrics: dict[str, float]) -> float | None:
        return metrics.get("test_rmse")

    def quality_figure(self, losses: np.ndarray):
        """RMSE: the root of the mean squared error."""
        return np.sqrt(np.mean(losses, axis=-1))


def persistence(frame: pd.DataFrame, keys: pd.DataFrame, spec: FeatureSpec) -> np.ndarray:
    """The reading at each key's origin, held for every step ahead."""
    group, time, target = spec.options.group_column, spec.options.time_column, spec.target_column
    indexed = frame.set_index([group, time])[target]
    at = pd.MultiIndex.from_frame(keys[[group, time]])
    last = indexed[~indexed.index.duplicated()].reindex(at).to_numpy(dtype=np.float64)
    return np.repeat(last[:, None], spec.options.horizon, axis=1)


# The unbound task serves the section's defaults (a bound one, its own columns).
ForecastTask.Serving = _serving(None, "timestamp", "value", ())
