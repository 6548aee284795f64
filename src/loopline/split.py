"""Train / validation / test split.

Time series split chronologically, on the same cut-off times for every group, with a gap of
`gap` steps between sets: a window can then never hold rows of two sets, so no validation or
test label leaks into training. Classification splits are shuffled and stratified, seeded.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from loopline.config import SplitParams
from loopline.features import FeatureSpec

SETS = ("train", "val", "test")


def chronological_split(
    frame: pd.DataFrame,
    ratios: SplitParams,
    time_column: str,
    freq: str | None = None,
    gap: int = 0,
) -> pd.DataFrame:
    """Return `frame` with a `split` column: train, val, test or gap.

    Ratios apply to the distinct timestamps; the `gap` steps of `freq` (the model's step,
    from its feature spec) before the start of val and of test are marked `gap` (history a
    forecaster may read, never a label it learns from).
    """
    times = np.sort(frame[time_column].unique())
    if len(times) == 0:
        raise ValueError("cannot split an empty data set")
    start, end = times[0], times[-1]
    span = end - start
    val_start = start + span * ratios.train
    test_start = start + span * (ratios.train + ratios.val)
    gap_span = pd.Timedelta(freq) * gap if gap else pd.Timedelta(0)
    t = frame[time_column]
    split = np.where(t >= test_start, "test", np.where(t >= val_start, "val", "train"))
    in_gap = ((t >= val_start - gap_span) & (t < val_start)) | (
        (t >= test_start - gap_span) & (t < test_start)
    )
    split = np.where(in_gap, "gap", split)
    out = frame.copy()
    out["split"] = split
    counts = out["split"].value_counts()
    missing = [s for s in SETS if counts.get(s, 0) == 0]
    if missing:
        raise ValueError(
            f"split leaves {missing} empty: {len(times)} timestamps are too few for ratios "
            f"{ratios.train}/{ratios.val}/{ratios.test} with a gap of {gap} steps"
        )
    return out


def stratified_split(
    frame: pd.DataFrame, ratios: SplitParams, label_column: str, seed: int
) -> pd.DataFrame:
    """Shuffled split keeping each label's share equal across sets (seeded)."""
    index = np.arange(len(frame))
    labels = frame[label_column].to_numpy()
    train_idx, rest = train_test_split(
        index, train_size=ratios.train, stratify=labels, random_state=seed, shuffle=True
    )
    val_share = ratios.val / (ratios.val + ratios.test)
    val_idx, test_idx = train_test_split(
        rest, train_size=val_share, stratify=labels[rest], random_state=seed, shuffle=True
    )
    split = np.empty(len(frame), dtype=object)
    split[train_idx], split[val_idx], split[test_idx] = "train", "val", "test"
    out = frame.copy()
    out["split"] = split.astype(str)
    return out


def grouped_split(
    frame: pd.DataFrame, ratios: SplitParams, group_column: str, seed: int
) -> pd.DataFrame:
    """Shuffled split in which every group (say, a movie) falls in one set only.

    Rows of one group share names and vocabulary (say, texts about one movie): with a row
    split, the test set holds groups the model has seen, and accuracy is overstated. The
    shares are of rows, met as closely as whole groups allow."""
    from sklearn.model_selection import GroupShuffleSplit

    if group_column not in frame.columns:
        raise ValueError(f"grouped split: no column {group_column!r} in {list(frame.columns)}")
    groups = frame[group_column].to_numpy()
    if len(np.unique(groups)) < 3:
        raise ValueError(f"grouped split needs at least 3 distinct {group_column!r} values")
    index = np.arange(len(frame))
    first = GroupShuffleSplit(n_splits=1, train_size=ratios.train, random_state=seed)
    train_idx, rest = next(first.split(index, groups=groups))
    val_share = ratios.val / (ratios.val + ratios.test)
    second = GroupShuffleSplit(n_splits=1, train_size=val_share, random_state=seed)
    val_pos, test_pos = next(second.split(rest, groups=groups[rest]))
    split = np.empty(len(frame), dtype=object)
    split[train_idx], split[rest[val_pos]], split[rest[test_pos]] = "train", "val", "test"
    out = frame.copy()
    out["split"] = split.astype(str)
    return out


def split_and_fit(
    task, frame: pd.DataFrame, spec: FeatureSpec, params
) -> tuple[pd.DataFrame, FeatureSpec]:
    """Assign every row to a set and fit what is learned from data (feature scaling, a
    vocabulary) on training rows only.

    Rows without a label (an active-learning pool) join no set: they are marked
    `unlabeled` and never reach training or evaluation.
    """
    if task.split_kind == "chronological":
        out = chronological_split(
            frame, params.split, spec.time_column, spec.freq, task.split_gap(params)
        )
    else:
        labeled = frame[spec.target_column].notna()
        rows = frame[labeled]
        if task.split_kind == "grouped":
            rows = grouped_split(rows, params.split, spec.group_column, params.seed)
        else:
            rows = stratified_split(rows, params.split, spec.target_column, params.seed)
        out = frame.assign(split="unlabeled")
        out.loc[rows.index, "split"] = rows["split"]
    return out, task.fit_features(spec, out[out["split"] == "train"])


def training_view(task, frame: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """Rows tuning and training may read: never the test set (nor, in time, past it)."""
    if task.split_kind == "chronological":
        return without_test(frame, spec.time_column)
    return frame[frame["split"].isin(["train", "val"])]


def evaluation_view(task, frame: pd.DataFrame, spec: FeatureSpec, params) -> pd.DataFrame:
    """Rows evaluation reads: the test set, plus the history a forecaster may look back on."""
    if task.split_kind == "chronological":
        return test_view(frame, spec.time_column, spec.freq, task.history_steps(params))
    return frame[frame["split"] == "test"]


def without_test(frame: pd.DataFrame, time_column: str) -> pd.DataFrame:
    """Rows tuning and training may read: the test set is for evaluation only."""
    test_start = frame.loc[frame["split"] == "test", time_column].min()
    return frame[frame[time_column] < test_start] if pd.notna(test_start) else frame


def test_view(frame: pd.DataFrame, time_column: str, freq: str, history: int) -> pd.DataFrame:
    """Test rows plus `history` steps before them: past readings a forecaster may read.

    Input windows still end (and their labels lie) in the test set; the history lets a
    champion recompute its own lagged features for the very first test origins too.
    """
    test_start = frame.loc[frame["split"] == "test", time_column].min()
    if pd.isna(test_start):
        return frame
    return frame[frame[time_column] >= test_start - pd.Timedelta(freq) * history]


def labeled_set(frame: pd.DataFrame, target_set: str, target_column: str) -> pd.DataFrame:
    """The rows of one split set that carry a label (unlabeled rows are a labeling pool)."""
    return frame[(frame["split"] == target_set) & frame[target_column].notna()]
