"""Old import paths of a layout that moved (`loopline.evaluate` became
`loopline.offline.evaluate`): they keep working, with a DeprecationWarning naming the new
place, so a task package written against the older layout runs unchanged."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any


def forward(old: str, new: str) -> Callable[[str], Any]:
    """A module `__getattr__` for the old module `old`: each name is read from `new`."""

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        value = getattr(importlib.import_module(new), name)
        warnings.warn(
            f"{old}.{name} moved to {new}.{name}; import it from there (or from "
            "loopline.contract, which holds the task contract's public names)",
            DeprecationWarning,
            stacklevel=2,
        )
        return value

    return __getattr__
