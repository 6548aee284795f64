"""Who answers a batch: the champion alone, or beside a challenger `loopline deploy`
deployed (shadow: every item mirrored to it; canary: a sticky share of keys answered by
it, the champion's answers to those keys computed off the response path as control)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from loopline import registry
from loopline.online.adapter import Answer, Serving
from loopline.online.models import LoadedModel, ModelLoadError, NotJudged
from loopline.watch import deploy
from loopline.watch.deploy import Deployment
from serving.holder import ModelHolder, now
from serving.mirror import Mirror
from serving.recording import Recorder
from serving.switch import ShortSwitch

log = logging.getLogger("loopline.serving")


class Router:
    """Follows the registry's deployment and routes each batch between champion and
    challenger; a challenger that fails answers nothing: the champion does."""

    def __init__(
        self,
        holder: ModelHolder,
        serving: Serving,
        recorder: Recorder,
        mirror: Mirror,
        switch: ShortSwitch,
    ) -> None:
        self.holder, self.serving, self.recorder = holder, serving, recorder
        self.mirror, self.switch = mirror, switch
        self.deployment: Deployment | None = None
        self.challenger: LoadedModel | None = None
        self.challenger_error: dict[str, Any] | None = None

    def refresh(self) -> None:
        """Follow the registry's deployment: load a new challenger (checked as a champion
        is; one that fails is marked refused and the champion answers everything), or
        drop the ended one."""
        holder = self.holder
        try:
            found = deploy.current(holder.tracking_uri, holder.model_name)
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
            client = registry.client(holder.tracking_uri)
            challenger = holder.load(client.get_model_version(holder.model_name, found.version))
        except Exception as error:
            self.challenger_error = {"deployment": found.id, "error": str(error), "at": now()}
            log.error("challenger v%s not deployed: %s", found.version, error)
            if isinstance(error, ModelLoadError) and not isinstance(error, NotJudged):
                holder.mark_refused(found.version, f"as a {found.mode} challenger: {error}")
            return
        self.challenger, self.deployment, self.challenger_error = challenger, found, None
        self.switch.hold("challenger")  # the mirror computes features beside the answers
        log.warning("%s challenger v%s beside the champion", found.mode, found.version)

    def answer(
        self,
        api: str,
        model: LoadedModel,
        items: list[Any],
        call: Callable[[LoadedModel, list[Any]], list[Answer]],
    ) -> list[Answer]:
        """The answers to a batch `model` (the champion a request started with) was asked:
        the champion's, or with a challenger deployed, mirrored (shadow) or in part the
        canary's."""
        if not items:  # an empty request: nothing to answer, nothing for the adapter to do
            return []
        deployment, challenger = self.deployment, self.challenger
        record = self.recorder.answer
        if challenger is None or call != self.serving.predict or model is not self.holder.model:
            return record(api, model, items, call)
        if deployment.mode == "shadow":
            answers = record(api, model, items, call)
            self.mirror.put(api, challenger, items, "shadow")
            return answers
        chosen = [deployment.routes(self.serving.route_key(item)) for item in items]
        if not any(chosen):
            return record(api, model, items, call)
        theirs = [item for item, c in zip(items, chosen, strict=True) if c]
        canary = self._canary_answers(api, model, challenger, theirs, call)
        mine = [item for item, c in zip(items, chosen, strict=True) if not c]
        answered = iter(record(api, model, mine, call) if mine else [])
        from_canary = iter(canary)
        return [next(from_canary) if c else next(answered) for c in chosen]

    def status(self) -> dict[str, Any]:
        """The deployment's part of `/metadata`."""
        deployment = self.deployment
        return {
            "deployment": (
                {**asdict(deployment), "loaded": True} if self.challenger and deployment else None
            ),
            "challenger_error": self.challenger_error,
        }

    def _canary_answers(self, api, model, challenger, items, call) -> list[Answer]:
        """The answers to a canary's items: the challenger's where it answered, the
        champion's where it failed (a batch that raised, an item it refused or answered
        with a non-finite output: each logged as the canary's error, which the policy
        counts). The champion's answers to the canary's other items are computed off the
        response path (control)."""
        try:
            canary = self.recorder.answer(api, challenger, items, call, "canary")
        except Exception as error:  # no request fails because of the challenger
            log.error(
                "canary v%s failed a batch; the champion answered: %s", challenger.version, error
            )
            self.recorder.failed(api, challenger, items, "canary", error)
            canary = [None] * len(items)
        failed = [n for n, a in enumerate(canary) if a is None or a.error]
        good = [
            item for item, a in zip(items, canary, strict=True) if a is not None and not a.error
        ]
        if good:
            self.mirror.put(api, model, good, "control")
        if not failed:
            return canary
        # The champion on the failed items, on the path: logged as control (the champion's
        # side of those keys, errors included) and answered like any champion answer.
        asked = [items[n] for n in failed]
        rescued = self.recorder.answer(api, model, asked, call, "control", True)
        for n, answer in zip(failed, rescued, strict=True):
            canary[n] = answer
        return canary
