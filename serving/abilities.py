"""The endpoints only some tasks have, one small class each, chosen by what the task's
adapter can do (`serves`): `Streams` (a `StreamLine`), `Explanations` (`Explaining`),
`Uploads` (`FileInput`) and `UploadExplanations` (both). Each relies on the framework
class (`serving.framework.LooplineService`) it is composed with."""

# No `from __future__ import annotations`: BentoML and FastAPI read the APIs' annotations.

import asyncio
from typing import Any, ClassVar

from fastapi import File, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response, StreamingResponse

from loopline.online.adapter import BadInput, Explaining, FileInput, Serving
from serving.asgi import DuplexStreamingResponse
from serving.bodies import answers_spec, as_item, picture_headers, request_body, stream_reply
from serving.framework import api, route
from serving.streams import LineTimeout, StreamAnswers, ndjson, ndjson_batches


def _stream_route(adapter: type[Serving]) -> dict[str, Any]:
    """`/stream`'s OpenAPI: NDJSON lines of the task's `StreamLine` in, answers out."""
    line = adapter.StreamLine.model_json_schema()
    answer = stream_reply(adapter.Response).model_json_schema()
    return {
        "response_class": StreamingResponse,
        "openapi_extra": {
            "requestBody": {
                "required": True,
                "content": {"application/x-ndjson": {"schema": line}},
                "description": "One item per line (NDJSON).",
            }
        },
        "responses": {
            200: {
                "content": {"application/x-ndjson": {"schema": answer}},
                "description": "One line per answer (as soon as it is ready, in order), per "
                "rejected line, and per notice.",
            }
        },
    }


class Streams:
    """`POST /stream`, for an adapter with a `StreamLine`: live streaming inference."""

    body_types: ClassVar[dict[str, tuple[bytes, ...]]] = {
        "/stream": (b"application/x-ndjson", b"application/json")
    }
    _open_streams = 0

    @staticmethod
    def serves(adapter: type[Serving]) -> bool:
        return adapter.StreamLine is not None

    @route("/stream", options=_stream_route)
    async def stream(self, request: Request):
        """Live streaming inference: items in, answers out, as they happen."""
        if self.model is None:
            return self.not_ready_response()
        limit = self.settings.max_streams
        if self._open_streams >= limit:
            message = f"{limit} streams already open (serve.max_streams): retry later"
            return JSONResponse({"error": message}, 503, headers={"Retry-After": "1"})
        lines = self._stream_answers(request)
        return DuplexStreamingResponse(lines, media_type="application/x-ndjson")

    async def _stream_answers(self, request: Request):
        model, settings = self.model, self.settings
        state = self.serving.open_stream(model)
        answers = StreamAnswers(state, self.router.answer, settings.max_line_bytes, self.metrics)
        self._open_streams += 1
        try:
            batches = ndjson_batches(request, settings.max_line_bytes, settings.line_timeout_s)
            async for batch in batches:
                # Between chunks a stream moves to a hot-swapped model, keeping its state.
                current = self.model or model
                if current is not model:
                    model = current
                    state.follow(model)
                yield await asyncio.to_thread(answers.chunk, model, batch)
        except LineTimeout as timeout:
            self.metrics["stream_errors"].labels("timeout").inc()
            message = (
                f"line {timeout.args[0]} unfinished for {settings.line_timeout_s} s "
                "(serve.line_timeout_s): stream closed"
            )
            yield ndjson([{"line": timeout.args[0], "error": message}])
        finally:
            self._open_streams -= 1


class Explanations:
    """`POST /explain`, for an `Explaining` adapter: each item's answer and why."""

    heavy_paths: ClassVar[tuple[str, ...]] = ("/explain",)

    @staticmethod
    def serves(adapter: type[Serving]) -> bool:
        return issubclass(adapter, Explaining)

    @api(
        lambda adapter, settings, served: {
            "input_spec": request_body(adapter, served, settings.max_explain_items, "ExplainInput"),
            "output_spec": answers_spec(adapter.Explanation or adapter.Response),
        }
    )
    async def explain(self, **fields):
        """Answer each item and say why (what the answer rests on): at most
        `serve.max_explain_items` items, computed as the uploads are (heavy)."""
        model = self.serving_model()
        adapter = type(self.serving)
        # not batched: called with the body's fields
        items = [as_item(item) for item in fields[adapter.input_name]]
        kind = adapter.Explanation or adapter.Response
        return await self.heavy(self.replies, "explain", kind, model, items, self.serving.explain)


class Uploads:
    """`POST /predict_<file_kind>`, for a `FileInput` adapter: one uploaded file."""

    upload_paths: ClassVar[tuple[str, ...]] = ("/predict_{kind}",)
    heavy_paths: ClassVar[tuple[str, ...]] = ("/predict_{kind}",)

    @staticmethod
    def serves(adapter: type[Serving]) -> bool:
        return issubclass(adapter, FileInput)

    @route("/predict_{kind}")
    async def predict_file(self, file: UploadFile = File(...)):  # noqa: B008 - FastAPI idiom
        """Answer one uploaded file (multipart field `file`)."""
        read = await self.upload(file)
        if isinstance(read, JSONResponse):
            return read
        model, item = read
        api_name, call = f"predict_{self.serving.file_kind}", self.serving.predict
        return await self.heavy(self.file_answer, api_name, model, item, call)

    async def upload(self, file: UploadFile):
        """The serving model and the item the upload stands for, or the 4xx/503
        response to send."""
        model = self.model
        if model is None:
            return self.not_ready_response()
        data = await file.read()
        try:
            return model, await self.heavy(self.serving.item_from_file, data, model)
        except BadInput as error:
            return JSONResponse({"error": f"{file.filename}: {error}"}, error.status)

    def file_answer(self, api_name, model, item, call, picture: bool = False):
        try:
            (found,) = self.router.answer(api_name, model, [item], call)
        except BadInput as error:
            return JSONResponse({"error": str(error)}, error.status)
        if found.error:
            return JSONResponse(found.response, 400)
        if picture and found.picture is not None:
            headers = picture_headers(found)
            return Response(found.picture, media_type="image/png", headers=headers)
        return found.response


class UploadExplanations(Uploads):
    """`POST /explain_<file_kind>`, for an adapter both `FileInput` and `Explaining`."""

    upload_paths: ClassVar[tuple[str, ...]] = ("/explain_{kind}",)
    heavy_paths: ClassVar[tuple[str, ...]] = ("/explain_{kind}",)

    @staticmethod
    def serves(adapter: type[Serving]) -> bool:
        return issubclass(adapter, FileInput) and issubclass(adapter, Explaining)

    @route("/explain_{kind}")
    async def explain_file(
        self,
        file: UploadFile = File(...),  # noqa: B008 - FastAPI idiom
        format: str = Query("png", pattern="^(png|json)$"),
    ):
        """Why the answer for one uploaded file is what it is: a picture (the answer in
        `X-Loopline-*` headers) or, with `?format=json`, numbers."""
        read = await self.upload(file)
        if isinstance(read, JSONResponse):
            return read
        model, item = read
        api_name, call = f"explain_{self.serving.file_kind}", self.serving.explain
        picture = format == "png"
        return await self.heavy(self.file_answer, api_name, model, item, call, picture)


# Most specific first (a class's ability before the ones it extends).
ABILITIES = (Streams, Explanations, UploadExplanations, Uploads)
