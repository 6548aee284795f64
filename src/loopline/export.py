"""Moved to `loopline.offline.export` (this name stays for task packages written before)."""

from loopline._moved import forward

__getattr__ = forward(__name__, "loopline.offline.export")
