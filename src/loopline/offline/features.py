"""Feature specs: what a model's inputs are and how they are scaled, saved with the model.

A `FeatureSpec` is plain JSON. The task computes feature columns from raw rows with it
(`Task.add_features`), and `normalize` scales them with statistics fitted on the training split
only. The service loads the same spec from the model and calls the same code, so training and
serving cannot drift apart.
"""

from __future__ import annotations

import functools
import json
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np
import pandas as pd

from loopline.tasks import task_named
from loopline.tasks.base import FeatureOptions, NoOptions
from loopline.tasks.former import FORMER_SPEC_FIELDS, FORMER_SPEC_ORDER


def _options_of(task_name: str | None, options: Any) -> type[FeatureOptions]:
    """The options class a spec's options are typed by: those given, else its task's."""
    if options is not None and not isinstance(options, NoOptions):
        return type(options)

    try:
        return task_named(task_name).Options
    except Exception:  # a task not loaded here: its options cannot take the fields
        return NoOptions


def _with_former_fields(
    task_name: str | None, options: Any, former: dict[str, Any]
) -> FeatureOptions:
    """`options` with the former spec fields its class declares (the others are dropped)."""
    kind = _options_of(task_name, options)
    declared = {f.name for f in fields(kind)}
    taken = {k: v for k, v in former.items() if k in declared}
    if not taken:
        return NoOptions() if options is None else options
    if options is None or isinstance(options, NoOptions):
        return kind.from_dict(taken)
    return replace(options, **taken)


def _taking_former_fields(cls: type) -> type:
    """A task written before `FORMER_SPEC_FIELDS` left the spec still passes them: they go
    into its options where its `Options` declares them, else they are dropped (a
    DeprecationWarning says which)."""
    generated = cls.__init__

    @functools.wraps(generated)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if len(args) > 3 and not isinstance(args[3], FeatureOptions):  # the former order
            kwargs.update(zip(FORMER_SPEC_ORDER, args[3:], strict=False))
            args = args[:3]
        former = {k: kwargs.pop(k) for k in FORMER_SPEC_FIELDS if k in kwargs}
        if former:
            task_name = kwargs.get("task", args[0] if args else None)
            kwargs["options"] = _with_former_fields(task_name, kwargs.get("options"), former)
            warnings.warn(
                f"FeatureSpec({', '.join(former)}=...): these are no longer spec fields; "
                "a task's own typed Options carry what its features need (the task's "
                "time_column and group_column are Task attributes)",
                DeprecationWarning,
                stacklevel=2,
            )
        generated(self, *args, **kwargs)

    cls.__init__ = __init__
    return cls


@_taking_former_fields
@dataclass(frozen=True)
class FeatureSpec:
    """Everything needed to turn raw rows into model inputs, and outputs back into units.

    Neutral fields only: what a task's features need beyond them travels in `options`,
    typed by the task's `Options` (nanoGPT's config inside its checkpoint)."""

    task: str
    feature_columns: list[str]
    target_column: str
    # The task's own typed settings (its `Options`): what its features need beyond these
    # fields, saved with the model.
    options: FeatureOptions = field(default_factory=NoOptions)
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)
    # A regression target's scaling (a classifier keeps 0 and 1).
    target_mean: float = 0.0
    target_std: float = 1.0
    # A classifier's classes, in output order (None: the model predicts values).
    labels: list[str] | None = None

    @property
    def is_fitted(self) -> bool:
        return bool(self.mean)

    def __getattr__(self, name: str) -> Any:
        # A task written before a field left the spec may still read it: from the options.
        if name in FORMER_SPEC_FIELDS:
            options = self.__dict__.get("options")
            if options is not None and hasattr(options, name):
                warnings.warn(
                    f"spec.{name} moved into the task's options: read spec.options.{name}",
                    DeprecationWarning,
                    stacklevel=2,
                )
                return getattr(options, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, indent=1)

    @classmethod
    def from_json(cls, text: str, task: Any = None) -> FeatureSpec:
        """The spec saved as `text`; its options are typed by `task` (default: the task the
        spec names, which must be loaded in this process or be a built-in). A spec saved
        before some fields left it (`FORMER_SPEC_FIELDS`) has them put into its options
        where the task's `Options` declares them; the others are dropped."""
        data = json.loads(text)
        options = dict(data.pop("options", None) or {})
        if "labels" in options and data.get("labels") is None:
            data["labels"] = options.pop("labels")  # saved before labels were a field
        options.pop("labels", None)
        if task is not None and task.name != data["task"]:
            raise ValueError(f"a {data['task']} model, not a {task.name} one")
        plugin = task if task is not None else task_named(data["task"])
        declared = {f.name for f in fields(plugin.Options)}
        for name in FORMER_SPEC_FIELDS:
            if name in data:
                value = data.pop(name)
                if name in declared:
                    options.setdefault(name, value)
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
