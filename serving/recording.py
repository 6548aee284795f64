"""What every answer leaves behind: the prediction log's records, the live input rows and
the metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from loopline.online.adapter import Answer, Serving, answer_items
from loopline.online.live import LiveInputLog, live_rows, spool_folder
from loopline.online.models import LoadedModel
from loopline.online.predlog import PredictionLog, PredictionRecord
from loopline.paths import ProjectPaths
from loopline.redaction import redact

log = logging.getLogger("loopline.serving")

# Roles whose error answers are logged while a challenger is deployed (`loopline.watch.deploy`).
DEPLOYED_ROLES = ("canary", "shadow", "control")
# Roles whose answers no client gets: neither counted nor stored as inputs.
MIRRORED_ROLES = ("shadow", "control")


class Recorder:
    """Runs the adapter's call on a batch and records it: the prediction log (both writers
    share the database, the batches and the queue bound; a spool folder each), the input
    rows answered (`serve.store_inputs`) and the counters."""

    def __init__(
        self, paths: ProjectPaths, params: Any, serving: Serving, metrics: dict[str, Any]
    ) -> None:
        settings, name = params.serve, params.served_model
        self.task, self.serving, self.metrics = params.plugin, serving, metrics
        url = paths.prediction_log_url(params)
        writing = {
            "batch_size": settings.log_batch_size,
            "flush_interval_s": settings.log_flush_interval_s,
            "queue_size": settings.log_queue_size,
        }
        self.predictions = PredictionLog(url, spool_dir=paths.state / "spool" / name, **writing)
        self.inputs = (
            LiveInputLog(url, spool_dir=spool_folder(paths.state, name), **writing)
            if settings.store_inputs
            else None
        )

    def answer(
        self,
        api: str,
        model: LoadedModel,
        items: list[Any],
        call: Callable[[LoadedModel, list[Any]], list[Answer]],
        role: str = "champion",
        returned: bool | None = None,
    ) -> list[Answer]:
        """`model`'s answers to `items` (`Refused` ones answered by their own error), logged
        as `role`; those `returned` to a client (by default all but a mirror's) are counted
        and their input rows stored. Refusals are counted per data-contract rule."""
        if returned is None:
            returned = role not in MIRRORED_ROLES
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
            now = datetime.now(UTC)  # (one for the batch: converted once by the writer)
            records = [PredictionRecord.of(model, api, a, per_item, role, now) for a in logged]
            self.predictions.put_many(records)  # one spool write per batch
        answered = [a for a in answers if not a.error]
        if answered and returned:  # rows stored once, by the answer returned
            self._count(api, model, answered, seconds)
        return answers

    def failed(self, api: str, model: LoadedModel, items: list[Any], role: str, error) -> None:
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

    def close(self) -> None:
        self.predictions.close()
        if self.inputs is not None:
            self.inputs.close()

    def status(self) -> dict[str, Any]:
        return {
            "prediction_log": self.predictions.stats(),
            "live_inputs": self.inputs.stats() if self.inputs is not None else None,
        }

    def _count(self, api: str, model: LoadedModel, answered: list[Answer], seconds: float):
        if self.inputs is not None:
            self._store_inputs(api, model, answered)
        self.metrics["predictions"].labels(api, model.version).inc(len(answered))
        self.metrics["batch_size"].labels(api).observe(len(answered))
        self.metrics["latency"].labels(api).observe(seconds)
        self.metrics["log_dropped"].set(self.predictions.dropped)

    def _store_inputs(self, api: str, model: LoadedModel, answered: list[Answer]) -> None:
        """Queue the raw rows the answers stand for (never fails the answers)."""
        try:
            rows = self.serving.input_rows(answered)
            if rows:
                self.inputs.put_many(live_rows(self.task, rows, model.name, model.version, api))
        except Exception:
            log.exception("live inputs: the rows of %d answers not stored", len(answered))
