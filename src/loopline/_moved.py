"""Old import paths of a layout that moved (`loopline.evaluate` became
`loopline.offline.evaluate`): they keep working, with a DeprecationWarning naming the new
place, so a task package written against the older layout runs unchanged."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any


def forward(old: str, new: str, elsewhere: dict[str, str] | None = None) -> Callable[[str], Any]:
    """A module `__getattr__` for the old module `old`: each name is read from `new`, or
    from the module `elsewhere` gives for it (a name that left the shared code for a task
    family, say)."""

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        place = (elsewhere or {}).get(name, new)
        value = getattr(importlib.import_module(place), name)
        warnings.warn(
            f"{old}.{name} moved to {place}.{name}; import it from there",
            DeprecationWarning,
            stacklevel=2,
        )
        return value

    return __getattr__
