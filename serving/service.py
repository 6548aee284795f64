"""The online process: one service class that serves the registry's champion of any task.

Run it with `loopline serve` (which runs `bentoml serve serving.service:Loopline` for the
task of the model it serves), or in a container (see the Dockerfile). The task comes from
`LOOPLINE_TASK` (else the project's params.yaml); settings from the `serve:` section,
overridden by `LOOPLINE_SERVE_<KEY>` environment variables (and `MLFLOW_TRACKING_URI`).

A framework class, as KServe's `Model` is: `LooplineService` owns what every task shares,
HTTP (`POST /predict`, batched adaptively; `GET /metadata`), health (`/livez`, `/readyz`
with the reason), metrics (`/metrics`), the prediction log and hot swap; the task's serving
adapter (`loopline.online.adapter`, the task's `Serving`) supplies the types and the
predict, stream and explain work. An endpoint some tasks lack comes from the one ability
class that holds it, chosen by what the adapter can do:

- `Streams` (a `StreamLine`): `POST /stream`, NDJSON in and out, full duplex;
- `Explanations` (`Explaining`): `POST /explain`, the answer and why;
- `Uploads` (`FileInput`): `POST /predict_<file_kind>`, one uploaded file;
- `UploadExplanations` (both): `POST /explain_<file_kind>`.

`service_for` composes the served class once from them; the request types of `/predict`
and `/explain` are the task's, so the OpenAPI spec types each API with them.
"""

# No `from __future__ import annotations`: BentoML and FastAPI read the APIs' annotations.

import os

import bentoml
from fastapi import FastAPI

from loopline.config import Params, ServeParams
from loopline.online.adapter import FileInput, Serving
from loopline.redaction import redact_logs, remember_secret, remember_url_secrets
from serving.abilities import ABILITIES
from serving.asgi import (
    BatchAdmission,
    BoundedBody,
    HeavyAdmission,
    MultipartNeedsBoundary,
    ReadyFirst,
    SameSiteWrites,
    TokenAuth,
    quiet_client_errors,
)
from serving.bodies import Served
from serving.boot import boot_params
from serving.framework import LooplineService
from serving.metrics import use_own_metrics_folder
from serving.openapi import PublishedService, answer_errors_with_one_schema

# ------------------------------------------------------------------ composing the class


def service_for(params: Params) -> bentoml.Service:
    """The BentoML service serving `params`' task: `LooplineService` with the abilities its
    adapter has, its APIs typed by the adapter; its instances run with `params`."""
    adapter: type[Serving] = params.plugin.Serving
    settings = params.serve
    keep_secrets(params)
    use_own_metrics_folder(params.served_model)
    abilities = tuple(ability for ability in ABILITIES if ability.serves(adapter))
    kind = adapter.file_kind if issubclass(adapter, FileInput) else None
    inner = type(
        "Loopline",
        (*abilities, LooplineService),
        {
            "__doc__": LooplineService.__doc__,
            "__module__": __name__,
            "served": Served(),
            "params": params,
            "upload_paths": _paths(abilities, "upload_paths", kind),
            "heavy_paths": _paths(abilities, "heavy_paths", kind),
            "body_types": {
                path: types
                for ability in abilities
                for path, types in vars(ability).get("body_types", {}).items()
            },
        },
    )
    app = FastAPI(title=f"Loopline: {params.task_name}")
    _publish(inner, adapter, settings, app, kind)
    service = bentoml.service(
        name="loopline",
        service_class=PublishedService,
        workers=settings.workers,
        traffic={"timeout": 3600},  # a stream stays open as long as its client sends lines
        # BentoML's access log formats a line per request (~0.5 ms of a ~4 ms request,
        # profiled): the prediction log and the metrics keep what serving needs.
        logging={"access": {"enabled": False}},
        # Without tracing every path is excluded: OpenTelemetry's middleware then passes
        # requests straight through instead of making spans nobody exports.
        **({} if settings.tracing else {"tracing": {"excluded_urls": [".*"]}}),
    )(bentoml.asgi_app(app, path="/")(inner))
    _guard(service, settings, inner)
    answer_errors_with_one_schema(app)
    return service


def keep_secrets(params: Params) -> None:
    """Every log line of this process (MLflow's and SQLAlchemy's errors included) and every
    answer go through one redaction: no password in a URI leaves the process."""
    redact_logs()
    quiet_client_errors()
    remember_url_secrets(os.environ.get("MLFLOW_TRACKING_URI"))
    remember_url_secrets(params.serve.prediction_log)
    remember_secret(params.serve.token)


def _paths(abilities: tuple[type, ...], name: str, kind: str | None) -> tuple[str, ...]:
    """The paths the abilities list under `name`, with the adapter's file kind."""
    return tuple(p.format(kind=kind) for ability in abilities for p in vars(ability).get(name, ()))


def _publish(inner: type, adapter: type[Serving], settings: ServeParams, app, kind) -> None:
    """Each marked method of `inner`'s classes as a BentoML API or a route of `app`, set on
    `inner` itself (BentoML finds a class's routes among its own attributes)."""
    for cls in reversed(inner.__mro__[1:]):
        for name, member in vars(cls).items():
            spec = getattr(member, "loopline_api", None)
            if spec is not None:
                setattr(inner, name, bentoml.api(**spec(adapter, settings, inner.served))(member))
            found = getattr(member, "loopline_route", None)
            if found is not None:
                options = found.options(adapter) if found.options else {}
                path = found.path.format(kind=kind)
                app.add_api_route(path, member, methods=[found.method], **options)
                setattr(inner, name, member)


def _guard(service: bentoml.Service, settings: ServeParams, inner: type) -> None:
    """The ASGI middlewares, in the order they run: where a request comes from and what it
    declares first, then its body, its token, whether there is room for its work, and only
    then whether a model is in."""
    uploads = set(inner.upload_paths)
    body_types = dict(inner.body_types) | dict.fromkeys(uploads, (b"multipart/form-data",))
    service.add_asgi_middleware(
        SameSiteWrites, allowed_origins=settings.allowed_origins, body_types=body_types
    )
    service.add_asgi_middleware(
        BoundedBody,
        limit=settings.max_body_bytes,
        timeout_s=settings.body_timeout_s,
        skip_paths=("/stream",),
        path_limits={"/explain": (settings.max_explain_bytes, "serve.max_explain_bytes")},
    )
    service.add_asgi_middleware(MultipartNeedsBoundary)
    service.add_asgi_middleware(TokenAuth, token=settings.token)
    service.add_asgi_middleware(
        HeavyAdmission,
        paths=set(inner.heavy_paths),
        per_client=settings.max_heavy_per_client,
        limit=settings.max_heavy_waiting,
    )
    service.add_asgi_middleware(
        BatchAdmission, paths=("/predict",), limit=settings.max_predict_bytes_in_flight
    )
    served = inner.served
    service.add_asgi_middleware(
        ReadyFirst,
        not_ready=lambda: served.service.not_ready() if served.service else "starting",
        paths=("/predict", "/explain"),
    )


Loopline = service_for(boot_params())
