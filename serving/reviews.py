"""The review classifier service: sentiment of Korean reviews from the registry's champion.

Run it with `loopline serve --model reviews` (it runs `bentoml serve
serving.reviews:ReviewClassifier`). The same lifecycle as the forecaster (alias polling, hot
swap, readiness, prediction log, metrics: `serving.champion`), with the reviews task's own
code: texts are tokenized with the vocabulary inside the served model.

- `POST /predict` {"texts": [...]}: one answer per item, in order: the label and the class
  probabilities, or an `error` naming what is wrong with that item (empty, not a string,
  longer than `reviews.max_text_chars`); the other items are still classified.
- `POST /explain`: the same, plus each token with its attention weight.
- `POST /stream`: NDJSON lines `{"id": ..., "text": ...}` in, one NDJSON answer per line out.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import bentoml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from loopline.online import LoadedModel
from loopline.predlog import PredictionRecord, text_id
from loopline.tasks.reviews.task import classify, explanations, text_problem
from serving.asgi import BodySizeLimit, DuplexStreamingResponse
from serving.champion import BOOT, ChampionService, describe_validation, ndjson_batches


class ReviewLine(BaseModel):
    """One NDJSON line of a review stream."""

    model_config = ConfigDict(extra="forbid")
    id: str | int | None = Field(None, description="Your id for the review, echoed back")
    text: Any = Field(description="The review")


class Classified(BaseModel):
    """The answer for one item: a label with probabilities, or an error."""

    label: str | None = None
    probabilities: dict[str, float] | None = None
    model_version: str | None = None
    tokens: list[dict[str, Any]] | None = Field(
        None, description="explain only: each token and its attention weight"
    )
    error: str | None = None


app = FastAPI(title="Loopline review streaming")


@bentoml.service(name="loopline-reviews", workers=BOOT.workers, traffic={"timeout": 3600})
@bentoml.asgi_app(app, path="/")
class ReviewClassifier(ChampionService):
    """Live review sentiment from the registry's champion."""

    task_name = "reviews"

    def _classify(
        self,
        api: str,
        model: LoadedModel,
        items: list[Any],
        ids: list[Any] | None = None,
        explain: bool = False,
    ) -> list[dict[str, Any]]:
        """One answer per item; bad items get their error, the rest one model call."""
        limit = self.params.reviews.max_text_chars
        answers: list[dict[str, Any]] = [{} for _ in items]
        good = []
        for i, item in enumerate(items):
            problem = text_problem(item, limit)
            if problem is None:
                good.append(i)
            else:
                answers[i] = {"error": problem}
        if not good:
            return answers
        texts = [items[i] for i in good]
        started = time.perf_counter()
        probabilities, attention = classify(model.session, model.spec, texts)
        seconds = time.perf_counter() - started
        explained = explanations(texts, model.spec, probabilities, attention if explain else None)
        records = []
        for i, text, item in zip(good, texts, explained, strict=True):
            answer = {
                "label": item["label"],
                "probabilities": {k: round(v, 6) for k, v in item["probabilities"].items()},
                "model_version": model.version,
            }
            if explain:
                answer["tokens"] = [
                    {"token": t["token"], "weight": round(t["weight"], 6)} for t in item["tokens"]
                ]
            answers[i] = answer
            key = ids[i] if ids is not None and ids[i] is not None else text_id(text)
            records.append(
                PredictionRecord(
                    model_name=model.name,
                    model_version=model.version,
                    api=api,
                    key=str(key),
                    origin=None,
                    inputs={"text": text},
                    output={"label": answer["label"], "probabilities": answer["probabilities"]},
                    latency_ms=seconds * 1000 / len(texts),
                )
            )
        self.record(api, model, records, seconds)
        return answers

    @bentoml.api(
        batchable=True, max_batch_size=BOOT.max_batch_size, max_latency_ms=BOOT.max_latency_ms
    )
    def predict(self, texts: list[Any]) -> list[Classified]:
        """Classify reviews; requests are batched adaptively. A bad item gets an `error`
        (the others are answered)."""
        model = self._serving()
        return [Classified(**a) for a in self._classify("predict", model, texts)]

    @bentoml.api
    def explain(self, texts: list[Any]) -> list[Classified]:
        """Classify reviews and say which syllables each prediction rests on: every token
        with its attention weight (they sum to 1 per review)."""
        model = self._serving()
        return [Classified(**a) for a in self._classify("explain", model, texts, explain=True)]

    @app.get("/metadata")
    def metadata(self) -> dict[str, Any]:
        """The model being served and the state of the alias watch."""
        return self.status()

    @app.post(
        "/stream",
        response_class=StreamingResponse,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/x-ndjson": {"schema": ReviewLine.model_json_schema()}},
                "description": "One review per line (NDJSON).",
            }
        },
        responses={
            200: {
                "content": {"application/x-ndjson": {"schema": Classified.model_json_schema()}},
                "description": "One line per input line, in order: a label or an error.",
            }
        },
    )
    async def stream(self, request: Request):
        """Live streaming inference: reviews in, labels with probabilities out."""
        if self.model is None:
            return JSONResponse({"error": f"not ready: {self.not_ready_reason}"}, 503)
        return DuplexStreamingResponse(self._answer(request), media_type="application/x-ndjson")

    async def _answer(self, request: Request):
        async for batch in ndjson_batches(request, self.settings.max_line_bytes):
            yield await asyncio.to_thread(self._answer_lines, batch)

    def _answer_lines(self, batch: list[tuple[int, bytes | None]]) -> str:
        model = self.model  # a hot swap between chunks moves the stream to the new version
        out: list[dict[str, Any]] = []
        texts, ids, slots = [], [], []
        for line, raw in batch:
            if raw is None:
                limit = self.settings.max_line_bytes
                out.append(
                    {
                        "line": line,
                        "error": f"line longer than {limit} bytes (serve.max_line_bytes)",
                    }
                )
                self.metrics["stream_errors"].labels("too_long").inc()
                continue
            if not raw.strip():
                continue
            try:
                item = ReviewLine.model_validate_json(raw)
            except ValidationError as error:
                out.append({"line": line, "error": describe_validation(error)})
                self.metrics["stream_errors"].labels("malformed").inc()
                continue
            out.append({"line": line, "id": item.id})
            texts.append(item.text)
            ids.append(item.id)
            slots.append(len(out) - 1)
        if texts:
            for slot, answer in zip(
                slots, self._classify("stream", model, texts, ids), strict=True
            ):
                if "error" in answer:
                    self.metrics["stream_errors"].labels("bad_text").inc()
                out[slot].update(answer)
        return "".join(json.dumps(o, ensure_ascii=False, separators=(",", ":")) + "\n" for o in out)


ReviewClassifier.add_asgi_middleware(
    BodySizeLimit, limit=BOOT.max_body_bytes, skip_paths=("/stream",)
)
