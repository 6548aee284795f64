"""Moved to `loopline.offline.train` (this name stays for task packages written before)."""

from loopline._moved import forward

__getattr__ = forward(__name__, "loopline.offline.train")
