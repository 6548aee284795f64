"""The forecast family's params section: columns, the clock, the windows and the seasons.

`ForecastKnobs` are what every forecaster reads (solar's section has them too);
`ForecastSettings` adds the columns a team names for its own series (section `forecast:`).
"""

from __future__ import annotations

from typing import Annotated

import pandas as pd
from pydantic import Field, field_validator, model_validator

from loopline.config import Section

Positive = Annotated[int, Field(gt=0)]

# Columns the family's feature frame adds: a team's columns may not take these names.
CALENDAR = ("hour_sin", "hour_cos", "dow_sin", "dow_cos")
SERIES = "_series"  # the group column of a single series (no entity column)
RESERVED = frozenset({*CALENDAR, SERIES, "split"})


def _unique(values: list[int], key: str) -> list[int]:
    if len(set(values)) != len(values):
        raise ValueError(f"{key} lists a value twice: {values}")
    return values


class ForecastKnobs(Section):
    """What every forecaster of the family reads: the step between readings, how far
    ahead it forecasts, the past values it takes as inputs, the input windows tuning
    chooses among, and the seasons of its seasonal-naive baseline."""

    freq: str = "1h"  # the step between consecutive readings (a pandas offset: 15min, 1h, 1D)
    horizon: Positive = 24  # steps ahead each forecast covers
    lags: list[Positive] = Field(default_factory=lambda: [24])  # the target k steps back
    # Input windows (steps) tuning picks among: the default `window` axis of the search
    # space (`tune.search_space.<task>.window`, when given, wins).
    window: list[Positive] = Field(default_factory=lambda: [24, 48])
    # Season lengths (steps) of the seasonal-naive baseline; the first is `seasonal_naive`,
    # any others are scored too as `seasonal_naive_<steps>` (the gate needs beating all).
    season: list[Positive] = Field(default_factory=lambda: [24])

    @field_validator("season", mode="before")
    @classmethod
    def _one_season(cls, value):
        return [value] if isinstance(value, int) else value

    @field_validator("freq")
    @classmethod
    def _a_step(cls, value: str) -> str:
        try:
            step = pd.Timedelta(value)
        except (ValueError, TypeError):
            raise ValueError(f"{value!r} is not a fixed step (e.g. 15min, 1h, 1D)") from None
        if step <= pd.Timedelta(0):
            raise ValueError(f"{value!r} must be a positive step")
        return value

    @field_validator("lags", "window", "season")
    @classmethod
    def _distinct(cls, values: list[int], info) -> list[int]:
        if info.field_name != "lags" and not values:
            raise ValueError(f"{info.field_name} must list at least one value")
        return _unique(values, info.field_name)


class ForecastSettings(ForecastKnobs):
    """A series of a team's own (section `forecast:`): which column is which."""

    # The column naming each series (a meter, a store); null: the data is one series.
    entity: str | None = None
    time: str = "timestamp"  # when each reading was taken (UTC if no zone is given)
    target: str = "value"  # what is forecast
    # Numeric columns observed with the target (weather, prices): inputs, not forecast.
    covariates: list[str] = Field(default_factory=list)
    # The target can never be negative (power, counts): forecasts are clipped at zero.
    nonnegative: bool = False

    @model_validator(mode="after")
    def _columns(self) -> ForecastSettings:
        named = [self.time, self.target, *self.covariates]
        if self.entity is not None:
            named.insert(0, self.entity)
        for column in named:
            if not column or not column.strip():
                raise ValueError("a column name is empty")
        twice = sorted({c for c in named if named.count(c) > 1})
        if twice:
            raise ValueError(f"column(s) {twice} named twice among entity/time/target/covariates")
        taken = sorted(set(named) & RESERVED)
        if taken:
            raise ValueError(f"column(s) {taken} are names the family's features use")
        return self


# Keys that lived in shared sections before the family had its own: where they went.
MOVED = {
    ("features", "freq"): "freq",
    ("features", "lags"): "lags",
    ("features", "clearsky_leads"): "clearsky_leads",
    ("labeling", "horizon"): "horizon",
    ("evaluate", "smart_persistence_window"): "smart_persistence_window",
}
