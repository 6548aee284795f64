"""Feature specs: what a model's inputs are and how they are scaled, saved with the model.

A `FeatureSpec` is plain JSON. The task computes feature columns from raw rows with it
(`Task.add_features`), and `normalize` scales them with statistics fitted on the training split
only. The service loads the same spec from the model and calls the same code, so training and
serving cannot drift apart.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from loopline.tasks.base import FeatureOptions, NoOptions


@dataclass(frozen=True)
class FeatureSpec:
    """Everything needed to turn raw rows into model inputs, and outputs back into units."""

    task: str
    feature_columns: list[str]
    target_column: str
    horizon: int
    freq: str
    group_column: str
    time_column: str
    # The task's own typed settings (its `Options`): what its features need beyond these
    # fields, saved with the model.
    options: FeatureOptions = field(default_factory=NoOptions)
    window: int = 0
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)
    target_mean: float = 0.0
    target_std: float = 1.0
    # A classifier's classes, in output order (None: the model predicts values).
    labels: list[str] | None = None

    @property
    def is_fitted(self) -> bool:
        return bool(self.mean)

    def with_window(self, window: int) -> FeatureSpec:
        return replace(self, window=int(window))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, indent=1)

    @classmethod
    def from_json(cls, text: str, task: Any = None) -> FeatureSpec:
        """The spec saved as `text`; its options are typed by `task` (default: the task the
        spec names, which must be loaded in this process or be a built-in)."""
        from loopline.tasks import task_named

        data = json.loads(text)
        options = dict(data.pop("options", None) or {})
        if "labels" in options and data.get("labels") is None:
            data["labels"] = options.pop("labels")  # saved before labels were a field
        options.pop("labels", None)
        if task is not None and task.name != data["task"]:
            raise ValueError(f"a {data['task']} model, not a {task.name} one")
        plugin = task if task is not None else task_named(data["task"])
        return cls(**data, options=plugin.Options.from_dict(options))


def fit_normalization(spec: FeatureSpec, train_frame: pd.DataFrame) -> FeatureSpec:
    """Fit z-score statistics on training rows only (never validation or test rows)."""
    mean, std = {}, {}
    for column in spec.feature_columns:
        values = train_frame[column].to_numpy(dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise ValueError(f"feature {column!r} has no finite value in the training split")
        mean[column] = float(values.mean())
        # A constant feature would divide by zero; scale it by 1 instead.
        std[column] = float(values.std()) or 1.0
    target = train_frame[spec.target_column].to_numpy(dtype=np.float64)
    target = target[np.isfinite(target)]
    return replace(
        spec,
        mean=mean,
        std=std,
        target_mean=float(target.mean()),
        target_std=float(target.std()) or 1.0,
    )


def normalize(frame: pd.DataFrame, spec: FeatureSpec) -> np.ndarray:
    """Feature columns of `frame` as a float32 matrix scaled by the spec's statistics."""
    if not spec.is_fitted:
        raise ValueError("the feature spec has no fitted statistics; call fit_normalization")
    mean = np.array([spec.mean[c] for c in spec.feature_columns], dtype=np.float64)
    std = np.array([spec.std[c] for c in spec.feature_columns], dtype=np.float64)
    values = frame[spec.feature_columns].to_numpy(dtype=np.float64)
    return ((values - mean) / std).astype(np.float32)


def scale_target(values: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    return ((values - spec.target_mean) / spec.target_std).astype(np.float32)


def unscale_target(values: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    return values * spec.target_std + spec.target_mean


def build_features(task: Any, frame: pd.DataFrame, params: Any) -> tuple[pd.DataFrame, FeatureSpec]:
    """The task's feature columns for every snapshot row, and the (not yet fitted) spec."""
    if frame.empty:
        raise ValueError("the data snapshot is empty: nothing to train on")
    spec = task.new_feature_spec(params)
    return task.add_features(frame, spec), spec
