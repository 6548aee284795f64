"""A serving adapter as a team often writes one (the shape issue 26's tester met): a whole
window per `/stream` line, each its own item (the default stream state), plain float
fields, and answers that carry their own `error`. Solar's checks and forecasts otherwise,
so it answers with the serving fixtures' models."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from pydantic import BaseModel

from loopline.online.adapter import StreamState
from loopline.tasks.solar.serving import SolarServing


class PlainReading(BaseModel):
    timestamp: datetime
    ghi: float
    dni: float
    dhi: float
    temp_air: float
    wind_speed: float
    power_w: float


class PlainWindow(BaseModel):
    site_id: str
    readings: list[PlainReading]


class PlainAnswer(BaseModel):
    site_id: str | None = None
    origin: str | None = None
    model_version: str | None = None
    timestamps: list[str] | None = None
    forecast: list[float] | None = None
    error: str | None = None


class WholeWindowServing(SolarServing):
    """Solar's checks and forecasts on plain types; one window per stream line."""

    Request: ClassVar[type[BaseModel]] = PlainWindow
    ColumnarRequest: ClassVar[type[BaseModel] | None] = None
    Response: ClassVar[type[BaseModel]] = PlainAnswer
    Reading: ClassVar[type[BaseModel]] = PlainReading
    StreamLine: ClassVar[type[BaseModel] | None] = PlainWindow

    def open_stream(self, model) -> StreamState:
        return StreamState(self, model)
