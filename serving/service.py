"""The online process: serve the registry's champion for live forecasts, and follow its alias.

Run it with `loopline serve` (which runs `bentoml serve serving.service:Forecaster`), or in a
container (see the Dockerfile). Settings come from the project's params.yaml `serve:` section;
`LOOPLINE_SERVE_<KEY>` environment variables and `MLFLOW_TRACKING_URI` override them at run
time. Everything the service computes comes from `loopline.online`, the same code and the
same feature spec the offline process used.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import bentoml
from bentoml.validators import ContentType
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from loopline.online import (
    LoadedModel,
    StreamWindows,
    Window,
    error_event,
    forecast_windows,
    plain_value,
    readings_columns,
    window_problem,
)
from loopline.predlog import PredictionRecord
from serving.asgi import BodySizeLimit, DuplexStreamingResponse
from serving.champion import BOOT, ChampionService, describe_validation, ndjson_batches

# ----------------------------------------------------------------------------- API types

Finite = Annotated[float, Field(allow_inf_nan=False)]


class Reading(BaseModel):
    """One measurement of a site: weather and the AC power it produced."""

    model_config = ConfigDict(extra="forbid")
    timestamp: datetime = Field(description="Start of the reading's interval; UTC if no zone")
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

    @model_validator(mode="after")
    def _complete_for_the_served_model(self) -> ForecastWindow:
        # The length a window needs depends on the model being served, which can change at
        # any poll: check against the current one here, per request, before batching.
        model = _SERVED.get("model")
        if model is None:
            return self
        if self.site_id not in model.spec.options.get("sites", {}):
            raise ValueError(
                f"site_id {self.site_id!r} is unknown to {model.name} v{model.version} "
                f"(known: {sorted(model.spec.options.get('sites', {}))})"
            )
        times = [_utc(r.timestamp) for r in self.readings]
        problem = window_problem(times, model.spec.freq, model.required_readings)
        if problem:
            raise ValueError(f"readings: {problem}")
        return self


# Times go out as the ISO strings the library already made: declared `date-time` for the
# OpenAPI spec, but not parsed back into datetimes only to be printed again.
IsoTime = Annotated[str, Field(json_schema_extra={"format": "date-time"})]


class ForecastOut(BaseModel):
    site_id: str
    origin: IsoTime = Field(description="Time of the last reading the forecast starts from")
    model_version: str
    timestamps: list[IsoTime]
    forecast: list[float] = Field(description="AC power, W, one per timestamp")


class StreamLine(BaseModel):
    """One NDJSON line of the stream's answer: a forecast, an error or a notice."""

    line: int | None = Field(None, description="The input line this answers")
    site_id: str | None = None
    origin: datetime | None = None
    model_version: str | None = None
    timestamps: list[datetime] | None = None
    forecast: list[float] | None = None
    error: str | None = None
    notice: str | None = None


# The model a worker serves, for the request validators above (one service per worker).
_SERVED: dict[str, LoadedModel | None] = {"model": None}


# The content type is declared on `predict`'s output because BentoML otherwise derives it by
# generating the output's JSON schema on every response (~1.7 ms per request, measured).
stream_app = FastAPI(title="Loopline streaming")


@bentoml.service(
    name="loopline",
    workers=BOOT.workers,
    traffic={"timeout": 3600},  # a stream stays open as long as its client sends readings
)
@bentoml.asgi_app(stream_app, path="/")
class Forecaster(ChampionService):
    """Live solar power forecasts from the registry's champion."""

    task_name = "solar"

    def on_swap(self, model: LoadedModel) -> None:
        _SERVED["model"] = model

    def _log(self, api: str, model: LoadedModel, windows, forecasts, seconds: float) -> None:
        per_item = seconds * 1000 / max(1, len(forecasts))
        records = [
            PredictionRecord(
                model_name=model.name,
                model_version=model.version,
                api=api,
                key=window.site_id,
                origin=forecast.origin.to_pydatetime(),
                inputs={
                    "readings": len(window),
                    "first": plain_value(window.rows["timestamp"][0]),
                    "last": window.last(),
                },
                output=[round(float(v), 3) for v in forecast.values],
                latency_ms=per_item,
            )
            for window, forecast in zip(windows, forecasts, strict=True)
        ]
        self.record(api, model, records, seconds)

    def _forecast(self, api: str, model: LoadedModel, windows: list[Window]):
        started = time.perf_counter()
        forecasts = forecast_windows(self.task, model, windows)
        self._log(api, model, windows, forecasts, time.perf_counter() - started)
        return forecasts

    # ------------------------------------------------------------------ APIs

    @bentoml.api(
        batchable=True,
        max_batch_size=BOOT.max_batch_size,
        max_latency_ms=BOOT.max_latency_ms,
    )
    def predict(
        self, windows: list[ForecastWindow]
    ) -> Annotated[list[ForecastOut], ContentType("application/json")]:
        """Forecast complete windows: each holds the site's last `required_readings`
        consecutive readings (see `/metadata`). Requests are batched adaptively."""
        model = self._serving()
        schema = self.task.schema
        items = [
            Window(w.site_id, readings_columns([r.__dict__ for r in w.readings], schema))
            for w in windows
        ]
        try:
            forecasts = self._forecast("predict", model, items)
        except ValueError as error:
            raise bentoml.exceptions.InvalidArgument(str(error)) from None
        return [ForecastOut.model_construct(**f.to_dict()) for f in forecasts]

    @stream_app.get("/metadata")
    def metadata(self) -> dict[str, Any]:
        """The model being served and the state of the alias watch."""
        return self.status()

    @stream_app.post(
        "/stream",
        response_class=StreamingResponse,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/x-ndjson": {"schema": SiteReading.model_json_schema()}},
                "description": "One reading per line (NDJSON), for any number of sites.",
            }
        },
        responses={
            200: {
                "content": {"application/x-ndjson": {"schema": StreamLine.model_json_schema()}},
                "description": "One line per forecast (as soon as a site's window is "
                "complete, per site in order), per rejected reading, and per notice.",
            }
        },
    )
    async def stream(self, request: Request):
        """Live streaming inference: readings in, forecasts out, as they happen."""
        if self.model is None:
            return JSONResponse({"error": f"not ready: {self.not_ready_reason}"}, 503)
        return DuplexStreamingResponse(self._answer(request), media_type="application/x-ndjson")

    async def _answer(self, request: Request):
        model = self.model
        state = StreamWindows(self.task, model.spec, model.required_readings)
        async for batch in ndjson_batches(request, self.settings.max_line_bytes):
            model = self._follow(state, model)
            yield "".join(await asyncio.to_thread(self._answer_lines, state, model, batch))

    def _follow(self, state: StreamWindows, model: LoadedModel) -> LoadedModel:
        """Between chunks a stream moves to a hot-swapped model, keeping its readings."""
        current = self.model or model
        if current is not model:
            state.resize(current.spec, current.required_readings)
        return current

    def _answer_lines(self, state: StreamWindows, model: LoadedModel, batch) -> list[str]:
        answers: list[tuple[int, int, dict[str, Any]]] = []
        ready: list[tuple[int, Window]] = []
        for line, raw in batch:
            if raw is None:
                limit = self.settings.max_line_bytes
                too_long = f"line longer than {limit} bytes (serve.max_line_bytes)"
                answers.append((line, 0, _error(line, too_long)))
                self.metrics["stream_errors"].labels("too_long").inc()
                continue
            if not raw.strip():
                continue
            try:
                reading = SiteReading.model_validate_json(raw)
            except ValidationError as error:
                answers.append((line, 0, _error(line, describe_validation(error))))
                self.metrics["stream_errors"].labels("malformed").inc()
                continue
            if reading.site_id not in model.spec.options.get("sites", {}):
                message = f"site_id {reading.site_id!r} is unknown to {model.name} v{model.version}"
                answers.append((line, 0, error_event(line, message, reading.site_id).payload))
                self.metrics["stream_errors"].labels("unknown_site").inc()
                continue
            values = reading.model_dump()
            values["timestamp"] = _utc(values["timestamp"])
            window, event = state.push(values, line)
            if event is not None:
                answers.append((line, 0, event.payload))
                if event.kind == "error":
                    self.metrics["stream_errors"].labels("order").inc()
            if window is not None:
                ready.append((line, window))
        if ready:
            windows = [window for _, window in ready]
            try:
                forecasts = self._forecast("stream", model, windows)
                for (line, _), forecast in zip(ready, forecasts, strict=True):
                    answers.append((line, 1, {"line": line, **forecast.to_dict()}))
            except ValueError as error:
                for line, window in ready:
                    answers.append((line, 1, error_event(line, str(error), window.site_id).payload))
        answers.sort(key=lambda a: (a[0], a[1]))
        return [json.dumps(payload, separators=(",", ":")) + "\n" for _, _, payload in answers]


Forecaster.add_asgi_middleware(BodySizeLimit, limit=BOOT.max_body_bytes, skip_paths=("/stream",))


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _error(line: int, message: str) -> dict[str, Any]:
    return error_event(line, message).payload
