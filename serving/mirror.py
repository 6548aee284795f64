"""The mirror thread: a challenger's (shadow) or the champion's (control) answers computed
off the response path, in batches, logged and never returned."""

from __future__ import annotations

import threading
import time
from typing import Any

from loopline.online.models import LoadedModel
from serving.recording import Recorder

MIRROR_QUEUE_ITEMS = 10_000  # mirrored items waiting; more are dropped (counted)
MIRROR_LINGER_S = 0.05  # how long mirrored items gather into one batch


class Mirror:
    """Mirrored items wait on one thread and are answered in batches gathered over
    `MIRROR_LINGER_S` (one model call for many requests); past the bound they are dropped
    (counted) rather than queued behind answers."""

    def __init__(self, recorder: Recorder, dropped) -> None:
        self.recorder, self.dropped = recorder, dropped
        self._items: list[tuple[str, LoadedModel, str, Any]] = []
        self._busy = False
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="mirror", daemon=True)
        self._thread.start()

    def put(self, api: str, model: LoadedModel, items: list[Any], role: str) -> None:
        """Queue `items` for `model`, to be logged as `role`."""
        with self._ready:
            if len(self._items) + len(items) > MIRROR_QUEUE_ITEMS:
                self.dropped.labels(role).inc(len(items))
                return
            self._items += [(api, model, role, item) for item in items]
            self._ready.notify()

    def drain(self, timeout_s: float = 10.0) -> None:
        """Wait (a while) for mirrored items to be answered and logged: at shutdown."""
        deadline = time.monotonic() + timeout_s
        while (self._items or self._busy) and time.monotonic() < deadline:
            time.sleep(0.01)

    def _loop(self) -> None:
        while True:
            with self._ready:
                while not self._items:
                    self._ready.wait()
            time.sleep(MIRROR_LINGER_S)  # let more requests' items gather
            with self._ready:
                taken, self._items = self._items, []
                self._busy = True
            self._answer(taken)
            self._busy = False

    def _answer(self, taken: list[tuple[str, LoadedModel, str, Any]]) -> None:
        groups: dict[tuple[str, int, str], list[Any]] = {}
        models = {}
        for api, model, role, item in taken:
            groups.setdefault((api, id(model), role), []).append(item)
            models[id(model)] = model
        predict = self.recorder.serving.predict
        for (api, model_id, role), items in groups.items():
            model = models[model_id]
            try:
                self.recorder.answer(api, model, items, predict, role)
            except Exception as error:
                self.recorder.failed(api, model, items, role, error)
