"""The model a service answers with: it follows the registry's alias and hot-swaps.

`ModelHolder.refresh` re-resolves `models:/<name>@<alias>`; a new version is loaded, warmed
and checked against its golden batch off the request path, then swapped in by reference
(requests keep the model they started with). A version that fails to load or its check is
marked refused in the registry (rollbacks skip it); a holder whose champion is refused
holds the last good champion of the history and says so until the alias moves.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loopline import registry
from loopline.online.models import (
    LoadedModel,
    ModelLoadError,
    NotJudged,
    RegistryUnavailable,
    load_version,
    resolve_alias,
)
from loopline.redaction import redact, without_paths

log = logging.getLogger("loopline.serving")


class WrongTask(NotJudged):
    """The version is fine, but of another task: this service's configuration, not the
    version, is wrong (so it is not marked refused)."""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def label(model: LoadedModel | None) -> str:
    return f"v{model.version}" if model else "nothing"


class ModelHolder:
    """The served version of `model_name@alias` for `task`, and why none is served yet."""

    def __init__(
        self,
        task: Any,
        tracking_uri: str,
        model_name: str,
        alias: str,
        cache: Path,
        threads: int,
        metrics: dict[str, Any],
    ) -> None:
        self.task, self.tracking_uri = task, tracking_uri
        self.model_name, self.alias = model_name, alias
        self.cache, self.threads, self.metrics = cache, threads, metrics
        self.model: LoadedModel | None = None
        self.not_ready_reason = "loading: the first look at the registry is under way"
        self.last_swap_error: dict[str, Any] | None = None
        self.last_poll_error: dict[str, Any] | None = None
        # Set while serving an earlier version because the champion was refused.
        self.fallback: dict[str, Any] | None = None
        # Called with each model swapped in (the service's per-worker bookkeeping).
        self.swapped: list[Callable[[LoadedModel], None]] = []

    def not_ready(self) -> str | None:
        """Why no model is served, None when one is. Paths masked: /readyz and the APIs'
        503 are open to any client."""
        if self.model is not None:
            return None
        return without_paths(redact(f"not ready: {self.not_ready_reason}"))

    def refresh(self) -> None:
        """Re-resolve the alias; load, warm and check a new version, then swap it in."""
        current = self.model
        try:
            found = resolve_alias(self.tracking_uri, self.model_name, self.alias)
        except RegistryUnavailable as error:
            self.metrics["poll_errors"].inc()
            self.last_poll_error = {"error": str(error), "at": now()}
            if current is None:
                self.not_ready_reason = f"registry unreachable: {error}"
            log.warning("alias poll failed, still serving %s: %s", label(current), error)
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
            why = registry.describe_refusal(self.model_name, version, mark)
            self._champion_refused(version, why)
            return
        try:
            loaded = self.load(found)
        except ModelLoadError as error:
            self._load_failed(version, error)
            return
        self._swap(loaded)

    def load(self, model_version) -> LoadedModel:
        """A registry version loaded, warmed and checked (ModelLoadError if it fails)."""
        loaded = load_version(
            self.tracking_uri, model_version, self.alias, self.cache, self.threads
        )
        if loaded.spec.task != self.task.name:
            raise WrongTask(
                f"{self.model_name} v{loaded.version} is a {loaded.spec.task} model; this "
                f"service serves {self.task.name} models"
            )
        return loaded

    def mark_refused(self, version: str, reason: str) -> None:
        """Tag the version in the registry so rollbacks and other services skip it."""
        try:
            registry.mark_refused(self.tracking_uri, self.model_name, version, reason)
        except Exception as error:  # the registry may fail now: the next poll tries again
            log.error("could not mark v%s refused in the registry: %s", version, error)

    def _load_failed(self, version: str, error: ModelLoadError) -> None:
        self.metrics["swaps"].labels("failed").inc()
        self.last_swap_error = {"version": version, "error": str(error), "at": now()}
        log.error("not swapping to v%s, still serving %s: %s", version, label(self.model), error)
        if isinstance(error, NotJudged):  # not the version's fault
            if self.model is None:
                self.not_ready_reason = f"{self.model_name} v{version} failed to load: {error}"
            return
        self.mark_refused(version, str(error))
        self._champion_refused(version, f"{self.model_name} v{version} was refused: {error}")

    def _swap(self, loaded: LoadedModel, fallback: dict[str, Any] | None = None) -> None:
        self.model = loaded
        self.fallback = fallback
        for call in self.swapped:
            call(loaded)
        self.metrics["swaps"].labels("ok").inc()
        self.metrics["model_version"].labels(self.model_name, self.alias).set(float(loaded.version))
        log.warning("serving %s v%s (%s)", loaded.name, loaded.version, ", ".join(loaded.providers))

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
                loaded = self.load(candidate)
            except NotJudged:
                continue
            except ModelLoadError as error:
                self.mark_refused(str(candidate.version), str(error))
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

    def status(self) -> dict[str, Any]:
        """The alias watch's part of `/metadata`."""
        return {
            "ready": self.model is not None,
            "not_ready_reason": None if self.model else self.not_ready_reason,
            "fallback": self.fallback,
            "last_swap_error": self.last_swap_error,
            "last_poll_error": self.last_poll_error,
        }
