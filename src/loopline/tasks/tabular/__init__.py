"""The `tabular` family: classification or regression from named numeric and categorical
columns of a file or SQL table, configured by the `tabular:` params section (see `task`)."""

from loopline.tasks.tabular.task import (
    TabularHyperparameters,
    TabularOptions,
    TabularSettings,
    TabularTask,
)

__all__ = ["TabularHyperparameters", "TabularOptions", "TabularSettings", "TabularTask"]
