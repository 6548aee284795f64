"""A short GIL switch interval while background work runs beside the answers."""

from __future__ import annotations

import sys
import threading

SHORT_SWITCH_S = 0.0005
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
            sys.setswitchinterval(SHORT_SWITCH_S)

    def release(self, who: object) -> None:
        with self._lock:
            self._holders.discard(who)
            if not self._holders:
                sys.setswitchinterval(DEFAULT_SWITCH_S)
