"""Solar power forecasting: day-ahead AC power of PV systems from weather and the clock.

The built-in source is real weather: the TMY3 files that ship inside pvlib (Greensboro, NC and
Sand Point, AK), turned into the AC power of a configured PV system by pvlib's physical model
chain. Features are the clock (time of day, season), the weather, lagged power and the
clear-sky power of the system, which is known ahead from the sun's position alone.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from loopline.config import Dimension, Params, Section
from loopline.evaluate import evaluate_candidate, plot_per_step_rmse
from loopline.features import FeatureSpec, fit_normalization
from loopline.labeling import Examples, add_forecast_labels, make_windows, shifted_values
from loopline.split import evaluation_view
from loopline.tasks.base import FeatureOptions, Hyperparameters, Task
from loopline.tasks.solar.serving import SolarServing
from loopline.validate import Rule

# pvlib's bundled TMY3 files; locations come from each file's own header.
BUILTIN_SITES = {"greensboro": "723170TYA.CSV", "sand_point": "703165TY.csv"}
WEATHER = ["ghi", "dni", "dhi", "temp_air", "wind_speed"]


def _pvlib_data_dir() -> Path:
    import pvlib

    return Path(pvlib.__file__).parent / "data"


def _model_chain(site: dict[str, Any], system: PVSystemParams | dict[str, Any]):
    from pvlib.location import Location
    from pvlib.modelchain import ModelChain
    from pvlib.pvsystem import PVSystem
    from pvlib.temperature import TEMPERATURE_MODEL_PARAMETERS

    system = PVSystemParams.model_validate(system)
    pv = PVSystem(
        surface_tilt=system.surface_tilt,
        surface_azimuth=system.surface_azimuth,
        module_parameters={"pdc0": system.pdc0_w, "gamma_pdc": system.gamma_pdc},
        inverter_parameters={"pdc0": system.pdc0_w, "eta_inv_nom": system.inverter_efficiency},
        temperature_model_parameters=TEMPERATURE_MODEL_PARAMETERS["sapm"][
            "open_rack_glass_polymer"
        ],
    )
    location = Location(site["latitude"], site["longitude"], altitude=site["altitude"])
    return ModelChain(pv, location, aoi_model="physical", spectral_model="no_loss"), location


def ac_power(weather: pd.DataFrame, site: dict[str, Any], system: Any) -> np.ndarray:
    """AC power (W) of the PV system under `weather` (indexed by UTC time)."""
    chain, _ = _model_chain(site, system)
    chain.run_model(weather[WEATHER])
    return np.clip(chain.results.ac.to_numpy(dtype=np.float64), 0.0, None)


def _clearsky_power_at(times: pd.DatetimeIndex, site: dict[str, Any], system: Any) -> np.ndarray:
    chain, location = _model_chain(site, system)
    sky = location.get_clearsky(times, model="ineichen")
    weather = sky.assign(temp_air=20.0, wind_speed=1.0)
    chain.run_model(weather[WEATHER])
    return np.clip(chain.results.ac.to_numpy(dtype=np.float64), 0.0, None)


@functools.lru_cache(maxsize=512)
def _clearsky_month(
    site_key: str, system_key: str, month_start_ns: int, phase_ns: int, step_ns: int
):
    """Clear-sky power on one month's grid of `step` (offset by `phase`), computed once."""
    start = pd.Timestamp(month_start_ns, tz="UTC")
    end = start + pd.offsets.MonthBegin(1)
    grid = pd.date_range(
        start + pd.Timedelta(phase_ns), end, freq=pd.Timedelta(step_ns), inclusive="left"
    )
    values = _clearsky_power_at(grid, json.loads(site_key), json.loads(system_key))
    values.setflags(write=False)
    return values


def clearsky_power(
    times: pd.DatetimeIndex, site: dict[str, Any], system: Any, freq: str = "1h"
) -> np.ndarray:
    """AC power (W) the system would make under a clear sky at `times` (pvlib Ineichen).

    Clear-sky power depends on the site, the system and the instant only, and one pvlib model
    chain run costs ~17 ms whatever its length: values are computed a month of `freq` steps
    at a time and cached, so the service pays that cost once per site and month, not per
    reading. Every pvlib step is element-wise in time, so a cached value equals a direct one.
    """
    times = pd.DatetimeIndex(times)
    if times.tz is None:
        times = times.tz_localize("UTC")
    times = times.tz_convert("UTC")
    if len(times) == 0:
        return np.zeros(0)
    system = PVSystemParams.model_validate(system).model_dump()
    site_key, system_key = json.dumps(site, sort_keys=True), json.dumps(system, sort_keys=True)
    step = pd.Timedelta(freq).value
    # Nanoseconds explicitly: pandas 3 may keep microseconds, and numpy is cheaper than a
    # pandas groupby on the few (month, phase) blocks a call touches.
    ns = times.tz_convert(None).as_unit("ns").asi8
    months = ns.astype("datetime64[ns]").astype("datetime64[M]").astype("datetime64[ns]")
    month_ns = months.astype(np.int64)
    phases = (ns - month_ns) % step
    out = np.empty(len(times))
    blocks = np.stack([month_ns, phases], axis=1)
    for month, phase in np.unique(blocks, axis=0):
        where = (month_ns == month) & (phases == phase)
        block = _clearsky_month(site_key, system_key, int(month), int(phase), step)
        out[where] = block[(ns[where] - month - phase) // step]
    return out


def read_builtin_site(name: str, year: int) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One bundled TMY3 file as UTC-stamped weather plus its location."""
    import pvlib

    path = _pvlib_data_dir() / BUILTIN_SITES[name]
    data, meta = pvlib.iotools.read_tmy3(path, coerce_year=year, map_variables=True)
    site = {
        "latitude": float(meta["latitude"]),
        "longitude": float(meta["longitude"]),
        "altitude": float(meta["altitude"]),
    }
    weather = data[WEATHER].copy()
    # TMY3 values are averages over the hour *ending* at their stamp; stamping them at the
    # hour's midpoint makes the sun's position (model chain, clear sky) match the average.
    weather.index = weather.index.tz_convert("UTC") - pd.Timedelta("30min")
    return weather, site


def site_locations(params: Params) -> dict[str, dict[str, Any]]:
    return {name: read_builtin_site(name, params.solar.year)[1] for name in params.solar.sites}


class PVSystemParams(Section):
    surface_tilt: Annotated[float, Field(ge=0, le=90)] = 30.0
    surface_azimuth: Annotated[float, Field(ge=0, lt=360)] = 180.0
    pdc0_w: Annotated[float, Field(gt=0)] = 5000.0
    gamma_pdc: Annotated[float, Field(ge=-0.02, le=0)] = -0.004
    inverter_efficiency: Annotated[float, Field(gt=0, le=1)] = 0.96


SolarSite = Literal["greensboro", "sand_point"]


class SolarParams(Section):
    """The built-in solar source: TMY3 weather shipped with pvlib → AC power of a PV system."""

    sites: list[SolarSite] = Field(default_factory=lambda: ["greensboro", "sand_point"])
    year: Annotated[int, Field(ge=1990, le=2100)] = 2021
    system: PVSystemParams = PVSystemParams()

    @field_validator("sites")
    @classmethod
    def _sites_unique(cls, sites: list[str]) -> list[str]:
        if not sites or len(set(sites)) != len(sites):
            raise ValueError("solar.sites must list at least one site, each once")
        return sites


@dataclass(frozen=True)
class SolarOptions(FeatureOptions):
    """What the features need beyond the spec: lags and clear-sky leads (steps), each
    site's location, and the PV system whose clear-sky power they compute."""

    lags: list[int]
    clearsky_leads: list[int]
    sites: dict[str, dict[str, float]]
    system: dict[str, float]


@dataclass(frozen=True, kw_only=True)
class SolarHyperparameters(Hyperparameters):
    """The forecaster's shape and regularisation, and the input window it reads."""

    hidden_size: int
    num_layers: int
    dropout: float
    window: int
    cell: Literal["lstm", "gru"]


class SolarTask(Task):
    Settings: ClassVar[type[Section]] = SolarParams
    Hyperparameters: ClassVar[type[Hyperparameters]] = SolarHyperparameters
    Options: ClassVar[type[FeatureOptions]] = SolarOptions
    Serving: ClassVar[type] = SolarServing
    architecture: ClassVar[tuple[str, ...]] = ("hidden_size", "num_layers", "cell")
    name: ClassVar[str] = "solar"
    schema: ClassVar[dict[str, str]] = {
        "site_id": "string",
        "timestamp": "datetime",
        **dict.fromkeys(WEATHER, "float"),
        "power_w": "float",
    }
    key_columns: ClassVar[list[str]] = ["site_id", "timestamp"]
    time_column: ClassVar[str | None] = "timestamp"
    target_column: ClassVar[str] = "power_w"
    split_kind: ClassVar[Literal["chronological", "stratified", "grouped"]] = "chronological"
    transferred_features: ClassVar[tuple[str, ...]] = ("mean", "std", "target_mean", "target_std")

    def default_space(self) -> dict[str, Dimension]:
        return {
            "hidden_size": Dimension(choices=[32, 64]),
            "num_layers": Dimension(choices=[1, 2]),
            "dropout": Dimension(low=0.0, high=0.3),
            "learning_rate": Dimension(low=1e-3, high=1e-2, log=True),
            "batch_size": Dimension(choices=[64, 128]),
            "window": Dimension(choices=[24, 48]),
            "cell": Dimension(choices=["lstm", "gru"]),
        }

    def split_gap(self, params: Params) -> int:
        """The longest input window the search may pick, and at least the horizon."""
        windows = params.tune.search_space["window"]
        longest = max(windows.choices) if windows.choices else int(windows.high)
        return max(int(longest), params.labeling.horizon)

    def history_steps(self, params: Params) -> int:
        """A window plus the longest lag."""
        return self.split_gap(params) + max(params.features.lags, default=0)

    def schema_for(self, params: Params) -> dict[str, str]:
        return self.schema  # fixed columns

    def load_builtin(self, params: Params) -> pd.DataFrame:
        frames = []
        for name in params.solar.sites:
            weather, site = read_builtin_site(name, params.solar.year)
            power = ac_power(weather, site, params.solar.system)
            frames.append(
                weather.assign(power_w=power, site_id=name).rename_axis("timestamp").reset_index()
            )
        frame = pd.concat(frames, ignore_index=True)
        return frame[list(self.schema)]

    def rules(self, params: Params) -> list[Rule]:
        capacity = params.solar.system.pdc0_w * 1.2
        ranges = {
            "ghi": (0, 1500),
            "dni": (0, 1400),
            "dhi": (0, 1000),
            "temp_air": (-60, 60),
            "wind_speed": (0, 75),
            "power_w": (0, capacity),
        }
        rules = [Rule(f"{c}_not_null", "not_null", column=c) for c in self.schema]
        rules += [
            Rule(f"{c}_in_range", "between", column=c, min=lo, max=hi)
            for c, (lo, hi) in ranges.items()
        ]
        rules += [
            Rule("site_id_known", "in_set", column="site_id", values=tuple(params.solar.sites)),
            Rule("reading_not_duplicated", "unique", columns=("site_id", "timestamp")),
            Rule("timestamp_in_order", "in_order", column="timestamp", group="site_id"),
            Rule("timestamp_not_in_future", "not_future", column="timestamp"),
        ]
        return rules

    def new_feature_spec(self, params: Params) -> FeatureSpec:
        lags = [f"power_lag_{k}" for k in params.features.lags]
        leads = [f"clearsky_lead_{k}" for k in params.features.clearsky_leads]
        columns = [
            *WEATHER,
            "power_w",
            "clearsky_w",
            "clearsky_index",
            "hour_sin",
            "hour_cos",
            "doy_sin",
            "doy_cos",
            *lags,
            *leads,
        ]
        return FeatureSpec(
            task=self.name,
            feature_columns=columns,
            target_column="power_w",
            horizon=params.labeling.horizon,
            freq=params.features.freq,
            group_column="site_id",
            time_column="timestamp",
            options=SolarOptions(
                lags=list(params.features.lags),
                clearsky_leads=list(params.features.clearsky_leads),
                sites=site_locations(params),
                system=params.solar.system.model_dump(),
            ),
        )

    def add_features(self, frame: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
        """Feature columns for raw rows; pure in (rows, spec), shared with the service."""
        frame = frame.sort_values(["site_id", "timestamp"]).reset_index(drop=True)
        sites, system = spec.options.sites, spec.options.system
        step = pd.Timedelta(spec.freq)
        clearsky = np.full(len(frame), np.nan)
        leads = {k: np.full(len(frame), np.nan) for k in spec.options.clearsky_leads}
        unknown = sorted(set(frame["site_id"].unique()) - set(sites))
        if unknown:
            raise ValueError(f"site {unknown[0]!r} has no location in the feature spec")
        # One clear-sky lookup per location, not per site id: the service passes a batch of
        # windows as one group each, all at the same few locations.
        locations = {s: json.dumps(loc, sort_keys=True) for s, loc in sites.items()}
        codes, keys = pd.factorize(frame["site_id"].map(locations).to_numpy())
        stamps = pd.DatetimeIndex(frame["timestamp"])
        for code, location in enumerate(keys):
            where = np.flatnonzero(codes == code)
            site = json.loads(location)
            clearsky[where] = clearsky_power(stamps[where], site, system, spec.freq)
            for k in leads:
                leads[k][where] = clearsky_power(stamps[where] + step * k, site, system, spec.freq)
        # Local solar time would need the longitude; UTC hour + season is enough for a
        # model that also sees clear-sky power, which carries the site's own sun path.
        hour = (stamps.hour + stamps.minute / 60).to_numpy()
        doy = stamps.dayofyear.to_numpy()
        # Measured / clear-sky power: the cloudiness the notes' smart persistence carries
        # forward. Below 50 W of clear-sky power (dawn, dusk, night) the ratio is noise: 0.
        power = frame["power_w"].to_numpy(dtype=np.float64)
        index = np.where(clearsky >= 50.0, power / np.maximum(clearsky, 50.0), 0.0)
        columns = {
            "clearsky_w": clearsky,
            "clearsky_index": np.clip(index, 0.0, 1.5),
            "hour_sin": np.sin(2 * np.pi * hour / 24),
            "hour_cos": np.cos(2 * np.pi * hour / 24),
            "doy_sin": np.sin(2 * np.pi * doy / 365.25),
            "doy_cos": np.cos(2 * np.pi * doy / 365.25),
        }
        for k in spec.options.lags:
            columns[f"power_lag_{k}"] = shifted_values(
                frame, "power_w", -k, "site_id", "timestamp", spec.freq
            )
        for k, values in leads.items():
            columns[f"clearsky_lead_{k}"] = values
        # One concat, not a column insert per feature (pandas' per-insert cost adds up).
        out = pd.concat([frame, pd.DataFrame(columns, index=frame.index)], axis=1)
        return out

    def add_labels(
        self, frame: pd.DataFrame, spec: FeatureSpec, human: pd.DataFrame | None = None
    ) -> pd.DataFrame:
        """Each row's next `horizon` readings: the data labels itself (no human labels)."""
        return add_forecast_labels(frame, spec)

    def fit_features(self, spec: FeatureSpec, train_rows: pd.DataFrame) -> FeatureSpec:
        return fit_normalization(spec, train_rows)

    def augmentation(self, spec: FeatureSpec):
        return None  # no augmentation

    def fine_tuning(self, spec: FeatureSpec, transfer):
        return None  # trained from scratch

    def configure(self, spec: FeatureSpec, hparams: SolarHyperparameters) -> FeatureSpec:
        """The input window is a hyperparameter: the spec records the one chosen."""
        return spec.with_window(hparams.window)

    def examples(self, frame: pd.DataFrame, spec: FeatureSpec, target_set: str) -> Examples:
        """Windows whose forecast origin and labels lie in `target_set`; validation and test
        windows may read the gap rows before their set (past readings a forecaster sees)."""
        history = () if target_set == "train" else ("gap",)
        return make_windows(frame, spec, spec.window, target_set=target_set, history_sets=history)

    def evaluate(self, frame, spec: FeatureSpec, model, params: Params, champion=None):
        test_rows = evaluation_view(self, frame, spec, params)
        return evaluate_candidate(self, test_rows, spec, model, params, champion)

    def evaluation_report(self, evaluation, test_rows, spec, model, params, folder: Path):
        return [plot_per_step_rmse(evaluation.scores, folder / "rmse_per_horizon_step.png")]

    def build_model(self, hparams: SolarHyperparameters, spec: FeatureSpec):
        from loopline.tasks.solar.model import Forecaster

        return Forecaster(
            n_features=len(spec.feature_columns),
            horizon=spec.horizon,
            hidden_size=hparams.hidden_size,
            num_layers=hparams.num_layers,
            dropout=hparams.dropout,
            cell=hparams.cell,
            target_mean=spec.target_mean,
            target_std=spec.target_std,
        )

    def baselines(
        self, frame: pd.DataFrame, keys: pd.DataFrame, spec: FeatureSpec, params: Params
    ) -> dict[str, np.ndarray]:
        """Persistence and smart persistence forecasts at each key's origin.

        persistence: the same hour one day earlier (the day-ahead naive forecast);
        smart persistence: the clear-sky index of the last `smart_persistence_window` steps
        times the clear-sky power ahead.
        """
        horizon, history = spec.horizon, params.evaluate.smart_persistence_window
        day = int(pd.Timedelta("1D") / pd.Timedelta(spec.freq))
        indexed = frame.set_index(["site_id", "timestamp"]).sort_index()
        persistence = np.full((len(keys), horizon), np.nan)
        smart = np.full((len(keys), horizon), np.nan)
        step = pd.Timedelta(spec.freq)
        for site_id, rows in keys.groupby("site_id", sort=False):
            site = indexed.loc[site_id]
            power, cs = site["power_w"], site["clearsky_w"]
            origins = pd.DatetimeIndex(rows["timestamp"])
            for h in range(1, horizon + 1):
                # The same time of day on the latest day already observed at the origin.
                days_back = -(-h // day)  # ceil(h / day)
                persistence[rows.index, h - 1] = power.reindex(
                    origins + step * (h - day * days_back)
                ).to_numpy()
                smart_cs = cs.reindex(origins + step * h).to_numpy()
                smart[rows.index, h - 1] = smart_cs
            past_power = np.zeros(len(origins))
            past_cs = np.zeros(len(origins))
            for lag in range(history):
                past_power += power.reindex(origins - step * lag).fillna(0).to_numpy()
                past_cs += cs.reindex(origins - step * lag).fillna(0).to_numpy()
            # A night-time origin has no clear-sky energy behind it: fall back to index 1.
            index = np.where(past_cs > 1e-6, past_power / np.maximum(past_cs, 1e-6), 1.0)
            smart[rows.index] *= np.clip(index, 0.0, 1.5)[:, None]
        return {"persistence": persistence, "smart_persistence": smart}
