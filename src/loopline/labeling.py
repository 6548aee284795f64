"""Moved to `loopline.offline.labeling` (this name stays for task packages written before);
names that left the shared core for a task family are forwarded there
(`loopline.tasks.former`)."""

from loopline._moved import forward
from loopline.tasks.former import FORMER_NAMES

__getattr__ = forward(__name__, "loopline.offline.labeling", elsewhere=FORMER_NAMES[__name__])
