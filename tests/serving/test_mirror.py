"""The mirror answers each mirrored request as the batch it came in: the deployment policy
compares per-item latencies of the served and the mirrored side, which are only comparable
when both sides are timed on the same batches."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from prometheus_client import CollectorRegistry, Counter

from serving.mirror import Mirror


class CallsRecorder:
    """The part of `Recorder` the mirror calls: each `answer` call noted."""

    def __init__(self) -> None:
        self.serving = SimpleNamespace(predict=lambda model, items: items)
        self.calls: list[tuple[str, str, list]] = []
        self.lock = threading.Lock()

    def answer(self, api, model, items, call, role):
        with self.lock:
            self.calls.append((api, role, list(items)))
        return call(model, items)


def test_each_request_is_answered_as_its_own_batch_never_merged():
    registry = CollectorRegistry()
    dropped = Counter("mirrors_dropped", "dropped", ["role"], registry=registry)
    recorder = CallsRecorder()
    mirror = Mirror(recorder, dropped)
    model = SimpleNamespace(version="2")
    requests = [["a"], ["b", "c"], ["d"], ["e", "f", "g"]]
    for items in requests:  # within one linger: a merging mirror would make one call
        mirror.put("predict", model, items, "control")
    mirror.drain(timeout_s=5)
    assert [items for _, _, items in recorder.calls] == requests
    assert {role for _, role, _ in recorder.calls} == {"control"}
    assert (registry.get_sample_value("mirrors_dropped_total", {"role": "control"}) or 0) == 0
