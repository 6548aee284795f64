"""Task plug-ins: what differs per task (solar, reviews, digits), and nothing else.

Shared stages call a task only through the `Task` contract below and never test which task
they run, so adding a task never edits a stage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch

    from loopline.config import Params
    from loopline.features import FeatureSpec
    from loopline.validate import Rule


class Task(Protocol):
    """The contract every built-in task implements."""

    name: ClassVar[str]
    # Column types of the raw data contract: "float", "string" or "datetime".
    schema: ClassVar[dict[str, str]]
    key_columns: ClassVar[list[str]]
    time_column: ClassVar[str | None]
    target_column: ClassVar[str]
    split_kind: ClassVar[Literal["chronological", "stratified"]]

    def load_builtin(self, params: Params) -> pd.DataFrame: ...

    def rules(self, params: Params) -> list[Rule]: ...

    def add_features(self, frame: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame: ...

    def new_feature_spec(self, params: Params) -> FeatureSpec: ...

    def add_labels(self, frame: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame: ...

    def build_model(self, hparams: dict[str, Any], spec: FeatureSpec) -> torch.nn.Module: ...

    def baselines(
        self, frame: pd.DataFrame, keys: pd.DataFrame, spec: FeatureSpec, params: Params
    ) -> dict[str, np.ndarray]: ...


def get_task(name: str) -> Task:
    """The task plug-in called `name`."""
    if name == "solar":
        from loopline.tasks.solar import SolarTask

        return SolarTask()
    raise KeyError(f"unknown task {name!r}; built-in tasks: ['solar']")
