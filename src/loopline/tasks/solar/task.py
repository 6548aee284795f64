"""Solar power forecasting: day-ahead AC power of PV systems from weather and the clock.

Solar is the forecast family (`loopline.tasks.forecast`) with fixed columns plus pvlib
physics. Sites are named, each with its coordinates, time zone and PV system
(`solar.sites`); the built-in source turns each site's weather into the AC power of its
system by pvlib's physical model chain: the TMY3 files that ship inside pvlib for the two
built-in sites (Greensboro, NC and Sand Point, AK), a CSV of a team's own (`weather:`) for
any other. Features are the clock (time of day, season), the weather, lagged power and the
clear-sky power of the system, which is known ahead from the sun's position alone.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from loopline.config import Params, Section
from loopline.offline.features import FeatureSpec
from loopline.offline.validate import Rule
from loopline.tasks.base import FeatureOptions
from loopline.tasks.forecast import ForecastHyperparameters, ForecastTask, seasonal_naive
from loopline.tasks.forecast.arrays import WindowBatch, day_of_year, hour_of_day
from loopline.tasks.forecast.options import SeriesOptions
from loopline.tasks.forecast.windows import shifted_values
from loopline.tasks.solar.serving import SolarServing
from loopline.tasks.solar.sites import (
    WEATHER,
    PVSystemParams,
    SolarParams,
    SolarSite,
    read_weather_file,
)

# pvlib's bundled TMY3 files (the built-in sites' weather).
BUILTIN_SITES = {"greensboro": "723170TYA.CSV", "sand_point": "703165TY.csv"}
# Older names, kept importable.
SolarHyperparameters = ForecastHyperparameters


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


class ClearSkyTable:
    """Clear-sky power of one site and system at the instants asked so far: the very month
    blocks `clearsky_power` reads (`_clearsky_month`), flattened into sorted epoch
    nanoseconds, so a serving batch looks its times up with one binary search instead of
    grouping them by month. Blocks are added on a miss; the (times, values) pair is
    replaced as one, so threads reading it never see half an update."""

    def __init__(self, site: dict[str, Any], system: Any, freq: str):
        system = PVSystemParams.model_validate(system).model_dump()
        self.site_key = json.dumps(site, sort_keys=True)
        self.system_key = json.dumps(system, sort_keys=True)
        self.step = pd.Timedelta(freq).value
        self.table = (np.empty(0, dtype=np.int64), np.empty(0))

    def at(self, ns: np.ndarray) -> np.ndarray:
        """Clear-sky power (W) at UTC epoch nanoseconds `ns` (any shape)."""
        flat = np.ascontiguousarray(ns, dtype=np.int64).ravel()
        found = self._find(flat)
        if found is None:
            self._add(flat)
            found = self._find(flat)
        return self.table[1][found].reshape(np.shape(ns))

    def _find(self, flat: np.ndarray) -> np.ndarray | None:
        times, _ = self.table
        if not len(times):
            return None
        found = np.minimum(np.searchsorted(times, flat), len(times) - 1)
        return found if (times[found] == flat).all() else None

    def _add(self, flat: np.ndarray) -> None:
        months = flat.astype("datetime64[ns]").astype("datetime64[M]").astype("datetime64[ns]")
        month_ns = months.astype(np.int64)
        step = self.step
        phases = (flat - month_ns) % step
        times, values = [self.table[0]], [self.table[1]]
        for month, phase in np.unique(np.stack([month_ns, phases], axis=1), axis=0):
            block = _clearsky_month(
                self.site_key, self.system_key, int(month), int(phase), self.step
            )
            times.append(
                int(month) + int(phase) + self.step * np.arange(len(block), dtype=np.int64)
            )
            values.append(block)
        all_times, first = np.unique(np.concatenate(times), return_index=True)
        self.table = (all_times, np.concatenate(values)[first])


_TABLES: dict[tuple, ClearSkyTable] = {}


def clearsky_table(site: dict[str, Any], system: dict[str, Any], freq: str) -> ClearSkyTable:
    """The process's clear-sky table of a site and system (one per location, system, step)."""
    key = (tuple(sorted(site.items())), tuple(sorted(system.items())), freq)
    table = _TABLES.get(key)
    if table is None:
        table = _TABLES.setdefault(key, ClearSkyTable(site, system, freq))
    return table


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


def site_weather(site: SolarSite, year: int, root: str | None) -> pd.DataFrame:
    """A site's weather, indexed by UTC time: its own file, or a built-in TMY3 file."""
    if site.weather is not None:
        return read_weather_file(site, root)
    if site.name in BUILTIN_SITES:
        return read_builtin_site(site.name, year)[0]
    raise ValueError(
        f"solar.sites.{site.name}: no weather to make power from; give `weather:` (a CSV of "
        f"timestamp, {', '.join(WEATHER)}) or point ingest.source at its readings"
    )


@dataclass(frozen=True)
class SolarOptions(SeriesOptions):
    """What the features need beyond the series (`SeriesOptions`: horizon, step, window,
    site and time columns): lags and clear-sky leads (steps), each site's location and PV
    system (`systems`; a site without one, as in models made before sites had their own,
    uses `system`), and the season of the persistence baseline."""

    lags: list[int]
    clearsky_leads: list[int]
    sites: dict[str, dict[str, float]]
    system: dict[str, float]
    systems: dict[str, dict[str, float]] = field(default_factory=dict)
    season: list[int] = field(default_factory=lambda: [24])

    def system_of(self, site: str) -> dict[str, float]:
        return self.systems.get(site, self.system)


class SolarTask(ForecastTask):
    name: ClassVar[str] = "solar"
    Settings: ClassVar[type[Section]] = SolarParams
    Options: ClassVar[type[FeatureOptions]] = SolarOptions
    Serving: ClassVar[type] = SolarServing
    schema: ClassVar[dict[str, str]] = {
        "site_id": "string",
        "timestamp": "datetime",
        **dict.fromkeys(WEATHER, "float"),
        "power_w": "float",
    }
    key_columns: ClassVar[list[str]] = ["site_id", "timestamp"]
    time_column: ClassVar[str | None] = "timestamp"
    target_column: ClassVar[str] = "power_w"

    def schema_for(self, params: Params) -> dict[str, str]:
        return self.schema  # fixed columns

    def load_builtin(self, params: Params) -> pd.DataFrame:
        """Each site's weather (its file, or pvlib's TMY3 for a built-in site) turned into
        the AC power of its PV system."""
        frames = []
        for site in params.solar.sites:
            weather = site_weather(site, params.solar.year, params.root)
            power = ac_power(weather, site.location(), site.system)
            frames.append(
                weather.assign(power_w=power, site_id=site.name)
                .rename_axis("timestamp")
                .reset_index()
            )
        frame = pd.concat(frames, ignore_index=True)
        return frame[list(self.schema)]

    def rules(self, params: Params) -> list[Rule]:
        capacity = max(site.system.pdc0_w for site in params.solar.sites) * 1.2
        ranges = {
            "ghi": (0, 1500),
            "dni": (0, 1400),
            "dhi": (0, 1000),
            "temp_air": (-60, 60),
            "wind_speed": (0, 75),
            "power_w": (0, capacity),
        }
        names = tuple(site.name for site in params.solar.sites)
        rules = [Rule(f"{c}_not_null", "not_null", column=c) for c in self.schema]
        rules += [
            Rule(f"{c}_in_range", "between", column=c, min=lo, max=hi)
            for c, (lo, hi) in ranges.items()
        ]
        rules += [
            Rule("site_id_known", "in_set", column="site_id", values=names),
            Rule("reading_not_duplicated", "unique", columns=("site_id", "timestamp")),
            Rule("timestamp_in_order", "in_order", column="timestamp", group="site_id"),
            Rule("timestamp_not_in_future", "not_future", column="timestamp"),
        ]
        return rules

    def new_feature_spec(self, params: Params) -> FeatureSpec:
        s: SolarParams = params.solar
        lags = [f"power_lag_{k}" for k in s.lags]
        leads = [f"clearsky_lead_{k}" for k in s.clearsky_leads]
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
            options=SolarOptions(
                horizon=s.horizon,
                freq=s.freq,
                group_column="site_id",
                time_column="timestamp",
                lags=list(s.lags),
                clearsky_leads=list(s.clearsky_leads),
                sites={site.name: site.location() for site in s.sites},
                system=PVSystemParams().model_dump(),
                systems={site.name: site.system.model_dump() for site in s.sites},
                season=list(s.season),
            ),
        )

    def model_columns(self, spec: FeatureSpec) -> list[str]:
        return [c for c in self.schema if c != "site_id"]

    def batch_spec(self, spec: FeatureSpec, groups: dict[str, str]) -> FeatureSpec:
        """Each group of a serving batch is located where its site is, with its system."""
        options = spec.options
        for key in groups.values():
            if key not in options.sites:
                raise ValueError(f"site {key!r} has no location in the model's feature spec")
        sites = {g: options.sites[key] for g, key in groups.items()}
        systems = {g: options.system_of(key) for g, key in groups.items()}
        return replace(spec, options=replace(options, sites=sites, systems=systems))

    def nonnegative(self, spec: FeatureSpec) -> bool:
        return True  # a PV system never makes negative power

    def unit(self, spec: FeatureSpec) -> str:
        return "W"

    def add_features(self, frame: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
        """Feature columns for raw rows; pure in (rows, spec), shared with the service."""
        frame = frame.sort_values(["site_id", "timestamp"]).reset_index(drop=True)
        options = spec.options
        sites = options.sites
        step = pd.Timedelta(spec.options.freq)
        clearsky = np.full(len(frame), np.nan)
        leads = {k: np.full(len(frame), np.nan) for k in options.clearsky_leads}
        unknown = sorted(set(frame["site_id"].unique()) - set(sites))
        if unknown:
            raise ValueError(f"site {unknown[0]!r} has no location in the feature spec")
        # One clear-sky lookup per location and system, not per site id: the service passes
        # a batch of windows as one group each, all at the same few sites.
        located = {
            s: json.dumps({"site": loc, "system": options.system_of(s)}, sort_keys=True)
            for s, loc in sites.items()
        }
        codes, keys = pd.factorize(frame["site_id"].map(located).to_numpy())
        stamps = pd.DatetimeIndex(frame["timestamp"])
        for code, location in enumerate(keys):
            where = np.flatnonzero(codes == code)
            place = json.loads(location)
            site, system = place["site"], place["system"]
            clearsky[where] = clearsky_power(stamps[where], site, system, spec.options.freq)
            for k in leads:
                ahead = stamps[where] + step * k
                leads[k][where] = clearsky_power(ahead, site, system, spec.options.freq)
        # Local solar time would need the longitude; UTC hour + season is enough for a
        # model that also sees clear-sky power, which carries the site's own sun path.
        hour = (stamps.hour + stamps.minute / 60).to_numpy()
        doy = stamps.dayofyear.to_numpy()
        # Measured / clear-sky power: the cloudiness the notes' smart persistence carries
        # forward. Below 50 W of clear-sky power (dawn, dusk, night) the ratio is noise: 0.
        power = frame["power_w"].to_numpy(dtype=np.float64)
        columns = sun_and_clock(clearsky, power, hour, doy)
        for k in options.lags:
            columns[f"power_lag_{k}"] = shifted_values(
                frame, "power_w", -k, "site_id", "timestamp", spec.options.freq
            )
        for k, values in leads.items():
            columns[f"clearsky_lead_{k}"] = values
        # One concat, not a column insert per feature (pandas' per-insert cost adds up).
        return pd.concat([frame, pd.DataFrame(columns, index=frame.index)], axis=1)

    def window_features(self, batch: WindowBatch, spec: FeatureSpec) -> dict[str, np.ndarray]:
        """`add_features`' columns for the last `spec.options.window` readings of each window of a
        serving batch, on arrays: the clock from epoch integers, clear-sky power from the
        site's cached table, lags by index (equal to `add_features` on the same rows)."""
        n, options = spec.options.window, spec.options
        last = batch.last(n)
        step = pd.Timedelta(spec.options.freq).value
        # The clear-sky power at each time and at each lead, one table lookup per site.
        offsets = np.array([0, *options.clearsky_leads], dtype=np.int64) * step
        wanted = last.times[None] + offsets[:, None, None]  # (1 + leads, N, window)
        sun = np.empty(wanted.shape)
        sites = list(dict.fromkeys(batch.keys))
        keys = np.asarray(batch.keys) if len(sites) > 1 else None
        for key in sites:
            if key not in options.sites:
                raise ValueError(f"site {key!r} has no location in the feature spec")
            table = clearsky_table(options.sites[key], options.system_of(key), spec.options.freq)
            if keys is None:
                sun[...] = table.at(wanted)
            else:
                rows = keys == key
                sun[:, rows] = table.at(wanted[:, rows])
        clearsky = sun[0]
        leads = dict(zip(options.clearsky_leads, sun[1:], strict=True))
        hour, doy = hour_of_day(last.times), day_of_year(last.times)
        power = last.values["power_w"]
        columns = {**last.values, **sun_and_clock(clearsky, power, hour, doy)}
        for k in options.lags:
            columns[f"power_lag_{k}"] = batch.lagged("power_w", k, n)
        for k, values in leads.items():
            columns[f"clearsky_lead_{k}"] = values
        return columns

    def baselines(
        self, frame: pd.DataFrame, keys: pd.DataFrame, spec: FeatureSpec, params: Params
    ) -> dict[str, np.ndarray]:
        """Persistence and smart persistence forecasts at each key's origin.

        persistence: seasonal naive over the first `season` (default 24 steps: the same
        hour one day earlier, the day-ahead naive forecast);
        smart persistence: the clear-sky index of the last `smart_persistence_window` steps
        times the clear-sky power ahead.
        """
        daily = int(pd.Timedelta("1D") / pd.Timedelta(spec.options.freq))
        season = (spec.options.season or [daily])[0]
        history = params.solar.smart_persistence_window
        persistence = seasonal_naive(frame, keys, spec, season)
        indexed = frame.set_index(["site_id", "timestamp"]).sort_index()
        smart = np.full((len(keys), spec.options.horizon), np.nan)
        step = pd.Timedelta(spec.options.freq)
        for site_id, rows in keys.groupby("site_id", sort=False):
            site = indexed.loc[site_id]
            power, cs = site["power_w"], site["clearsky_w"]
            origins = pd.DatetimeIndex(rows["timestamp"])
            for h in range(1, spec.options.horizon + 1):
                smart[rows.index, h - 1] = cs.reindex(origins + step * h).to_numpy()
            past_power = np.zeros(len(origins))
            past_cs = np.zeros(len(origins))
            for lag in range(history):
                past_power += power.reindex(origins - step * lag).fillna(0).to_numpy()
                past_cs += cs.reindex(origins - step * lag).fillna(0).to_numpy()
            # A night-time origin has no clear-sky energy behind it: fall back to index 1.
            index = np.where(past_cs > 1e-6, past_power / np.maximum(past_cs, 1e-6), 1.0)
            smart[rows.index] *= np.clip(index, 0.0, 1.5)[:, None]
        return {"persistence": persistence, "smart_persistence": smart}


def sun_and_clock(
    clearsky: np.ndarray, power: np.ndarray, hour: np.ndarray, doy: np.ndarray
) -> dict[str, np.ndarray]:
    """Clear-sky power and index, and the clock as sines and cosines: one formula for the
    offline frame (`add_features`) and the serving arrays (`window_features`), which must
    stay equal. Below 50 W of clear-sky power (dawn, dusk, night) the index is noise: 0."""
    index = np.where(clearsky >= 50.0, power / np.maximum(clearsky, 50.0), 0.0)
    return {
        "clearsky_w": clearsky,
        "clearsky_index": np.clip(index, 0.0, 1.5),
        "hour_sin": np.sin(2 * np.pi * hour / 24),
        "hour_cos": np.cos(2 * np.pi * hour / 24),
        "doy_sin": np.sin(2 * np.pi * doy / 365.25),
        "doy_cos": np.cos(2 * np.pi * doy / 365.25),
    }
