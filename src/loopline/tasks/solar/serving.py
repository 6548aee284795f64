"""How the solar forecaster is served: the forecast family's adapter
(`loopline.tasks.forecast.serving`) with solar's documented reading types; a site the
served model has no location for is refused."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from loopline.tasks.forecast.serving import (
    Finite,
    ForecastServing,
    Instant,
    IsoTime,
    Window,
    columns_model,
    forecast_windows,
    readings_columns,
    required_readings,
    window_inputs,
    window_problem,
)

if TYPE_CHECKING:
    from loopline.offline.features import FeatureSpec


class Reading(BaseModel):
    """One measurement of a site: weather and the AC power it produced."""

    model_config = ConfigDict(extra="forbid")
    timestamp: Instant = Field(description="Start of the reading's interval; UTC if no zone")
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


ReadingColumns = columns_model(
    "ReadingColumns", "timestamp", ["ghi", "dni", "dhi", "temp_air", "wind_speed", "power_w"]
)
ReadingColumns.__doc__ = (
    "A site's readings as columns: one list per field of `Reading`, one value per reading, "
    "oldest first."
)


class ForecastColumns(BaseModel):
    """A window in columns (the columnar form of a `/predict` item: the same readings as
    `ForecastWindow`, far less to parse)."""

    model_config = ConfigDict(extra="forbid")
    site_id: str = Field(min_length=1)
    columns: ReadingColumns


class ForecastOut(BaseModel):
    site_id: str
    origin: IsoTime = Field(description="Time of the last reading the forecast starts from")
    model_version: str
    timestamps: list[IsoTime]
    forecast: list[float] = Field(description="AC power, W, one per timestamp")


def site_locations(spec: FeatureSpec) -> dict[str, dict[str, float]]:
    """The sites the model knows, with their locations."""
    return spec.options.sites


class SolarServing(ForecastServing):
    """`/predict` takes complete windows of raw readings; `/stream` takes readings one per
    line, keeps a window per site and forecasts as soon as one is complete."""

    Request: ClassVar[type[BaseModel]] = ForecastWindow
    ColumnarRequest: ClassVar[type[BaseModel] | None] = ForecastColumns
    Response: ClassVar[type[BaseModel]] = ForecastOut
    Reading: ClassVar[type[BaseModel]] = Reading
    StreamLine: ClassVar[type[BaseModel] | None] = SiteReading
    entity: ClassVar[str | None] = "site_id"
    time_field: ClassVar[str] = "timestamp"
    unit: ClassVar[str] = "W"

    def known_keys(self, spec: FeatureSpec) -> set[str]:
        return set(site_locations(spec))


__all__ = [
    "ForecastColumns",
    "ForecastOut",
    "ForecastWindow",
    "Reading",
    "ReadingColumns",
    "SiteReading",
    "SolarServing",
    "Window",
    "forecast_windows",
    "readings_columns",
    "required_readings",
    "site_locations",
    "window_inputs",
    "window_problem",
]
