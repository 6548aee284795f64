"""Labeling: attach to every row the targets a model learns to predict from it.

The task labels its rows (`Task.add_labels`): from the data itself (a target that later
readings reveal), from the data contract's target column, or from people
(`loopline label import`); classification tasks plug active learning in here, returning the
labeled subset and a pool of rows to query. `Task.examples` then turns labeled rows into
`Examples`, the model-ready arrays every stage after it reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass
class Examples:
    """Model-ready examples of one split set: inputs `x` (first axis: one per example, the
    rest as the task's model reads them), labels `y` (one per example: a class index, a
    value or several), and `keys` (a frame, one row per example, naming where each came
    from: its row's key columns, say, so that two models' examples can be aligned)."""

    x: np.ndarray
    y: np.ndarray
    keys: pd.DataFrame

    def __len__(self) -> int:
        return len(self.x)

    def take(self, index: np.ndarray) -> Examples:
        return Examples(self.x[index], self.y[index], self.keys.iloc[index].reset_index(drop=True))
