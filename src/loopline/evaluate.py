"""Moved to `loopline.offline.evaluate` (this name stays for task packages written before)."""

from loopline._moved import forward

__getattr__ = forward(__name__, "loopline.offline.evaluate")
