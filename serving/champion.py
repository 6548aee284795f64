"""What the one service shares with every task: follow the registry's alias, serve what it
names, log and count what it answers.

`ChampionService` loads the champion in the background at start-up (probes answer at once
whatever the registry does), re-resolves the alias every `serve.poll_interval_s` and
hot-swaps a new version after it loaded, warmed and passed its golden-batch check (off the
request path; requests keep the model they started with), says why it is not ready, runs the
task's serving adapter on a batch (`answer`), writes every prediction to the prediction log
and keeps the metrics. `serving/service.py` adds the APIs.

A version that fails to load or its check is marked refused in the registry (rollbacks skip
it); a service whose champion is refused serves the last good champion of the history and
says so in `/readyz` and `/metadata` until the alias moves or the version is retried.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, ClassVar

import bentoml
from starlette.exceptions import HTTPException

from loopline import registry
from loopline.config import Params, apply_overrides, load_params, parse_params, serve_env_overrides
from loopline.online.adapter import Answer, Serving, answer_items
from loopline.online.live import LiveInputLog, live_rows, spool_folder
from loopline.online.models import (
    LoadedModel,
    ModelLoadError,
    NotJudged,
    RegistryUnavailable,
    default_threads,
    load_version,
    resolve_alias,
    use_service_deadlines,
)
from loopline.online.predlog import PredictionLog, PredictionRecord
from loopline.paths import ProjectPaths, find_project_root
from loopline.redaction import redact, without_paths
from loopline.watch import deploy
from loopline.watch.deploy import Deployment

log = logging.getLogger("loopline.serving")

# Roles whose error answers are logged while a challenger is deployed (`loopline.watch.deploy`).
DEPLOYED_ROLES = ("canary", "shadow", "control")
MIRROR_QUEUE_ITEMS = 10_000  # mirrored items waiting; more are dropped (counted)
MIRROR_LINGER_S = 0.05  # how long mirrored items gather into one batch
MIRROR_SWITCH_S = 0.0005
DEFAULT_SWITCH_S = sys.getswitchinterval()


class ShortSwitch:
    """A short GIL switch interval while any background work holds it (a challenger's
    mirror, an explanation, an upload's decoding): such work holds the GIL in stretches,
    and the threads answering light requests get it back within 0.5 ms rather than 5 ms
    (measured: shadow p99 at concurrency 16 went from 1.17x to 1.02x the plain one)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders: set[object] = set()

    def hold(self, who: object) -> None:
        with self._lock:
            self._holders.add(who)
            sys.setswitchinterval(MIRROR_SWITCH_S)

    def release(self, who: object) -> None:
        with self._lock:
            self._holders.discard(who)
            if not self._holders:
                sys.setswitchinterval(DEFAULT_SWITCH_S)


# The task a service runs comes from here when set (`loopline serve` sets it to the task of
# the model it serves), else from the project's params.yaml.
TASK_ENV = "LOOPLINE_TASK"


def boot_params(environ: dict[str, str] | None = None) -> Params:
    """The params a service process runs with: the project's params.yaml (`LOOPLINE_PROJECT`,
    else the working folder) with the environment's overrides (`LOOPLINE_SERVE_<KEY>`,
    `LOOPLINE_TASK`). Read when the service module is imported: the task's request types
    and the decorator arguments (workers, batching) come from them."""
    environ = dict(os.environ if environ is None else environ)
    overrides = serve_env_overrides(environ)
    if environ.get(TASK_ENV):
        overrides.append(f"task={environ[TASK_ENV]}")
    params_file = ProjectPaths.at(find_project_root(environ.get("LOOPLINE_PROJECT"))).params_file
    if params_file.is_file():
        return load_params(params_file, overrides)
    return parse_params(apply_overrides({}, overrides))


# The Prometheus multiprocess folder of this service: `PROMETHEUS_MULTIPROC_DIR`, which
# `loopline serve` sets to one per model and port under the state folder. BentoML itself
# ignores that variable and uses one folder per BENTOML_HOME, wiped by every start, so two
# services of one project would share and wipe each other's series.


def use_own_metrics_folder(model_name: str, environ: dict[str, str] | None = None) -> str:
    """Point BentoML's multiprocess metrics folder at this service's own and return it.
    Called when the service module is imported, before BentoML's main process creates
    (and wipes) the folder and hands it to its workers through the same variable."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    environ = os.environ if environ is None else environ
    folder = environ.get("PROMETHEUS_MULTIPROC_DIR") or os.path.join(
        BentoMLContainer.bentoml_home.get(),
        "prometheus_multiproc_dir",
        f"{model_name}-{os.getpid()}",
    )
    BentoMLContainer.prometheus_multiproc_dir.set(folder)
    return folder


_METRICS: dict[str, Any] = {}


def service_metrics() -> dict[str, Any]:
    """Prometheus metrics, created once per process and after BentoML set up multiprocess
    collection (creating them at import would hide them from `/metrics`)."""
    if not _METRICS:
        from prometheus_client import Counter, Gauge, Histogram

        _METRICS.update(
            model_version=Gauge(
                "loopline_model_version",
                "Version of the model being served",
                ["model", "alias"],
                multiprocess_mode="liveall",
            ),
            swaps=Counter("loopline_model_swaps", "Model loads by outcome", ["outcome"]),
            poll_errors=Counter("loopline_registry_poll_errors", "Failed alias polls"),
            mirrors_dropped=Counter(
                "loopline_mirrors_dropped",
                "Mirrored items (shadow, control) dropped: the mirror thread was behind",
                ["role"],
            ),
            predictions=Counter("loopline_predictions", "Predictions served", ["api", "version"]),
            stream_errors=Counter("loopline_stream_errors", "Rejected stream lines", ["kind"]),
            refused=Counter(
                "loopline_refused_inputs",
                "Items refused by the data contract, per rule broken (validation's names)",
                ["rule"],
            ),
            batch_size=Histogram(
                "loopline_batch_size",
                "Items per model call",
                ["api"],
                buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            ),
            latency=Histogram(
                "loopline_inference_seconds",
                "Features + model time per call",
                ["api"],
                buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            ),
            log_dropped=Gauge(
                "loopline_prediction_log_dropped",
                "Predictions the log could not keep",
                multiprocess_mode="liveall",
            ),
            # The monitor's latest tested window per signal (`loopline monitor`), read from
            # the monitoring table at each alias poll.
            monitor_ratio=Gauge(
                "loopline_monitor_ratio",
                "Latest monitoring window: statistic over its calibrated threshold (1 = at it)",
                ["signal", "version"],
                multiprocess_mode="liveall",
            ),
            monitor_alarm=Gauge(
                "loopline_monitor_alarm",
                "1 when the signal's latest monitoring window raised an alarm",
                ["signal", "version"],
                multiprocess_mode="liveall",
            ),
        )
    return _METRICS


class WrongTask(NotJudged):
    """The version is fine, but of another task: this service's configuration, not the
    version, is wrong (so it is not marked refused)."""


class ChampionService:
    """The alias-following lifecycle of the model of one task (`params`, set by the service
    class that inherits it)."""

    params: ClassVar[Params]

    def __init__(self) -> None:
        root = find_project_root(os.environ.get("LOOPLINE_PROJECT"))
        self.paths = ProjectPaths.at(root)
        self.paths.state.mkdir(parents=True, exist_ok=True)
        params = self.params
        self.settings = params.serve
        self.model_name = params.served_model
        self.alias = self.settings.alias
        self.tracking_uri = self.paths.tracking_uri()
        self.task = params.plugin
        self.serving: Serving = self.task.Serving(self.task, params)
        self.threads = self.settings.threads or default_threads(self.settings.workers)
        self.cache = self.paths.state / "serving-cache"
        self.model: LoadedModel | None = None
        self.not_ready_reason = "loading: the first look at the registry is under way"
        self.last_swap_error: dict[str, Any] | None = None
        self.last_poll_error: dict[str, Any] | None = None
        # Set while serving an earlier version because the champion was refused.
        self.fallback: dict[str, Any] | None = None
        self.registry_deadlines = use_service_deadlines()
        self.metrics = service_metrics()
        # Both writers: the same database, batches and queue bound; a spool folder each.
        url, writing = (
            self.paths.prediction_log_url(params),
            {
                "batch_size": self.settings.log_batch_size,
                "flush_interval_s": self.settings.log_flush_interval_s,
                "queue_size": self.settings.log_queue_size,
            },
        )
        spool = self.paths.state / "spool" / self.model_name
        self.predictions = PredictionLog(url, spool_dir=spool, **writing)
        # The input rows answered, stored once for training (`serve.store_inputs`).
        self.inputs = (
            LiveInputLog(url, spool_dir=spool_folder(self.paths.state, self.model_name), **writing)
            if self.settings.store_inputs
            else None
        )
        self._poller: asyncio.Task | None = None
        # A challenger deployed beside the champion (`loopline deploy`), read at each poll.
        self.deployment: Deployment | None = None
        self.challenger: LoadedModel | None = None
        self.challenger_error: dict[str, Any] | None = None
        # Mirrored items wait on one thread, off the response path, and are answered in
        # batches gathered over `MIRROR_LINGER_S` (one model call for many requests); past
        # the bound they are dropped (counted) rather than queued behind answers.
        self._mirror_items: list[tuple[str, LoadedModel, str, Any]] = []
        self._mirror_busy = False
        self._mirror_ready = threading.Condition()
        self._mirror_thread = threading.Thread(target=self._mirror_loop, name="mirror", daemon=True)
        self._mirror_thread.start()
        self.switch = ShortSwitch()

    # ------------------------------------------------------------------ model lifecycle

    def on_swap(self, model: LoadedModel) -> None:
        """Called after a new version is swapped in (for per-service bookkeeping)."""

    def refresh(self) -> None:
        """Re-resolve the alias; load, warm and check a new version, then swap it in.

        Runs off the request path (the poller's thread). Requests hold their own reference
        to the model they started with, so in-flight ones finish on it.
        """
        current = self.model
        try:
            found = resolve_alias(self.tracking_uri, self.model_name, self.alias)
        except RegistryUnavailable as error:
            self.metrics["poll_errors"].inc()
            self.last_poll_error = {"error": str(error), "at": now()}
            if current is None:
                self.not_ready_reason = f"registry unreachable: {error}"
            log.warning("alias poll failed, still serving %s: %s", _label(current), error)
            return
        self.last_poll_error = None
        if found is None:
            if current is None:
                self.not_ready_reason = (
                    f"no version of {self.model_name!r} has alias {self.alias!r} yet in "
                    f"{redact(self.tracking_uri)} (run `loopline run` to publish one)"
                )
            return
        version = str(found.version)
        if current is not None and current.version == version:
            self.fallback = None  # the alias came to the version being served
            return
        mark = registry.refusal(found)
        if mark is not None:  # by this service or another: do not try it again
            self._champion_refused(
                version, registry.describe_refusal(self.model_name, version, mark)
            )
            return
        try:
            loaded = self._load(found)
        except ModelLoadError as error:
            self.metrics["swaps"].labels("failed").inc()
            self.last_swap_error = {"version": version, "error": str(error), "at": now()}
            log.error("not swapping to v%s, still serving %s: %s", version, _label(current), error)
            if isinstance(error, NotJudged):  # not the version's fault
                if current is None:
                    self.not_ready_reason = f"{self.model_name} v{version} failed to load: {error}"
                return
            self._mark_refused(version, str(error))
            self._champion_refused(version, f"{self.model_name} v{version} was refused: {error}")
            return
        self._swap(loaded)

    def _first_look(self) -> None:
        self.refresh()
        self.refresh_deployment()  # a restarted replica picks up a running deployment

    def refresh_deployment(self) -> None:
        """Follow the registry's deployment: load a new challenger (checked as a champion
        is; one that fails is marked refused and the champion answers everything), or
        drop the ended one."""
        try:
            found = deploy.current(self.tracking_uri, self.model_name)
        except Exception as error:  # the registry may be away: keep what is deployed
            log.debug("deployment not read: %s", error)
            return
        if found is None or found != self.deployment:
            self.deployment, self.challenger = None, None
            self.switch.release("challenger")
        if found is None or self.challenger is not None:
            return
        if (self.challenger_error or {}).get("deployment") == found.id:
            return  # this deployment's challenger failed already
        try:
            version = registry.client(self.tracking_uri).get_model_version(
                self.model_name, found.version
            )
            challenger = self._load(version)
        except Exception as error:
            self.challenger_error = {"deployment": found.id, "error": str(error), "at": now()}
            log.error("challenger v%s not deployed: %s", found.version, error)
            if isinstance(error, ModelLoadError) and not isinstance(error, NotJudged):
                self._mark_refused(found.version, f"as a {found.mode} challenger: {error}")
            return
        self.challenger, self.deployment, self.challenger_error = challenger, found, None
        self.switch.hold("challenger")  # the mirror computes features beside the answers
        log.warning("%s challenger v%s beside the champion", found.mode, found.version)

    def refresh_monitoring(self) -> None:
        """Set the monitor gauges from the monitoring table's latest rows (none yet: none)."""
        from loopline.watch.monitor import latest_signals

        try:
            found = latest_signals(self.predictions.url, self.model_name)
        except Exception as error:  # the database may be away: the next poll tries again
            log.debug("monitoring table not read: %s", error)
            return
        for row in found:
            labels = (row["signal"], row["version"])
            self.metrics["monitor_ratio"].labels(*labels).set(row["ratio"])
            self.metrics["monitor_alarm"].labels(*labels).set(float(row["alarm"]))

    def _load(self, model_version) -> LoadedModel:
        loaded = load_version(
            self.tracking_uri, model_version, self.alias, self.cache, self.threads
        )
        if loaded.spec.task != self.task.name:
            raise WrongTask(
                f"{self.model_name} v{loaded.version} is a {loaded.spec.task} model; this "
                f"service serves {self.task.name} models"
            )
        return loaded

    def _swap(self, loaded: LoadedModel, fallback: dict[str, Any] | None = None) -> None:
        self.model = loaded
        self.fallback = fallback
        self.on_swap(loaded)
        self.metrics["swaps"].labels("ok").inc()
        self.metrics["model_version"].labels(self.model_name, self.alias).set(float(loaded.version))
        log.warning("serving %s v%s (%s)", loaded.name, loaded.version, ", ".join(loaded.providers))

    def _mark_refused(self, version: str, reason: str) -> None:
        """Tag the version in the registry so rollbacks and other services skip it."""
        try:
            registry.mark_refused(self.tracking_uri, self.model_name, version, reason)
        except Exception as error:  # the registry may fail now: the next poll tries again
            log.error("could not mark v%s refused in the registry: %s", version, error)

    def _champion_refused(self, version: str, why: str) -> None:
        """Keep serving what is served; with nothing yet, serve the last good champion."""
        if self.model is not None:  # keep serving it, and say it is not the champion
            since = (self.fallback or {}).get("since") or now()
            self.fallback = {"champion": version, "why": why, "since": since}
            return
        self.not_ready_reason = why
        try:
            candidates = registry.last_good_versions(
                self.tracking_uri, self.model_name, exclude={version}
            )
        except Exception as error:  # whatever the registry's transport raises
            self.not_ready_reason = f"{why}; the history could not be read: {error}"
            return
        for candidate in candidates:
            try:
                loaded = self._load(candidate)
            except NotJudged:
                continue
            except ModelLoadError as error:
                self._mark_refused(str(candidate.version), str(error))
                continue
            log.warning(
                "champion v%s refused; serving v%s from the history", version, loaded.version
            )
            self._swap(loaded, fallback={"champion": version, "why": why, "since": now()})
            return
        self.not_ready_reason = (
            f"{why}; no earlier champion in the history loads either "
            f"(promote a good version: `loopline promote {self.model_name} VERSION`)"
        )

    @bentoml.on_startup
    async def _start_polling(self) -> None:
        # The first load runs in the background: the server answers /livez at once,
        # /readyz says why it is not ready until a model is in.
        first = asyncio.create_task(asyncio.to_thread(self._first_look))

        async def poll() -> None:
            try:
                await first
            except Exception:
                log.exception("first alias look crashed")
            while True:
                await asyncio.sleep(self.settings.poll_interval_s)
                try:
                    await asyncio.to_thread(self.refresh)
                except Exception:  # never let one bad poll stop the watching
                    log.exception("alias poll crashed")
                await asyncio.to_thread(self.refresh_deployment)
                await asyncio.to_thread(self.refresh_monitoring)

        self._poller = asyncio.create_task(poll())
        if self.settings.startup_wait_s > 0:
            await asyncio.wait([first], timeout=self.settings.startup_wait_s)

    @bentoml.on_shutdown
    async def _stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        await asyncio.to_thread(self._drain_mirror)
        await asyncio.to_thread(self.predictions.close)
        if self.inputs is not None:
            await asyncio.to_thread(self.inputs.close)

    def not_ready(self) -> str | None:
        """Why no model is served, None when one is. Paths masked: /readyz and the APIs'
        503 are open to any client (as /metadata shows paths only to an authenticated
        one)."""
        if self.model is not None:
            return None
        return without_paths(redact(f"not ready: {self.not_ready_reason}"))

    def __is_ready__(self) -> bool:
        reason = self.not_ready()
        if reason is not None:
            # Raised rather than returned so /readyz says *why* (BentoML's own message for
            # False does not).
            raise HTTPException(status_code=503, detail=reason, headers={"Retry-After": "1"})
        fallback = self.fallback
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

    def _serving(self) -> LoadedModel:
        model = self.model
        if model is None:
            raise bentoml.exceptions.ServiceUnavailable(self.not_ready() or "not ready")
        return model

    def status(self) -> dict[str, Any]:
        """The model being served and the state of the alias watch (`/metadata`)."""
        model = self.model
        return {
            "ready": model is not None,
            "not_ready_reason": None if model else self.not_ready_reason,
            "model": model.describe(self.serving) if model else None,
            "tracking_uri": redact(self.tracking_uri),
            "watching": {
                "name": self.model_name,
                "alias": self.alias,
                "poll_interval_s": self.settings.poll_interval_s,
            },
            "fallback": self.fallback,
            "last_swap_error": self.last_swap_error,
            "last_poll_error": self.last_poll_error,
            "registry_deadlines": self.registry_deadlines,
            "deployment": (
                {**asdict(self.deployment), "loaded": True} if self.challenger else None
            ),
            "challenger_error": self.challenger_error,
            "prediction_log": self.predictions.stats(),
            "live_inputs": self.inputs.stats() if self.inputs is not None else None,
        }

    def answer(
        self,
        api: str,
        model: LoadedModel,
        items: list[Any],
        call: Callable[[LoadedModel, list[Any]], list[Answer]],
    ) -> list[Answer]:
        """Run the adapter's `call` (predict, explain) on a batch; log and count what it
        answered (error answers are not predictions), store the input rows it answered
        (`serve.store_inputs`), and count each item refused by the data contract per rule.
        Items already `Refused` (by a stream's state) are answered here, in place, without
        the adapter.

        With a challenger deployed, predictions are also mirrored to it (shadow) or a
        canary's share of keys is answered by it, the champion answering those items off
        the response path (control); a challenger that fails answers nothing: the champion
        does."""
        if not items:  # an empty request: nothing to answer, nothing for the adapter to do
            return []
        deployment, challenger = self.deployment, self.challenger
        if challenger is None or call != self.serving.predict or model is not self.model:
            return self._answer(api, model, items, call, "champion")
        if deployment.mode == "shadow":
            answers = self._answer(api, model, items, call, "champion")
            self._mirror(api, challenger, items, "shadow")
            return answers
        chosen = [deployment.routes(self.serving.route_key(item)) for item in items]
        if not any(chosen):
            return self._answer(api, model, items, call, "champion")
        theirs = [item for item, c in zip(items, chosen, strict=True) if c]
        canary = self._canary_answers(api, model, challenger, theirs, call)
        mine = [item for item, c in zip(items, chosen, strict=True) if not c]
        answered = iter(self._answer(api, model, mine, call, "champion") if mine else [])
        from_canary = iter(canary)
        return [next(from_canary) if c else next(answered) for c in chosen]

    def _canary_answers(self, api, model, challenger, items, call) -> list[Answer]:
        """The answers to a canary's items: the challenger's where it answered, the
        champion's where it failed (a batch that raised, an item it refused or answered
        with a non-finite output: each logged as the canary's error, which the policy
        counts). The champion's answers to the canary's other items are computed off the
        response path (control)."""
        try:
            canary = self._answer(api, challenger, items, call, "canary")
        except Exception as error:  # no request fails because of the challenger
            log.error(
                "canary v%s failed a batch; the champion answered: %s", challenger.version, error
            )
            self._log_failure(api, challenger, items, "canary", error)
            canary = [None] * len(items)
        failed = [n for n, a in enumerate(canary) if a is None or a.error]
        good = [
            item for item, a in zip(items, canary, strict=True) if a is not None and not a.error
        ]
        if good:
            self._mirror(api, model, good, "control")
        if not failed:
            return canary
        # The champion on the failed items, on the path: logged as control (the champion's
        # side of those keys, errors included) and answered like any champion answer.
        rescued = self._answer(api, model, [items[n] for n in failed], call, "control", True)
        for n, answer in zip(failed, rescued, strict=True):
            canary[n] = answer
        return canary

    def _mirror(self, api: str, model: LoadedModel, items: list[Any], role: str) -> None:
        """Queue `items` for `model` on the mirror thread, to be logged as `role`."""
        with self._mirror_ready:
            if len(self._mirror_items) + len(items) > MIRROR_QUEUE_ITEMS:
                self.metrics["mirrors_dropped"].labels(role).inc(len(items))
                return
            self._mirror_items += [(api, model, role, item) for item in items]
            self._mirror_ready.notify()

    def _mirror_loop(self) -> None:
        while True:
            with self._mirror_ready:
                while not self._mirror_items:
                    self._mirror_ready.wait()
            time.sleep(MIRROR_LINGER_S)  # let more requests' items gather
            with self._mirror_ready:
                taken, self._mirror_items = self._mirror_items, []
                self._mirror_busy = True
            groups: dict[tuple[str, int, str], list[Any]] = {}
            models = {}
            for api, model, role, item in taken:
                groups.setdefault((api, id(model), role), []).append(item)
                models[id(model)] = model
            for (api, model_id, role), items in groups.items():
                model = models[model_id]
                try:
                    self._answer(api, model, items, self.serving.predict, role)
                except Exception as error:
                    self._log_failure(api, model, items, role, error)
            self._mirror_busy = False

    def _drain_mirror(self, timeout_s: float = 10.0) -> None:
        """Wait (a while) for mirrored items to be answered and logged: at shutdown."""
        deadline = time.monotonic() + timeout_s
        while (self._mirror_items or self._mirror_busy) and time.monotonic() < deadline:
            time.sleep(0.01)

    def _log_failure(
        self, api: str, model: LoadedModel, items: list[Any], role: str, error
    ) -> None:
        """A challenger-side batch that failed as a whole: one error record per item (the
        deployment policy counts them)."""
        message = redact(str(error))[:500]
        self.predictions.put_many(
            [
                PredictionRecord(
                    model_name=model.name,
                    model_version=model.version,
                    api=api,
                    key=self.serving.route_key(item),
                    origin=None,
                    inputs=None,
                    output={"error": message},
                    role=role,
                )
                for item in items
            ]
        )

    def _answer(
        self, api: str, model: LoadedModel, items: list[Any], call, role=None, returned=None
    ):
        """`model`'s answers to `items`, logged as `role`; those `returned` to a client
        (by default all but a mirror's: shadow, control) are counted and their inputs
        stored."""
        if returned is None:
            returned = role not in ("shadow", "control")
        started = time.perf_counter()
        answers = answer_items(items, call, model)
        seconds = time.perf_counter() - started
        refused = self.metrics["refused"]
        for rule in (rule for a in answers for rule in a.refused):
            refused.labels(rule).inc()
        # While a challenger is deployed its side's error answers are logged too: the
        # policy compares error rates.
        logged = [a for a in answers if not a.error or role in DEPLOYED_ROLES]
        if logged:
            per_item = seconds * 1000 / len(logged)
            records = [PredictionRecord.of(model, api, a, per_item, role) for a in logged]
            self.predictions.put_many(records)  # one spool write per batch
        answered = [a for a in answers if not a.error]
        if answered and returned:  # rows stored once, by the answer returned
            if self.inputs is not None:
                self._store_inputs(api, model, answered)
            self.metrics["predictions"].labels(api, model.version).inc(len(answered))
            self.metrics["batch_size"].labels(api).observe(len(answered))
            self.metrics["latency"].labels(api).observe(seconds)
            self.metrics["log_dropped"].set(self.predictions.dropped)
        return answers

    def _store_inputs(self, api: str, model: LoadedModel, answered: list[Answer]) -> None:
        """Queue the raw rows the answers stand for (never fails the answers)."""
        try:
            rows = self.serving.input_rows(answered)
            if rows:
                self.inputs.put_many(live_rows(self.task, rows, model.name, model.version, api))
        except Exception:
            log.exception("live inputs: the rows of %d answers not stored", len(answered))


class LineTimeout(Exception):
    """A line was begun and not finished within the line timeout."""


async def ndjson_batches(request, max_line_bytes: int, line_timeout_s: float | None = None):
    """The request body's NDJSON lines as they arrive: one list of (line number, bytes) per
    chunk. A line longer than `max_line_bytes` comes once, as (its line number, None), and
    the rest of it is skipped: one bad line never ends a stream nor shifts the numbers of
    the lines after it. A line begun and left unfinished for `line_timeout_s` raises
    LineTimeout (a client between lines may wait as long as it likes)."""
    chunks = request.stream().__aiter__()
    pending, line_no, skipping = b"", 0, False
    while True:
        partial = bool(pending) or skipping
        try:
            chunk = await asyncio.wait_for(anext(chunks), line_timeout_s if partial else None)
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise LineTimeout(line_no + 1) from None
        batch: list[tuple[int, bytes | None]] = []
        *ends, rest = chunk.split(b"\n")
        for piece in ends:
            if skipping:  # the end of the over-long line, already answered
                skipping = False
                continue
            line, pending = pending + piece, b""
            line_no += 1
            batch.append((line_no, line if len(line) <= max_line_bytes else None))
        if not skipping:
            pending += rest
            if len(pending) > max_line_bytes:
                line_no += 1
                batch.append((line_no, None))
                pending, skipping = b"", True
        if batch:
            yield batch
    if pending.strip() and not skipping:
        yield [(line_no + 1, pending)]


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _label(model: LoadedModel | None) -> str:
    return f"v{model.version}" if model else "nothing"
