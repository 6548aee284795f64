"""One error body for every failure, published: every 4xx/5xx body the service sends is
`{"error": message}`, with `detail` (one entry per problem) where a request failed
validation: BentoML's 400s, FastAPI's 422s, our refusals and the ASGI middlewares'
answers. The published spec documents each status an operation really answers with this
one schema."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import bentoml
from bentoml._internal.service.openapi.specification import Schema
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from serving.asgi import OPEN_PATHS

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


def answer_errors_with_one_schema(app: FastAPI) -> None:
    """FastAPI's errors as `{"error", "detail"}`: its validation errors (the upload
    routes' 422) and its HTTP errors (a multipart body it cannot parse: 400)."""

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


def error_statuses(path: str, method: str, uploads: frozenset[str]) -> set[int]:
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


def document_errors(spec: Any, uploads: frozenset[str]) -> Any:
    """`spec` (BentoML's `OpenAPISpecification`, changed in place) with every error status
    of every operation documented, each with `ERROR_SCHEMA`."""
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
            for status in sorted(statuses | error_statuses(path, method, uploads)):
                responses.pop(str(status), None)
                responses[status] = {
                    "description": HTTPStatus(status).phrase,
                    "content": {"application/json": {"schema": dict(_ERROR_REF)}},
                }
    return spec


class PublishedService(bentoml.Service):
    """A BentoML service whose OpenAPI spec (`/docs.json`, a bento's `openapi.yaml`)
    documents the errors as the service answers them: BentoML's generator gives its APIs a
    fixed set (400/404/500 with `detail` a string) and knows nothing of the middlewares.
    The upload paths are the service class's `upload_paths`."""

    __slots__ = ()  # (an attrs class: no new fields; BentoML reads its caller's module)

    @property
    def openapi_spec(self):
        uploads = frozenset(getattr(self.inner, "upload_paths", ()))
        return document_errors(super().openapi_spec, uploads)
