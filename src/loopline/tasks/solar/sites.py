"""Solar's params section: named sites by coordinates, each with its PV system and weather.

```yaml
solar:
  sites:
    - greensboro                 # a built-in site by name (pvlib's TMY3 weather)
    - name: plant                # a site of your own
      latitude: 48.1             # -90..90
      longitude: 11.6            # -180..180
      altitude: 520              # m
      timezone: Europe/Berlin    # IANA; naive times in its weather file are read in it
      weather: data/plant.csv    # timestamp, ghi, dni, dhi, temp_air, wind_speed
      system: {surface_tilt: 35, surface_azimuth: 180, pdc0_w: 8000}
```
`sites` may also be a mapping of name to site. A bad coordinate or time zone is refused
at parse time with the site and the key named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd
from pydantic import Field, field_validator, model_validator

from loopline.config import Section
from loopline.tasks.forecast.settings import ForecastKnobs

WEATHER = ["ghi", "dni", "dhi", "temp_air", "wind_speed"]


class PVSystemParams(Section):
    surface_tilt: Annotated[float, Field(ge=0, le=90)] = 30.0
    surface_azimuth: Annotated[float, Field(ge=0, lt=360)] = 180.0
    pdc0_w: Annotated[float, Field(gt=0)] = 5000.0
    gamma_pdc: Annotated[float, Field(ge=-0.02, le=0)] = -0.004
    inverter_efficiency: Annotated[float, Field(gt=0, le=1)] = 0.96


# Where the two built-in sites are (their TMY3 files' own headers say the same).
BUILTIN_LOCATIONS: dict[str, dict[str, Any]] = {
    "greensboro": {
        "latitude": 36.1,
        "longitude": -79.95,
        "altitude": 273.0,
        "timezone": "America/New_York",
    },
    "sand_point": {
        "latitude": 55.317,
        "longitude": -160.517,
        "altitude": 7.0,
        "timezone": "America/Anchorage",
    },
}
RANGES = {"latitude": (-90.0, 90.0), "longitude": (-180.0, 180.0), "altitude": (-500.0, 9000.0)}


class SolarSite(Section):
    """One PV site: where it is, its system, and (for the built-in source) its weather."""

    name: str = Field(min_length=1)
    latitude: float
    longitude: float
    altitude: float = 0.0
    timezone: str = "UTC"
    system: PVSystemParams = PVSystemParams()
    # A CSV of the site's weather (`timestamp` + WEATHER columns), relative to the project
    # folder; naive times are in `timezone`. None: a built-in site's TMY3 file.
    weather: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _builtin_by_name(cls, value: Any) -> Any:
        """A built-in site's name stands for the site; given keys override its defaults."""
        if isinstance(value, str):
            value = {"name": value}
        if isinstance(value, dict) and value.get("name") in BUILTIN_LOCATIONS:
            value = {**BUILTIN_LOCATIONS[value["name"]], **value}
        return value

    @model_validator(mode="after")
    def _a_place_on_earth(self) -> SolarSite:

        for key, (low, high) in RANGES.items():
            value = getattr(self, key)
            if not low <= value <= high:
                raise ValueError(
                    f"site {self.name!r}: {key} {value:g} is outside {low:g}..{high:g}"
                )
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"site {self.name!r}: timezone {self.timezone!r} is not an IANA time zone "
                "(e.g. Europe/Berlin)"
            ) from None
        return self

    def location(self) -> dict[str, float]:
        """What the clear-sky model needs (kept in the model's feature spec)."""
        return {"latitude": self.latitude, "longitude": self.longitude, "altitude": self.altitude}


def _default_sites() -> list[SolarSite]:
    return [SolarSite.model_validate(name) for name in BUILTIN_LOCATIONS]


class SolarParams(ForecastKnobs):
    """The solar task's section: its sites, the TMY3 year, clear-sky leads and the smart
    persistence baseline's history, beside the family's knobs (freq, horizon, lags,
    window, season)."""

    sites: list[SolarSite] = Field(default_factory=_default_sites)
    year: Annotated[int, Field(ge=1990, le=2100)] = 2021  # the TMY3 files' year
    # Clear-sky power `lead` steps ahead, known from the clock alone; with a window of at
    # least the horizon the model sees the whole clear-sky profile of the day it forecasts.
    clearsky_leads: list[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [24])
    # Steps of history behind smart persistence's clear-sky index.
    smart_persistence_window: Annotated[int, Field(gt=0)] = 24

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, value: Any) -> Any:
        if isinstance(value, dict) and "system" in value:
            raise ValueError(
                "solar.system moved into each site: solar.sites[].system (a site without one "
                "gets the default system)"
            )
        return value

    @field_validator("sites", mode="before")
    @classmethod
    def _named_mapping(cls, sites: Any) -> Any:
        """`sites` as a mapping of name to site is the same as a list of named sites."""
        if isinstance(sites, dict):
            return [
                {"name": name, **(site or {})} if isinstance(site, dict | None) else site
                for name, site in sites.items()
            ]
        return sites

    @field_validator("sites")
    @classmethod
    def _sites_unique(cls, sites: list[SolarSite]) -> list[SolarSite]:
        names = [site.name for site in sites]
        if not sites or len(set(names)) != len(names):
            raise ValueError("solar.sites must list at least one site, each name once")
        return sites

    def site(self, name: str) -> SolarSite:
        return next(site for site in self.sites if site.name == name)


def read_weather_file(site: SolarSite, root: str | None) -> pd.DataFrame:
    """A site's own weather CSV, indexed by UTC time (naive times are in its zone)."""
    path = Path(site.weather)
    if not path.is_absolute() and root is not None:
        path = Path(root) / path
    if not path.is_file():
        raise ValueError(f"solar.sites.{site.name}.weather: no file {str(path)!r}")
    frame = pd.read_csv(path)
    missing = [c for c in ["timestamp", *WEATHER] if c not in frame.columns]
    if missing:
        raise ValueError(f"solar.sites.{site.name}.weather ({path}): no column(s) {missing}")
    times = pd.to_datetime(frame["timestamp"], format="mixed")
    if times.dt.tz is None:
        times = times.dt.tz_localize(site.timezone)
    weather = frame[WEATHER].astype(float)
    weather.index = pd.DatetimeIndex(times.dt.tz_convert("UTC"), name="timestamp")
    return weather
