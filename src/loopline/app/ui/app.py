"""The operator page's web application (`loopline ui`): one server-rendered page per
registered model, whose panels fetch their facts as JSON, new predictions as server-sent
events, and whose promote and rollback go through `registry.move_champion`, the CLI's call
and lock.

Reading needs nothing; a move needs the token (`LOOPLINE_UI_TOKEN`) as a bearer header. The
token lives in the page's memory, never in a cookie, so another site cannot make a browser
send it; requests from another origin are refused as well (`Origin`, `Sec-Fetch-Site`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field
from sse_starlette.sse import EventSourceResponse
from starlette.middleware.trustedhost import TrustedHostMiddleware

from loopline import registry
from loopline.app.ui import facts
from loopline.app.ui.services import Watcher
from loopline.errors import ChampionMoved, LooplineError, RegistryUnreachable
from loopline.health import LOOPBACK_HOSTS
from loopline.offline.batch import human_labels
from loopline.online.models import service_check
from loopline.online.predlog import upgrade_predictions
from loopline.redaction import redact
from loopline.watch.monitor import load_version

HERE = Path(__file__).parent
# The page runs only its own files: no inline script, nothing from another origin.
POLICY = (
    "default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
# A monitor report is a file the monitor wrote (inline picture and table, no script).
REPORT_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; sandbox"


@dataclass
class Project:
    """What the page reads: the project's params, paths and task, and its stores."""

    params: Any
    paths: Any
    token: str | None
    services: list[str]
    engine: Any = None  # the prediction log's database (SQLAlchemy)
    scratch: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="loopline-ui-")))
    specs: dict[tuple[str, str], Any] = field(default_factory=dict)

    @property
    def tracking_uri(self) -> str:
        return self.paths.tracking_uri()

    def spec_of(self, name: str, version: str) -> Any:
        """A version's feature spec (versions never change: kept once read)."""
        key = (name, version)
        if key not in self.specs:
            try:
                found = load_version(
                    self.tracking_uri, name, version, self.params.plugin, self.scratch
                )
            except Exception as error:
                raise facts.Missing(
                    f"{name} v{version} is not a model of this project's task "
                    f"({self.params.task_name}): {redact(error)}"
                ) from None
            self.specs[key] = found.spec
        return self.specs[key]

    def labels(self):

        try:
            return human_labels(self.params, self.paths)
        except Exception:  # a task without people's labels has none to show
            return None


class Move(BaseModel):
    """A promote or rollback asked from the page."""

    action: Literal["promote", "rollback", "rollback_to"]
    version: str | None = Field(None, max_length=50)
    reason: str = Field(min_length=3, max_length=500)
    operator: str = Field(min_length=1, max_length=100)
    # The champion the page showed: another move since then refuses this one (409).
    expect: str | None = Field(None, max_length=50)


WILDCARD_ADDRESSES = ("0.0.0.0", "::", "")


def served_hosts(settings: Any, host: str | None = None) -> list[str]:
    """The `Host` names the page answers: loopback, the address it listens on (with a
    wildcard address, the machine's name) and `ui.allowed_hosts`. Any other name is a 400:
    a DNS-rebinding page (attacker.example resolved to 127.0.0.1) cannot read through it."""
    bound = settings.host if host is None else host
    named = [socket.gethostname()] if bound in WILDCARD_ADDRESSES else [bound]
    return list(dict.fromkeys([*sorted(LOOPBACK_HOSTS), *named, *settings.allowed_hosts]))


def create_app(project: Project, host: str | None = None) -> FastAPI:
    """The operator page of `project`, answering the names `served_hosts` gives for
    `host` (the address it listens on; default `ui.host`)."""
    from sqlalchemy import create_engine

    project.engine = project.engine or create_engine(
        project.paths.prediction_log_url(project.params), pool_pre_ping=True
    )
    upgrade_predictions(project.engine)
    app = FastAPI(title="Loopline", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.project = project
    app.state.watcher = Watcher(project.params.ui.service_timeout_s)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=HERE / "templates")  # autoescapes .html

    @app.middleware("http")
    async def headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.setdefault("content-security-policy", POLICY)
        response.headers["x-content-type-options"] = "nosniff"
        response.headers["referrer-policy"] = "no-referrer"
        return response

    _pages(app, templates)
    _reads(app)
    _actions(app)
    hosts = served_hosts(project.params.ui, host)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts, www_redirect=False)
    return app


# ---------------------------------------------------------------------- pages


def _pages(app: FastAPI, templates: Jinja2Templates) -> None:
    project: Project = app.state.project

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request):
        try:
            names = facts.model_names(project.tracking_uri)
        except facts.Missing as error:
            names, missing = [], str(error)
        else:
            missing = None if names else "no registered model yet: `loopline run` publishes one"
        default = project.params.served_model
        if default in names:
            return RedirectResponse(f"/models/{default}", status_code=307)
        return templates.TemplateResponse(
            request, "index.html", {"names": names, "missing": missing}
        )

    @app.get("/models/{name}", response_class=HTMLResponse)
    def page(request: Request, name: str):
        try:
            names = facts.model_names(project.tracking_uri)
        except facts.Missing:
            names = []
        context = {
            "name": name,
            "names": names,
            "actions": project.token is not None,
            "mlflow_url": project.params.ui.mlflow_url,
        }
        return templates.TemplateResponse(request, "model.html", context)

    @app.get("/reports/{run_id}")
    def report(run_id: str):
        if not run_id.isalnum():
            raise HTTPException(404, f"no monitor run {run_id!r}")
        folder = project.scratch / "reports" / run_id
        try:
            path = facts.monitor_report(project.tracking_uri, run_id, folder)
        except facts.Missing as error:
            raise HTTPException(404, str(error)) from None
        return FileResponse(
            path, media_type="text/html", headers={"content-security-policy": REPORT_POLICY}
        )


# ---------------------------------------------------------------------- panels


def _panel(read) -> dict[str, Any]:
    """A panel's facts, or what is missing (the page shows the sentence)."""
    try:
        return read()
    except facts.Missing as error:
        return {"missing": str(error)}
    except LooplineError as error:
        return {"missing": redact(error)}


def _reads(app: FastAPI) -> None:
    project: Project = app.state.project
    watcher: Watcher = app.state.watcher

    @app.get("/api/models")
    def models():
        return _panel(lambda: {"names": facts.model_names(project.tracking_uri)})

    @app.get("/api/models/{name}/now")
    async def now(name: str):
        panel = await anyio.to_thread.run_sync(
            _panel, lambda: facts.now_panel(project.tracking_uri, name)
        )
        services = project.services
        panel["services"] = await watcher.look_all(services) if services else []
        panel["services_missing"] = (
            None
            if services
            else "no service listed: add its URL to `ui.services` or `loopline ui --service`"
        )
        return panel

    @app.get("/api/models/{name}/history")
    def history(name: str):
        return _panel(lambda: facts.history_panel(project.tracking_uri, name))

    @app.get("/api/models/{name}/diff")
    def diff(name: str, a: str, b: str):
        return _panel(lambda: facts.diff(project.tracking_uri, name, a, b))

    @app.get("/api/models/{name}/health")
    def health(name: str):
        return _panel(lambda: _health(project, name))

    @app.get("/api/models/{name}/live")
    def live(name: str):
        return _panel(lambda: _live(project, name))

    @app.get("/api/models/{name}/predictions")
    def predictions(name: str, after: int = 0, limit: Annotated[int, Field(le=500)] = 50):
        return _panel(
            lambda: {"rows": facts.recent_predictions(project.engine, name, after, limit)}
        )

    @app.get("/api/models/{name}/events")
    async def events(request: Request, name: str, after: int = 0):
        """New predictions of `name` as server-sent events (`prediction`), each with its id
        as the event id, so a reconnecting browser resumes where it was."""
        resume = request.headers.get("last-event-id", "")
        start = int(resume) if resume.isdigit() else after
        return EventSourceResponse(_new_predictions(request, project, name, start), ping=15)


async def _new_predictions(request: Request, project: Project, name: str, after: int):
    interval = project.params.ui.poll_interval_s
    while not await request.is_disconnected():
        try:
            rows = await anyio.to_thread.run_sync(
                facts.recent_predictions, project.engine, name, after, 200
            )
        except facts.Missing as error:
            yield {"event": "missing", "data": str(error)}
            rows = []
        for row in rows:
            after = row["id"]
            yield {"event": "prediction", "id": str(row["id"]), "data": json.dumps(row)}
        await asyncio.sleep(interval)


def _health(project: Project, name: str) -> dict[str, Any]:
    experiment = f"{project.params.experiment_name}-monitor"
    try:
        panel = facts.health_panel(project.engine, name)
    except facts.Missing as error:
        panel = {"missing": str(error), "series": [], "alarms": []}
    runs = facts.monitor_runs(project.tracking_uri, experiment, name)
    base = project.params.ui.mlflow_url
    for run in runs:
        run["report"] = f"/reports/{run['run_id']}"
        if base:
            run["mlflow"] = (
                f"{base.rstrip('/')}/#/experiments/{run['experiment_id']}/runs/{run['run_id']}"
            )
    panel["runs"] = runs
    return panel


def _live(project: Project, name: str) -> dict[str, Any]:
    params = project.params
    return facts.live_panel(
        project.engine,
        name,
        params.plugin,
        list(params.plugin.schema_for(params)),
        lambda version: project.spec_of(name, version),
        project.labels(),
        params.ui.live_rows,
    )


# ---------------------------------------------------------------------- actions


def _authorise(project: Project, request: Request, authorization: str | None) -> None:
    """Refuse a move without the token (401), from another site (403), or when the page
    was started without a token (403: actions are off)."""
    if request.headers.get("sec-fetch-site") == "cross-site" or not _same_origin(request):
        raise HTTPException(403, "refused: the request came from another site")
    if project.token is None:
        raise HTTPException(
            403, "actions are off: start `loopline ui` with LOOPLINE_UI_TOKEN set to allow them"
        )
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.encode(), project.token.encode()
    ):
        raise HTTPException(
            401,
            "a promote or rollback needs the operator token (LOOPLINE_UI_TOKEN)",
            headers={"www-authenticate": "Bearer"},
        )


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None:  # not a browser's cross-origin request (curl, a script)
        return True
    host = request.headers.get("host", "")
    return origin.split("://", 1)[-1].rstrip("/") == host


def _actions(app: FastAPI) -> None:
    project: Project = app.state.project

    @app.post("/api/models/{name}/moves")
    def move(
        name: str,
        body: Move,
        request: Request,
        authorization: Annotated[str | None, Header()] = None,
    ):
        """Promote or roll back, as `loopline promote` / `rollback` do (same call, same
        lock); the history records the operator, the reason and that the page did it."""
        _authorise(project, request, authorization)
        if not request.headers.get("content-type", "").startswith("application/json"):
            raise HTTPException(415, "send the move as JSON")
        if body.action != "rollback" and not body.version:
            raise HTTPException(400, f"{body.action} needs a version")
        try:
            entry = registry.move_champion(
                project.tracking_uri,
                name,
                body.version if body.action != "rollback" else None,
                reason=body.reason,
                who=body.operator,
                action=body.action,
                expect=body.expect,
                via="loopline ui",
                # As the CLI: a rollback never lands on a version no service will load.
                check=service_check(project.tracking_uri) if body.action != "promote" else None,
            )
        except ChampionMoved as error:
            raise HTTPException(409, str(error)) from None
        except RegistryUnreachable as error:
            raise HTTPException(503, redact(error)) from None
        except LooplineError as error:
            raise HTTPException(400, redact(error)) from None
        return entry
