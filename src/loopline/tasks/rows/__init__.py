"""Row tasks: one row of a table is one example (numeric features → a class or a number).

Subclass `RowTask`, list the feature columns and the target (and the classes of a
classifier): that is a whole task, served through `RowServing`.
"""

from loopline.tasks.rows.serving import RowServing, serving_for
from loopline.tasks.rows.task import (
    RowHyperparameters,
    RowOptions,
    RowSettings,
    RowTask,
)

__all__ = [
    "RowHyperparameters",
    "RowOptions",
    "RowServing",
    "RowSettings",
    "RowTask",
    "serving_for",
]
