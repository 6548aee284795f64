"""The framework class every task's service is: `LooplineService` owns HTTP (`POST
/predict`, batched adaptively; `GET /metadata`), health (`/livez`, `/readyz` with the
reason), metrics, the prediction log and hot swap, by the small parts it holds (`ModelHolder`,
`Router`, `Recorder`, `Mirror`); the task's adapter supplies types and work. `api` and
`route` mark how a method is published; `serving.service` publishes them once per task."""

# No `from __future__ import annotations`: BentoML and FastAPI read the APIs' annotations.

import asyncio
import gc
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import bentoml
from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from loopline.config import Params, ServeParams
from loopline.online.adapter import BadInput, Serving
from loopline.online.models import LoadedModel, default_threads, use_service_deadlines
from loopline.paths import ProjectPaths, find_project_root
from loopline.redaction import redact, redact_data, without_paths
from serving.asgi import AUTHENTICATED
from serving.bodies import Refusal, Served, answers_spec, as_item, reply, request_body
from serving.holder import ModelHolder
from serving.metrics import service_metrics, show_monitoring
from serving.mirror import Mirror
from serving.recording import Recorder
from serving.routing import Router
from serving.switch import ShortSwitch

log = logging.getLogger("loopline.serving")

# ------------------------------------------------------------------ how methods are published

# What the task and settings make of a BentoML API: `bentoml.api`'s arguments.
ApiSpec = Callable[[type[Serving], ServeParams, Served], dict[str, Any]]


def api(spec: ApiSpec):
    """Publish the method as a BentoML API whose arguments (the task's request types, the
    batching settings) `spec` gives when the service class is composed."""

    def mark(method):
        method.loopline_api = spec
        return method

    return mark


@dataclass(frozen=True)
class Route:
    """A method published as a FastAPI route: `path` (`{kind}`: the adapter's
    `file_kind`), its HTTP method, and route options the adapter decides (`options`)."""

    path: str
    method: str = "POST"
    options: Callable[[type[Serving]], dict[str, Any]] | None = None


def route(path: str, method: str = "POST", options=None):
    """Publish the method as a FastAPI route on the service's own app."""

    def mark(method_):
        method_.loopline_route = Route(path, method, options)
        return method_

    return mark


# ------------------------------------------------------------------ the framework class


class LooplineService:
    """Live answers from the registry's champion, for any task: `/predict`, `/metadata`,
    health, metrics, the prediction log and hot swap."""

    served: ClassVar[Served]  # what this class's request bodies check items against
    params: ClassVar[Params]  # what the class was composed from (`service_for`)
    # Paths that only some tasks have, by kind (`{kind}`: the adapter's `file_kind`).
    upload_paths: ClassVar[tuple[str, ...]] = ()
    heavy_paths: ClassVar[tuple[str, ...]] = ()
    body_types: ClassVar[dict[str, tuple[bytes, ...]]] = {}

    def __init__(self) -> None:
        params = self.params
        paths = ProjectPaths.at(find_project_root(os.environ.get("LOOPLINE_PROJECT")))
        paths.state.mkdir(parents=True, exist_ok=True)
        self.settings = settings = params.serve
        self.task = params.plugin
        self.serving: Serving = self.task.Serving(self.task, params)
        self.metrics = service_metrics()
        self.registry_deadlines = use_service_deadlines()
        self.switch = ShortSwitch()
        self.holder = ModelHolder(
            self.task,
            paths.tracking_uri(),
            params.served_model,
            settings.alias,
            paths.state / "serving-cache",
            settings.threads or default_threads(settings.workers),
            self.metrics,
        )
        self.holder.swapped.append(self._swapped)
        self.recorder = Recorder(paths, params, self.serving, self.metrics)
        self.mirror = Mirror(self.recorder, self.metrics["mirrors_dropped"])
        self.router = Router(self.holder, self.serving, self.recorder, self.mirror, self.switch)
        self._poller: asyncio.Task | None = None
        self._heavy_slots: asyncio.Semaphore | None = None
        self.served.service = self  # for `ReadyFirst`, ahead of the batching

    @property
    def model(self) -> LoadedModel | None:
        return self.holder.model

    def _swapped(self, model: LoadedModel) -> None:
        self.served.model = model  # (the model first: the check reads both)
        self.served.serving = self.serving

    # -------------------------------------------------------------- lifecycle

    @bentoml.on_startup
    async def _start_polling(self) -> None:
        # The first load runs in the background: the server answers /livez at once,
        # /readyz says why it is not ready until a model is in.
        first = asyncio.create_task(asyncio.to_thread(self._first_look))
        self._poller = asyncio.create_task(self._poll(first))
        if self.settings.startup_wait_s > 0:
            await asyncio.wait([first], timeout=self.settings.startup_wait_s)

    def _first_look(self) -> None:
        self.holder.refresh()
        self.router.refresh()  # a restarted replica picks up a running deployment
        # What start-up made (the libraries, the model) lives as long as the process: out
        # of the collector's sight, a full collection no longer walks it (~0.5 s, seen
        # stalling requests under load).
        gc.collect()
        gc.freeze()

    async def _poll(self, first: asyncio.Task) -> None:
        try:
            await first
        except Exception:
            log.exception("first alias look crashed")
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            try:
                await asyncio.to_thread(self.holder.refresh)
            except Exception:  # never let one bad poll stop the watching
                log.exception("alias poll crashed")
            await asyncio.to_thread(self.router.refresh)
            url, name = self.recorder.predictions.url, self.holder.model_name
            await asyncio.to_thread(show_monitoring, self.metrics, url, name)

    @bentoml.on_shutdown
    async def _stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        await asyncio.to_thread(self.mirror.drain)
        await asyncio.to_thread(self.recorder.close)

    # -------------------------------------------------------------- health

    def not_ready(self) -> str | None:
        """Why no model is served (None when one is): /readyz, the APIs' 503."""
        return self.holder.not_ready()

    def __is_ready__(self) -> bool:
        reason = self.not_ready()
        if reason is not None:
            # Raised rather than returned so /readyz says *why* (BentoML's own message for
            # False does not).
            raise HTTPException(status_code=503, detail=reason, headers={"Retry-After": "1"})
        fallback = self.holder.fallback
        if fallback is not None:
            # Ready (200), but an operator reading /readyz must see it is not the champion.
            raise HTTPException(
                status_code=200,
                detail=without_paths(
                    redact(
                        f"ready: serving v{self.model.version}, a good earlier champion, not "
                        f"the champion v{fallback['champion']}: {fallback['why']}"
                    )
                ),
            )
        return True

    def serving_model(self) -> LoadedModel:
        """The model to answer with; 503 with the reason when none is in."""
        model = self.model
        if model is None:
            raise bentoml.exceptions.ServiceUnavailable(self.not_ready() or "not ready")
        return model

    def not_ready_response(self) -> JSONResponse:
        return JSONResponse({"error": self.not_ready()}, 503, headers={"Retry-After": "1"})

    # -------------------------------------------------------------- predict

    @api(
        lambda adapter, settings, served: {
            "input_spec": request_body(adapter, served, settings.max_items_per_request),
            "output_spec": answers_spec(adapter.Response),
            "batchable": True,
            "max_batch_size": settings.max_batch_size,
            "max_latency_ms": settings.max_latency_ms,
        }
    )
    def predict(self, items):
        """Answer each item (see `/metadata` for what the served model needs). Requests
        are batched adaptively."""
        model = self.serving_model()
        items = [as_item(item) for item in items]
        return self.replies("predict", type(self.serving).Response, model, items)

    def replies(self, api: str, kind, model: LoadedModel, items, call=None) -> list:
        """Each item's answer as `kind` (by `call`, default the adapter's predict), or its
        refusal."""
        try:
            found = self.router.answer(api, model, items, call or self.serving.predict)
        except BadInput as error:  # the batch as a whole cannot be answered
            # Each request of it is refused with `{"error": ...}` (BentoML's own body
            # for an exception with a 4xx code is a list, which no schema describes).
            return [Refusal(str(error), error.status)] * len(items)
        return [reply(kind, a) for a in found]

    async def heavy(self, work, *args):
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

    # -------------------------------------------------------------- metadata

    @route("/metadata", "GET")
    def metadata(self, request: Request) -> dict[str, Any]:
        """The model being served and the state of the alias watch (internal paths
        only for an authenticated client)."""
        status = redact_data(self.status())
        if request.scope.get("state", {}).get(AUTHENTICATED):
            return status
        return without_paths(status)

    def status(self) -> dict[str, Any]:
        """The model being served and the state of the alias watch (`/metadata`)."""
        holder, model = self.holder, self.model
        watch = holder.status()
        return {
            "ready": watch["ready"],
            "not_ready_reason": watch["not_ready_reason"],
            "model": model.describe(self.serving) if model else None,
            "tracking_uri": redact(holder.tracking_uri),
            "watching": {
                "name": holder.model_name,
                "alias": holder.alias,
                "poll_interval_s": self.settings.poll_interval_s,
            },
            "fallback": watch["fallback"],
            "last_swap_error": watch["last_swap_error"],
            "last_poll_error": watch["last_poll_error"],
            "registry_deadlines": self.registry_deadlines,
            **self.router.status(),
            **self.recorder.status(),
        }
