"""The forecast family: a team's own series, configured in its params section."""

from loopline.tasks.forecast.task import (
    ForecastHyperparameters,
    ForecastOptions,
    ForecastTask,
    persistence,
    seasonal_naive,
)

__all__ = [
    "ForecastHyperparameters",
    "ForecastOptions",
    "ForecastTask",
    "persistence",
    "seasonal_naive",
]
