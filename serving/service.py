"""The online process: one service that serves the registry's champion of any task.

Run it with `loopline serve` (which runs `bentoml serve serving.service:Loopline` for the
task of the model it serves), or in a container (see the Dockerfile). The task comes from
the project's params.yaml, or `LOOPLINE_TASK`; settings from its `serve:` section,
overridden by `LOOPLINE_SERVE_<KEY>` environment variables (and `MLFLOW_TRACKING_URI`).

The service's APIs are the same for every task; the task's serving adapter
(`loopline.online.adapter`, the task's `Serving`) says what a request item is and how it is
answered:

- `POST /predict` `{<input_name>: [item, ...]}`: one answer per item, batched adaptively;
  the OpenAPI spec types the items with the task's `Request`, the answers with `Response`.
- `POST /stream` (where the task streams): NDJSON lines in, NDJSON answers out, full duplex.
- `POST /explain` (where the task explains): the answer and why.
- `POST /predict_<kind>`, `/explain_<kind>` (where the task takes files): one upload.
- `GET /metadata`, `/livez`, `/readyz`, `/metrics`: the model, health, Prometheus.

Everything else (alias following, hot swap, readiness, prediction log, metrics) is the
shared lifecycle in `serving.champion`.
"""

# No `from __future__ import annotations`: BentoML and FastAPI read the APIs' annotations,
# which name the task's types, local to `service_for`.

import asyncio
import os
from http import HTTPStatus
from typing import Annotated, Any

import bentoml
from bentoml.validators import ContentType
from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import (
    BaseModel,
    Discriminator,
    Field,
    RootModel,
    Tag,
    ValidationError,
    create_model,
    model_validator,
)

from loopline.config import Params
from loopline.online.adapter import (
    Answer,
    BadInput,
    Explaining,
    FileInput,
    Serving,
    StreamState,
    describe_validation,
)
from loopline.online.models import LoadedModel
from loopline.online.predlog import json_line
from loopline.redaction import (
    redact_data,
    redact_logs,
    remember_secret,
    remember_url_secrets,
    without_paths,
)
from serving.asgi import (
    AUTHENTICATED,
    OPEN_PATHS,
    BoundedBody,
    DuplexStreamingResponse,
    HeavyAdmission,
    MultipartNeedsBoundary,
    ReadyFirst,
    SameSiteWrites,
    TokenAuth,
    quiet_client_errors,
)
from serving.champion import (
    ChampionService,
    LineTimeout,
    boot_params,
    ndjson_batches,
    use_own_metrics_folder,
)


def service_for(params: Params) -> bentoml.Service:
    """The BentoML service class serving `params`' task (its APIs typed by the task's
    serving adapter)."""
    adapter: type[Serving] = params.plugin.Serving
    # Every log line of this process (MLflow's and SQLAlchemy's errors included) and every
    # answer below go through one redaction: no password in a URI leaves the process.
    redact_logs()
    quiet_client_errors()
    remember_url_secrets(os.environ.get("MLFLOW_TRACKING_URI"))
    remember_url_secrets(params.serve.prediction_log)
    remember_secret(params.serve.token)
    use_own_metrics_folder(params.served_model)
    boot, running = params.serve, params
    # The adapter and model this worker serves, for the per-item check that runs while a
    # request body is validated (one service instance per worker process).
    served: dict[str, Any] = {}
    body = _request_body(adapter, served, boot.max_items_per_request)
    answers = _answers_spec(adapter.Response)
    explains, takes_files = issubclass(adapter, Explaining), issubclass(adapter, FileInput)
    explained = (adapter.Explanation if explains else None) or adapter.Response
    explain_body = _request_body(adapter, served, boot.max_explain_items, "ExplainInput")
    explanations = _answers_spec(explained)
    kind = adapter.file_kind if takes_files else None
    app = FastAPI(title=f"Loopline: {params.task_name}")

    @bentoml.service(
        name="loopline",
        workers=boot.workers,
        traffic={"timeout": 3600},  # a stream stays open as long as its client sends lines
        # BentoML's access log formats a line per request (~0.5 ms of a ~4 ms request,
        # profiled): the prediction log and the metrics keep what serving needs.
        logging={"access": {"enabled": False}},
        # Without tracing every path is excluded: OpenTelemetry's middleware then passes
        # requests straight through instead of making spans nobody exports.
        **({} if boot.tracing else {"tracing": {"excluded_urls": [".*"]}}),
    )
    @bentoml.asgi_app(app, path="/")
    class Loopline(ChampionService):
        """Live answers from the registry's champion, for any task."""

        params = running  # (a class body cannot read `params` of the function around it)
        _heavy_slots: asyncio.Semaphore | None = None
        _open_streams = 0

        def __init__(self) -> None:
            super().__init__()
            served["service"] = self  # for `ReadyFirst`, ahead of the batching

        def on_swap(self, model: LoadedModel) -> None:
            served.update(serving=self.serving, model=model)

        # -------------------------------------------------------------- predict, explain

        @bentoml.api(
            input_spec=body,
            output_spec=answers,
            batchable=True,
            max_batch_size=boot.max_batch_size,
            max_latency_ms=boot.max_latency_ms,
        )
        def predict(self, items):
            """Answer each item (see `/metadata` for what the served model needs). Requests
            are batched adaptively."""
            model = self._serving()
            items = [_item(item) for item in items]
            return self._replies("predict", adapter.Response, model, items, self.serving.predict)

        def _replies(self, api: str, kind, model: LoadedModel, items, call) -> list:
            """Each item's answer as `kind`, or its refusal."""
            try:
                found = self.answer(api, model, items, call)
            except BadInput as error:  # the batch as a whole cannot be answered
                # Each request of it is refused with `{"error": ...}` (BentoML's own body
                # for an exception with a 4xx code is a list, which no schema describes).
                return [_Refusal(str(error), error.status)] * len(items)
            return [_reply(kind, a) for a in found]

        if explains:

            @bentoml.api(input_spec=explain_body, output_spec=explanations)
            async def explain(self, **fields):
                """Answer each item and say why (what the answer rests on): at most
                `serve.max_explain_items` items, computed as the uploads are (heavy)."""
                model = self._serving()
                # not batched: called with the body's fields
                items = [_item(item) for item in fields[adapter.input_name]]
                call = self.serving.explain
                return await self._heavy(self._replies, "explain", explained, model, items, call)

        # -------------------------------------------------------------- metadata

        @app.get("/metadata")
        def metadata(self, request: Request) -> dict[str, Any]:
            """The model being served and the state of the alias watch (internal paths
            only for an authenticated client)."""
            status = redact_data(self.status())
            if request.scope.get("state", {}).get(AUTHENTICATED):
                return status
            return without_paths(status)

        # -------------------------------------------------------------- stream

        if adapter.StreamLine is not None:

            @app.post(
                "/stream",
                response_class=StreamingResponse,
                openapi_extra={
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/x-ndjson": {
                                "schema": adapter.StreamLine.model_json_schema()
                            }
                        },
                        "description": "One item per line (NDJSON).",
                    }
                },
                responses={
                    200: {
                        "content": {
                            "application/x-ndjson": {
                                "schema": _stream_reply(adapter.Response).model_json_schema()
                            }
                        },
                        "description": "One line per answer (as soon as it is ready, in "
                        "order), per rejected line, and per notice.",
                    }
                },
            )
            async def stream(self, request: Request):
                """Live streaming inference: items in, answers out, as they happen."""
                if self.model is None:
                    return self._not_ready()
                limit = self.settings.max_streams
                if self._open_streams >= limit:
                    message = f"{limit} streams already open (serve.max_streams): retry later"
                    return JSONResponse({"error": message}, 503, headers={"Retry-After": "1"})
                lines = self._stream(request)
                return DuplexStreamingResponse(lines, media_type="application/x-ndjson")

        async def _stream(self, request: Request):
            model = self.model
            state = self.serving.open_stream(model)
            settings = self.settings
            self._open_streams += 1
            try:
                batches = ndjson_batches(request, settings.max_line_bytes, settings.line_timeout_s)
                async for batch in batches:
                    # Between chunks a stream moves to a hot-swapped model, keeping its state.
                    current = self.model or model
                    if current is not model:
                        model = current
                        state.follow(model)
                    yield await asyncio.to_thread(self._stream_lines, state, model, batch)
            except LineTimeout as timeout:
                self.metrics["stream_errors"].labels("timeout").inc()
                message = (
                    f"line {timeout.args[0]} unfinished for {settings.line_timeout_s} s "
                    "(serve.line_timeout_s): stream closed"
                )
                yield _ndjson([{"line": timeout.args[0], "error": message}])
            finally:
                self._open_streams -= 1

        def _stream_lines(self, state: StreamState, model: LoadedModel, batch) -> bytes:
            """The answer lines for one chunk of input lines, in line order (what a line
            made ready is answered after that line's own events)."""
            out: list[tuple[int, int, dict[str, Any]]] = []
            ready: list[tuple[int, Any]] = []
            for line, raw in batch:
                if raw is None:
                    limit = self.settings.max_line_bytes
                    message = f"line longer than {limit} bytes (serve.max_line_bytes)"
                    out.append((line, 0, {"line": line, "error": message}))
                    self.metrics["stream_errors"].labels("too_long").inc()
                    continue
                if not raw.strip():
                    continue
                try:
                    item = adapter.StreamLine.model_validate_json(raw)
                except ValidationError as error:
                    out.append((line, 0, {"line": line, "error": describe_validation(error)}))
                    self.metrics["stream_errors"].labels("malformed").inc()
                    continue
                items, events = state.push(line, item)
                for event in events:
                    out.append((line, 0, {"line": line, **event}))
                    if "error" in event:
                        self.metrics["stream_errors"].labels("rejected").inc()
                ready += items
            if ready:
                items = [item for _, item in ready]
                try:
                    found = self.answer("stream", model, items, self.serving.predict)
                    replies = [(a.response, a.error) for a in found]
                except BadInput as error:  # the batch as a whole: each of its lines says so
                    replies = [({"error": str(error)}, True)] * len(ready)
                for (line, _), (response, error) in zip(ready, replies, strict=True):
                    out.append((line, 1, {"line": line, **response}))
                    if error:
                        self.metrics["stream_errors"].labels("bad_input").inc()
            out.sort(key=lambda a: (a[0], a[1]))
            return _ndjson([payload for _, _, payload in out])

        # -------------------------------------------------------------- uploads

        if takes_files:

            @app.post(f"/predict_{kind}")
            async def predict_file(self, file: UploadFile = File(...)):  # noqa: B008 - FastAPI idiom
                """Answer one uploaded file (multipart field `file`)."""
                read = await self._upload(file)
                if isinstance(read, JSONResponse):
                    return read
                model, item = read
                api, call = f"predict_{kind}", self.serving.predict
                return await self._heavy(self._file_answer, api, model, item, call)

            if explains:

                @app.post(f"/explain_{kind}")
                async def explain_file(
                    self,
                    file: UploadFile = File(...),  # noqa: B008 - FastAPI idiom
                    format: str = Query("png", pattern="^(png|json)$"),
                ):
                    """Why the answer for one uploaded file is what it is: a picture (the
                    answer in `X-Loopline-*` headers) or, with `?format=json`, numbers."""
                    read = await self._upload(file)
                    if isinstance(read, JSONResponse):
                        return read
                    model, item = read
                    api, call = f"explain_{kind}", self.serving.explain
                    picture = format == "png"
                    return await self._heavy(self._file_answer, api, model, item, call, picture)

        async def _upload(self, file: UploadFile):
            """The serving model and the item the upload stands for, or the 4xx/503
            response to send."""
            model = self.model
            if model is None:
                return self._not_ready()
            data = await file.read()
            try:
                return model, await self._heavy(self.serving.item_from_file, data, model)
            except BadInput as error:
                return JSONResponse({"error": f"{file.filename}: {error}"}, error.status)

        async def _heavy(self, work, *args):
            """Run CPU-heavy `work` (decoding an upload, an explanation) in a thread, at most
            `serve.max_heavy_requests` at once: the event loop keeps answering meanwhile."""
            if self._heavy_slots is None:  # made on the loop that serves the requests
                self._heavy_slots = asyncio.Semaphore(self.settings.max_heavy_requests)
            async with self._heavy_slots:
                who = object()  # this request's hold
                self.switch.hold(who)
                try:
                    return await asyncio.to_thread(work, *args)
                finally:
                    self.switch.release(who)

        def _not_ready(self) -> JSONResponse:
            return JSONResponse({"error": self.not_ready()}, 503, headers={"Retry-After": "1"})

        def _file_answer(self, api, model, item, call, picture: bool = False):
            try:
                (found,) = self.answer(api, model, [item], call)
            except BadInput as error:
                return JSONResponse({"error": str(error)}, error.status)
            if found.error:
                return JSONResponse(found.response, 400)
            if picture and found.picture is not None:
                return Response(found.picture, media_type="image/png", headers=_headers(found))
            return found.response

    # The middlewares run in the order added: where a request comes from and what it
    # declares first, then its body, its token, and only then whether a model is in.
    uploads = {f"/predict_{kind}", f"/explain_{kind}"} if takes_files else set()
    body_types = {"/stream": (b"application/x-ndjson", b"application/json")}
    body_types |= dict.fromkeys(uploads, (b"multipart/form-data",))
    Loopline.add_asgi_middleware(
        SameSiteWrites, allowed_origins=boot.allowed_origins, body_types=body_types
    )
    Loopline.add_asgi_middleware(
        BoundedBody,
        limit=boot.max_body_bytes,
        timeout_s=boot.body_timeout_s,
        skip_paths=("/stream",),
        path_limits={"/explain": (boot.max_explain_bytes, "serve.max_explain_bytes")},
    )
    Loopline.add_asgi_middleware(MultipartNeedsBoundary)
    Loopline.add_asgi_middleware(TokenAuth, token=boot.token)
    heavy = {"/explain", *uploads} if explains else set(uploads)
    Loopline.add_asgi_middleware(
        HeavyAdmission,
        paths=heavy,
        per_client=boot.max_heavy_per_client,
        limit=boot.max_heavy_waiting,
    )
    Loopline.add_asgi_middleware(
        ReadyFirst,
        not_ready=lambda: served["service"].not_ready() if "service" in served else "starting",
        paths=("/predict", "/explain"),
    )
    _answer_errors_with_one_schema(app)
    Loopline.__class__ = _publishing_errors(type(Loopline), uploads)
    return Loopline


# ------------------------------------------------------------------ error bodies, published

# Every 4xx/5xx body the service sends is `{"error": message}`, with `detail` (one entry per
# problem) where a request failed validation: BentoML's 400s, FastAPI's 422s, our refusals
# and the ASGI middlewares' answers. The published spec documents each status an operation
# really answers with this one schema.
ERROR_SCHEMA = {
    "title": "Error",
    "type": "object",
    "description": "Why the request was not answered.",
    "required": ["error"],
    "properties": {
        "error": {"title": "Message", "type": "string"},
        "detail": {
            "title": "Error Detail",
            "description": "Where a request failed validation: one entry per problem.",
            "type": "array",
            "items": {
                "type": "object",
                "required": ["loc", "msg", "type"],
                "properties": {
                    "loc": {
                        "type": "array",
                        "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                    },
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
    },
}
_ERROR_REF = {"$ref": "#/components/schemas/Error"}


def _answer_errors_with_one_schema(app: FastAPI) -> None:
    """FastAPI's errors as `{"error", "detail"}`: its validation errors (the upload
    routes' 422) and its HTTP errors (a multipart body it cannot parse: 400)."""
    from fastapi.encoders import jsonable_encoder
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        return JSONResponse({"error": str(error.detail)}, error.status_code, error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError):
        problems = error.errors()
        message = f"{len(problems)} validation error{'s' * (len(problems) != 1)} for request"
        return JSONResponse(
            {"error": message, "detail": jsonable_encoder(problems)},
            HTTPStatus.UNPROCESSABLE_ENTITY,
        )


def _error_statuses(path: str, method: str, uploads: set[str]) -> set[int]:
    """The error statuses the service answers `method path` with, besides those its
    framework documents already (FastAPI's 422, BentoML's 400/404/500)."""
    if path in OPEN_PATHS or method != "post":
        return set()
    # bad body or multipart; no token (serve.token); from another site; not JSON; not ready
    statuses = {400, 401, 403, 415, 503}
    if path != "/stream":  # (limited per line, not per body)
        statuses |= {408, 413}  # body unfinished (serve.body_timeout_s), too large
    if path in uploads:
        statuses |= {413, 415, 422}  # too many pixels; not an image the model reads
    if path in uploads or path == "/explain":
        statuses |= {429}  # heavy: this client has its share in flight
    return statuses


def _document_errors(spec: Any, uploads: set[str]) -> Any:
    """`spec` (BentoML's `OpenAPISpecification`, changed in place) with every error status
    of every operation documented, each with `ERROR_SCHEMA`."""
    from bentoml._internal.service.openapi.specification import Schema

    components = spec.components  # (BentoML's generator gives a dict)
    schemas = components["schemas"] if isinstance(components, dict) else components.schemas
    schemas["Error"] = Schema(**ERROR_SCHEMA)
    for path, item in spec.paths.items():
        for method in ("get", "put", "post", "delete", "patch"):
            operation = getattr(item, method, None)
            if operation is None:
                continue
            responses = (
                operation["responses"] if isinstance(operation, dict) else operation.responses
            )
            statuses = {int(s) for s in responses if str(s).isdigit() and int(s) >= 400}
            for status in sorted(statuses | _error_statuses(path, method, uploads)):
                responses.pop(str(status), None)
                responses[status] = {
                    "description": HTTPStatus(status).phrase,
                    "content": {"application/json": {"schema": dict(_ERROR_REF)}},
                }
    return spec


def _publishing_errors(service_class: type, uploads: set[str]) -> type:
    """`service_class` whose OpenAPI spec (`/docs.json`, a bento's `openapi.yaml`) documents
    the errors as the service answers them: BentoML's generator gives its APIs a fixed set
    (400/404/500 with `detail` a string) and knows nothing of the ASGI middlewares."""

    class Published(service_class):
        __slots__ = ()

        @property
        def openapi_spec(self):
            return _document_errors(super().openapi_spec, uploads)

    Published.__name__ = Published.__qualname__ = service_class.__name__
    return Published


def _request_body(
    adapter: type[Serving], served: dict[str, Any], max_items: int, name: str = "Input"
) -> type[BaseModel]:
    """The JSON body of `/predict` and `/explain`: `{input_name: [Request, ...]}`, each item
    checked against the served model while the body is validated (a bad one is a 400
    naming it). BentoML names body fields after an API's parameters; given as the API's
    input spec, the field takes the adapter's name (`windows`, `texts`, ...)."""
    forms = [adapter.Request]
    if adapter.ColumnarRequest is not None:
        forms.append(adapter.ColumnarRequest)
    if adapter.check is not Serving.check:

        def served_model_check(value):
            if served:
                served["serving"].check(value, served["model"])
            return value

        check = model_validator(mode="after")(served_model_check)
        forms = [
            create_model(
                form.__name__,
                __base__=form,
                __module__=form.__module__,
                __validators__={"served_model_check": check},
            )
            for form in forms
        ]
    item = forms[0]
    if len(forms) == 2:  # told apart by a `columns` key, not by trying one then the other
        # A root model: BentoML re-patches the annotations of a body's fields, which a bare
        # discriminated union does not survive. `_item` unwraps it for the adapter.
        item = RootModel[
            Annotated[
                Annotated[forms[0], Tag("readings")] | Annotated[forms[1], Tag("columns")],
                Discriminator(_item_form),
            ]
        ]
        item.__name__ = f"{forms[0].__name__}Or{forms[1].__name__}"
        _EITHER_FORM.add(item)
    # (pydantic counts the items after validating them: ~25 ms for a 0.7 MB body of 2,000
    # images, which is why /explain bodies are bounded in bytes as well, before reading.)
    field = (
        list[item],
        Field(description=f"The {adapter.input_name} to answer", max_length=max_items),
    )
    return create_model(
        name, __base__=bentoml.IODescriptor, __module__=__name__, **{adapter.input_name: field}
    )


# The wrappers of two request forms `_request_body` made (a task's own Request may itself
# be a root model, as a text is: only these are unwrapped).
_EITHER_FORM: set[type] = set()


def _item(value: Any) -> Any:
    """A body item as the adapter takes it (either form's model, not their wrapper)."""
    return value.root if type(value) in _EITHER_FORM else value


def _item_form(value: Any) -> str | None:
    """Which request form an item is; None (a 400 naming the item) for anything that is
    neither an object nor a model, say a list where a window belongs."""
    if isinstance(value, dict):
        return "columns" if "columns" in value else "readings"
    if isinstance(value, BaseModel):
        return "columns" if "columns" in type(value).model_fields else "readings"
    return None


def _ndjson(payloads: list[dict[str, Any]]) -> bytes:
    """NDJSON lines (orjson: the stdlib encoder cost a tenth of a bulk stream's CPU)."""
    return b"".join(map(json_line, payloads))


def _stream_reply(response: type[BaseModel]) -> type[BaseModel]:
    """One NDJSON line of `/stream`'s answer, for the OpenAPI spec: an answer (the
    `Response` fields), an error or a notice, with the input line it is about."""
    fields: dict[str, Any] = {"line": (int | None, Field(None, description="The input line"))}
    fields |= {name: (f.annotation | None, None) for name, f in response.model_fields.items()}
    fields |= {"error": (str | None, None), "notice": (str | None, None)}
    return create_model("StreamReply", **fields)


def _headers(answer: Answer) -> dict[str, str]:
    """The answer's plain fields as `X-Loopline-<Field>` headers (next to a picture)."""
    return {
        "X-Loopline-" + "-".join(p.capitalize() for p in name.split("_")): str(value)
        for name, value in answer.response.items()
        if isinstance(value, str | int | float)
    }


class _Refusal:
    """An item's error that its answer type cannot carry: its request is answered 400 by
    `_answers_spec`, on its own (an adaptive batch mixes many clients' requests)."""

    def __init__(self, message: str, status: int = HTTPStatus.BAD_REQUEST) -> None:
        self.message, self.status = message, status


def _answers_spec(kind: type[BaseModel]) -> type[bentoml.IODescriptor]:
    """The output of `/predict` and `/explain`: a list of `kind`; a request one of whose
    items was refused (`_Refusal`) gets a 400 `{"error": ...}` naming it instead, while the
    other requests of its batch get their answers. The content type is declared because
    BentoML otherwise derives it by generating the output's JSON schema on every response
    (~1.7 ms per request, measured)."""

    def answers() -> Annotated[list[kind], ContentType("application/json")]: ...

    base = bentoml.IODescriptor.from_output(answers)

    class Answers(base):
        @classmethod
        async def to_http_response(cls, obj: Any, serde: Any) -> Response:
            refused = [a for a in obj if isinstance(a, _Refusal)]
            if refused:
                message = "; ".join(dict.fromkeys(a.message for a in refused))
                return JSONResponse({"error": message}, refused[0].status)
            return await super().to_http_response(obj, serde)

    Answers.media_type = base.media_type
    Answers.__name__ = Answers.__qualname__ = base.__name__
    return Answers


Loopline = service_for(boot_params())


def _reply(kind: type[BaseModel], answer: Answer) -> BaseModel | _Refusal:
    """One answer as the API's type; an error answer its type cannot carry refuses its
    request rather than being sent as an empty answer."""
    if answer.error and "error" not in kind.model_fields:
        return _Refusal(str(answer.response.get("error", "the item cannot be answered")))
    return kind.model_construct(**answer.response)
