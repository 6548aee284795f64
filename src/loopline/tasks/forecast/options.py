"""What every forecaster's feature spec keeps of its series (`spec.options`): how far ahead
it forecasts, the step between readings, its input window and the series' columns.

These were `FeatureSpec` fields before the shared spec became task-neutral; a spec saved
then has them at its top level, and `FeatureSpec.from_json` moves them here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pandas as pd

from loopline.offline.features import FeatureSpec
from loopline.tasks.base import FeatureOptions
from loopline.tasks.forecast.settings import SERIES


@dataclass(frozen=True, kw_only=True)
class SeriesOptions(FeatureOptions):
    """The series a forecaster reads: steps ahead (`horizon`), the step between readings
    (`freq`, a pandas offset), the input window in readings (0 until `Task.configure` sets
    the one chosen), and the columns naming each series and each reading's time."""

    horizon: int = 1
    freq: str = "1h"
    window: int = 0
    group_column: str = SERIES
    time_column: str = "timestamp"


def with_window(spec: FeatureSpec, window: int) -> FeatureSpec:
    """`spec` reading input windows of `window` readings."""
    return replace(spec, options=replace(spec.options, window=int(window)))


def step_of(spec: FeatureSpec) -> pd.Timedelta:
    """The time between two consecutive readings of the spec's series."""
    return pd.Timedelta(spec.options.freq)
