"""The mirror thread: a challenger's (shadow) or the champion's (control) answers computed
off the response path, logged and never returned.

Each request's items are answered as the batch they came in, never merged with another
request's: a logged latency is the call's time per item, and the deployment policy compares
the two sides' latencies, so both must be measured on the same batches (merged mirror
batches made the mirrored side look several times faster per item than the served one)."""

from __future__ import annotations

import threading
import time
from typing import Any

from loopline.online.models import LoadedModel
from serving.recording import Recorder

MIRROR_QUEUE_ITEMS = 10_000  # mirrored items waiting; more are dropped (counted)
MIRROR_LINGER_S = 0.05  # how long mirrored requests gather before the thread wakes


class Mirror:
    """Mirrored requests wait on one thread, which wakes every `MIRROR_LINGER_S` at most
    and answers each request's items in one model call; past the bound they are dropped
    (counted) rather than queued behind answers."""

    def __init__(self, recorder: Recorder, dropped) -> None:
        self.recorder, self.dropped = recorder, dropped
        self._batches: list[tuple[str, LoadedModel, str, list[Any]]] = []
        self._waiting = 0  # items in `_batches`
        self._busy = False
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="mirror", daemon=True)
        self._thread.start()

    def put(self, api: str, model: LoadedModel, items: list[Any], role: str) -> None:
        """Queue `items` for `model`, to be logged as `role`."""
        with self._ready:
            if self._waiting + len(items) > MIRROR_QUEUE_ITEMS:
                self.dropped.labels(role).inc(len(items))
                return
            self._batches.append((api, model, role, list(items)))
            self._waiting += len(items)
            self._ready.notify()

    def drain(self, timeout_s: float = 10.0) -> None:
        """Wait (a while) for mirrored items to be answered and logged: at shutdown."""
        deadline = time.monotonic() + timeout_s
        while (self._batches or self._busy) and time.monotonic() < deadline:
            time.sleep(0.01)

    def _loop(self) -> None:
        while True:
            with self._ready:
                while not self._batches:
                    self._ready.wait()
            time.sleep(MIRROR_LINGER_S)  # off the response path: answers go first
            with self._ready:
                taken, self._batches, self._waiting = self._batches, [], 0
                self._busy = True
            self._answer(taken)
            self._busy = False

    def _answer(self, taken: list[tuple[str, LoadedModel, str, list[Any]]]) -> None:
        predict = self.recorder.serving.predict
        for api, model, role, items in taken:
            try:
                self.recorder.answer(api, model, items, predict, role)
            except Exception as error:
                self.recorder.failed(api, model, items, role, error)
