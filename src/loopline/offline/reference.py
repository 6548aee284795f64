"""The reference profile: what the monitor compares live predictions against, published in
every model version's files (`reference_profile.json`).

It holds, per monitored input feature (from the training split) and per prediction column
(the model's outputs on the test split), a sample of values in event-time order, and the
model's per-row test losses with the offline test figure. Order matters: the monitor
calibrates its thresholds by resampling contiguous stretches of the reference as long as a
live period, so a series' own autocorrelation is part of what "normal" means. What the columns are
is the task's to say (`Task.monitor_inputs`, `Task.monitor_outputs`, `Task.reference_losses`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from loopline.onnx_runtime import onnx_session, run_onnx
from loopline.tasks.base import EVENT_TIME

PROFILE_FILE = "reference_profile.json"
FORMAT = 1

Kind = Literal["numeric", "categorical"]


@dataclass(frozen=True)
class Column:
    """One monitored column's reference values, in event-time order."""

    kind: Kind
    values: list[Any]

    def array(self) -> np.ndarray:
        if self.kind == "numeric":
            return np.asarray(self.values, dtype=np.float64)
        return np.asarray([str(v) for v in self.values], dtype=object)


@dataclass(frozen=True)
class Quality:
    """The test split's per-row losses (event-time order) and the figure they make (RMSE
    for values, error rate for classes: `figure`)."""

    name: str
    figure: float
    losses: list[float]
    # Per row, (signed error, size of the truth) summed over the row's outputs, where the
    # task has a direction of error (`Task.reference_bias`): a period's relative bias.
    bias: list[list[float]] | None = None


@dataclass(frozen=True)
class ReferenceProfile:
    features: dict[str, Column] = field(default_factory=dict)
    predictions: dict[str, Column] = field(default_factory=dict)
    quality: Quality | None = None
    rows: dict[str, int] = field(default_factory=dict)  # rows each part was taken from

    def to_dict(self) -> dict[str, Any]:
        def columns(group: dict[str, Column]) -> dict[str, Any]:
            return {n: {"kind": c.kind, "values": c.values} for n, c in group.items()}

        quality = self.quality
        return {
            "format": FORMAT,
            "features": columns(self.features),
            "predictions": columns(self.predictions),
            "quality": None
            if quality is None
            else {
                "name": quality.name,
                "figure": quality.figure,
                "losses": quality.losses,
                "bias": quality.bias,
            },
            "rows": self.rows,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReferenceProfile:
        if data.get("format") != FORMAT:
            raise ValueError(f"reference profile format {data.get('format')!r}; expected {FORMAT}")

        def columns(group: dict[str, Any]) -> dict[str, Column]:
            return {n: Column(c["kind"], list(c["values"])) for n, c in group.items()}

        q = data.get("quality")
        return cls(
            features=columns(data.get("features", {})),
            predictions=columns(data.get("predictions", {})),
            quality=Quality(q["name"], float(q["figure"]), list(q["losses"]), q.get("bias"))
            if q
            else None,
            rows=dict(data.get("rows", {})),
        )

    def write(self, folder: Path) -> Path:
        path = folder / PROFILE_FILE
        path.write_text(json.dumps(self.to_dict(), separators=(",", ":")))
        return path

    @classmethod
    def read(cls, folder: Path) -> ReferenceProfile | None:
        """The profile in a model's folder; None for a version published without one."""
        path = folder / PROFILE_FILE
        return cls.from_dict(json.loads(path.read_text())) if path.exists() else None


def latest(frame: pd.DataFrame, limit: int) -> pd.DataFrame:
    """The last `limit` rows by event time (a stable sort: rows without a time count as the
    latest, ties keep their order); the last `limit` rows where no row has a time."""
    if EVENT_TIME in frame.columns:
        frame = frame.sort_values(EVENT_TIME, kind="stable")
    return frame.tail(limit)


# Rows of the training split turned into monitored inputs at a time. Turning the whole split
# at once held a copy of its every column: at 10^7 rows the profile stage was the flow's
# peak (11.6 GB, README "Scale out").
PROFILE_CHUNK_ROWS = 500_000


def latest_inputs(
    task: Any, frame: pd.DataFrame, spec: Any, limit: int, chunk_rows: int = PROFILE_CHUNK_ROWS
) -> tuple[pd.DataFrame, int]:
    """(the monitored inputs of the training split's last `limit` raw rows, how many rows
    the split has). `monitor_inputs` gives one row per raw row, so the last `limit` rows of
    the split are among the last `limit` of each chunk: a chunk at a time gives the same
    rows as the whole split at once."""
    contract = frame.columns.get_indexer([c for c in task.schema if c in frame.columns])
    positions = np.flatnonzero((frame["split"] == "train").to_numpy())
    kept = []
    for start in range(0, max(len(positions), 1), chunk_rows):
        rows = frame.iloc[positions[start : start + chunk_rows], contract]
        kept.append(latest(task.monitor_inputs(rows, spec), limit))
    return latest(pd.concat(kept) if len(kept) > 1 else kept[0], limit), len(positions)


def columns_of(frame: pd.DataFrame, limit: int) -> dict[str, Column]:
    """The profile's columns of the frame's last `limit` rows by event time."""
    return described(latest(frame, limit))


def described(frame: pd.DataFrame) -> dict[str, Column]:
    """Each column but the event time, as the profile keeps it: rounded numbers or text."""
    out = {}
    for name in frame.columns:
        if name == EVENT_TIME:
            continue
        values = frame[name].dropna()
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            numbers = values.to_numpy(dtype=np.float64)
            out[name] = Column(
                "numeric", [float(f"{v:.6g}") for v in numbers[np.isfinite(numbers)]]
            )
        else:
            out[name] = Column("categorical", [str(v) for v in values])
    return out


def build_profile(
    task: Any,
    frame: pd.DataFrame,
    spec: Any,
    onnx_model: bytes,
    limit: int,
    max_columns: int | None = None,
) -> ReferenceProfile:
    """The profile of a model: its task's monitored inputs on the training split's raw rows
    (at most `max_columns` of them, `chosen_inputs`), its outputs and per-row losses on the
    test split (the ONNX model itself, as served)."""
    inputs, train_rows = latest_inputs(task, frame, spec, limit)
    features = described(inputs)  # already the latest `limit`, in time order
    examples = task.examples(frame, spec, "test")
    predictions: dict[str, Column] = {}
    quality = None
    if len(examples):
        outputs = run_onnx(onnx_session(onnx_model), examples.x)
        logged = task.reference_outputs(outputs, spec)
        times = task.reference_times(examples, spec)
        shown = task.monitor_outputs(logged, spec)
        order = np.argsort(times, kind="stable") if times is not None else np.arange(len(logged))
        if len(shown.columns):
            predictions = columns_of(shown.iloc[order].reset_index(drop=True), limit)
        losses = np.asarray(task.reference_losses(examples.y, outputs, spec), dtype=np.float64)
        pairs = task.reference_bias(examples.y, outputs, spec)
        keep = order[np.isfinite(losses[order])]
        losses = losses[keep]
        if len(losses):
            quality = Quality(
                task.quality_name(spec),
                float(task.quality_figure(losses)),  # the whole test split's
                [float(f"{v:.6g}") for v in losses[-limit:]],
                None if pairs is None else rounded_pairs(np.asarray(pairs)[keep][-limit:]),
            )
    rows = {"train": train_rows, "test": len(examples)}
    return trim_profile(ReferenceProfile(features, predictions, quality, rows), spec, max_columns)


def rounded_pairs(pairs: np.ndarray) -> list[list[float]]:
    return [[float(f"{a:.6g}"), float(f"{b:.6g}")] for a, b in pairs]


# Which input columns a profile holds and the monitor watches on a wide table: at most
# `monitor.max_columns`. Testing every column of a table of hundreds costs time and dilutes
# the calibrated thresholds (they are calibrated together: the more columns, the higher
# each one's) for little gain; a constant column cannot drift.
RULE = "the model's own feature columns first, then those with the most distinct values"


def chosen_inputs(columns: dict[str, Column], spec: Any, limit: int | None) -> list[str]:
    """The names of the columns to watch, in the profile's order (all of them when there
    are `limit` or fewer, or no limit)."""
    names = list(columns)
    if limit is None or len(names) <= limit:
        return names
    own = set(getattr(spec, "feature_columns", None) or ())
    distinct = {name: len(set(columns[name].values)) for name in names}
    ranked = sorted(
        range(len(names)),
        key=lambda i: (names[i] not in own, distinct[names[i]] <= 1, -distinct[names[i]], i),
    )
    keep = set(ranked[:limit])
    return [name for i, name in enumerate(names) if i in keep]


def trim_profile(profile: ReferenceProfile, spec: Any, limit: int | None) -> ReferenceProfile:
    """The profile with only the input columns `chosen_inputs` keeps (its outputs and
    losses unchanged): what a wide table's published profile holds."""
    keep = chosen_inputs(profile.features, spec, limit)
    if len(keep) == len(profile.features):
        return profile
    return replace(profile, features={name: profile.features[name] for name in keep})
