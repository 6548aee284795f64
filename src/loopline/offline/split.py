"""Train / validation / test split, and which rows a model learned from.

Rows in time split chronologically (`Task.time_column`), on the same cut-off times for every
group, with a margin of time left out between sets (`Task.split_margin`): an example that
reads several rows can then never hold rows of two sets, so no validation or test label
leaks into training.

Every other split is by hash (TFX ExampleGen's hash buckets): a row's set follows from
sha256 of `split.salt` and its key (or its group's key, for grouped splits), never from the
snapshot's size, order or the run's seed. A row keeps its set for ever, new rows fall into
sets by the same rule, and a retrained candidate's test rows are never rows an earlier
model trained on, as long as the salt and the shares stay. Shares are met in expectation:
with n rows, a set's share lies within `share_tolerance` (three binomial standard errors)
of the configured one. Labels are not balanced across sets row by row (that would move old
rows as new ones arrive); each label's shares are the configured ones in expectation too.

What a model trained on is recorded with it (`Membership`): the keys of each set, or, for a
chronological split, each series' time range per set. `CleanRows` says which of a
candidate's test rows the champion never learned from, so the two are compared on those.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from loopline.config import SplitParams
from loopline.offline.features import FeatureSpec

SETS = ("train", "val", "test")


# ---------------------------------------------------------------------- chronological


def chronological_split(
    frame: pd.DataFrame,
    ratios: SplitParams,
    time_column: str,
    gap: pd.Timedelta | None = None,
) -> pd.DataFrame:
    """Return `frame` with a `split` column: train, val, test or gap.

    Ratios apply to the distinct timestamps; the `gap` of time before the start of val and
    of test is marked `gap` (history an example may read, never a label it learns from).
    """
    times = np.sort(frame[time_column].unique())
    if len(times) == 0:
        raise ValueError("cannot split an empty data set")
    start, end = times[0], times[-1]
    span = end - start
    val_start = start + span * ratios.train
    test_start = start + span * (ratios.train + ratios.val)
    gap_span = pd.Timedelta(0) if gap is None else pd.Timedelta(gap)
    t = frame[time_column]
    split = np.where(t >= test_start, "test", np.where(t >= val_start, "val", "train"))
    in_gap = ((t >= val_start - gap_span) & (t < val_start)) | (
        (t >= test_start - gap_span) & (t < test_start)
    )
    split = np.where(in_gap, "gap", split)
    out = frame.assign(split=split)  # the rows' columns shared, not copied (copy-on-write)
    counts = out["split"].value_counts()
    missing = [s for s in SETS if counts.get(s, 0) == 0]
    if missing:
        raise ValueError(
            f"split leaves {missing} empty: {len(times)} timestamps are too few for ratios "
            f"{ratios.train}/{ratios.val}/{ratios.test} with a gap of {gap_span}"
        )
    return out


# ---------------------------------------------------------------------- by hash


def key_text(frame: pd.DataFrame, columns: list[str]) -> pd.Series:
    """Each row's key as text: the key columns' values joined by "|"."""
    text = frame[list(columns)].astype("string").fillna("")
    return text[columns[0]] if len(columns) == 1 else text.agg("|".join, axis=1)


def buckets(keys: pd.Series, salt: str) -> np.ndarray:
    """Each key's place in [0, 1): the first 8 bytes of sha256(salt, key), the same on
    every machine and in every run (each distinct key is hashed once)."""
    codes, uniques = pd.factorize(keys.astype(str))
    digests = b"".join(hashlib.sha256(f"{salt}\x1f{key}".encode()).digest()[:8] for key in uniques)
    places = np.frombuffer(digests, dtype=">u8").astype(np.float64) / 2.0**64
    return places[codes] if len(codes) else np.zeros(0)


def sets_of(places: np.ndarray, ratios: SplitParams) -> np.ndarray:
    """The set of each bucket: train below `train`, then val, then test."""
    val_from, test_from = ratios.train, ratios.train + ratios.val
    return np.where(places < val_from, "train", np.where(places < test_from, "val", "test"))


def share_tolerance(rows: int, share: float) -> float:
    """How far a set's observed share may lie from the configured one by chance alone:
    three binomial standard errors (each key draws its set independently)."""
    return 3.0 * float(np.sqrt(share * (1 - share) / max(rows, 1)))


def hash_split(
    frame: pd.DataFrame, ratios: SplitParams, key_columns: list[str], salt: str
) -> pd.DataFrame:
    """`frame` with a `split` column from the hash of each row's key (see the module)."""
    missing = [c for c in key_columns if c not in frame.columns]
    if missing:
        raise ValueError(f"split: no key column(s) {missing} in {list(frame.columns)}")
    return frame.assign(split=sets_of(buckets(key_text(frame, key_columns), salt), ratios))


def grouped_split(
    frame: pd.DataFrame, ratios: SplitParams, group_column: str, salt: str
) -> pd.DataFrame:
    """A hash split by group (say, a movie): every group falls in one set only.

    Rows of one group share names and vocabulary (say, texts about one movie): with a row
    split, the test set holds groups the model has seen, and accuracy is overstated. The
    shares are of groups, so of rows only as closely as whole groups allow."""
    if group_column not in frame.columns:
        raise ValueError(f"grouped split: no column {group_column!r} in {list(frame.columns)}")
    if frame[group_column].nunique() < 3:
        raise ValueError(f"grouped split needs at least 3 distinct {group_column!r} values")
    return hash_split(frame, ratios, [group_column], salt)


# ---------------------------------------------------------------------- the stage


@dataclass(frozen=True)
class SplitReport:
    """What the split did: rows per set, their shares against the configured ones (within
    `share_tolerance`?), and the keys it had to name (duplicates, a group or a label that
    changed for one key)."""

    counts: dict[str, int]
    shares: dict[str, float]
    within_tolerance: bool
    problems: dict[str, list[str]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [
            "rows per set: "
            + ", ".join(f"{s} {self.counts.get(s, 0)} ({self.shares.get(s, 0):.1%})" for s in SETS)
            + ("" if self.within_tolerance else " - outside the stated tolerance")
        ]
        for name, keys in self.problems.items():
            shown = ", ".join(keys[:10]) + (f" and {len(keys) - 10} more" if len(keys) > 10 else "")
            out.append(f"{name}: {len(keys)} key(s): {shown}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": self.counts,
            "shares": self.shares,
            "within_tolerance": self.within_tolerance,
            "problems": self.problems,
        }


def key_problems(
    frame: pd.DataFrame, key_columns: list[str], group_column: str | None, target: str
) -> dict[str, list[str]]:
    """Keys held by more than one row, keys whose group or whose label differs between
    their rows: each named (they never split across sets, since a key decides its set)."""
    keys = key_text(frame, key_columns)
    problems: dict[str, list[str]] = {}
    repeated = keys[keys.duplicated(keep=False)]
    if repeated.empty:
        return problems
    problems["key held by several rows"] = sorted(repeated.unique().tolist())
    rows = frame.loc[repeated.index]
    by_key = rows.groupby(repeated)
    if group_column and group_column in frame.columns and group_column not in key_columns:
        changed = by_key[group_column].nunique(dropna=False)
        problems["group changed for a key (its first group decides its set)"] = sorted(
            changed[changed > 1].index.tolist()
        )
    labels = by_key[target].nunique(dropna=True)
    problems["key seen with different labels"] = sorted(labels[labels > 1].index.tolist())
    return {name: keys for name, keys in problems.items() if keys}


def split_keys(task, spec: FeatureSpec) -> tuple[list[str], str | None]:
    """(the columns whose hash decides a row's set, the group column or None)."""
    if task.split_kind == "grouped":
        group = group_column_of(task)
        return [group], group
    return list(task.key_columns), None


def group_column_of(task) -> str:
    """The column a grouped split keeps together (`Task.group_column`)."""
    return _column_of(task, "group_column", "splits by group (split_kind 'grouped')")


def time_column_of(task) -> str:
    """The column a chronological split orders rows by (`Task.time_column`)."""
    return _column_of(task, "time_column", "splits chronologically")


def _column_of(task, attribute: str, why: str) -> str:
    column = getattr(task, attribute)
    if not column:
        raise ValueError(
            f"task {task.name} {why} but sets no {attribute}: set Task.{attribute} (a "
            "feature spec no longer carries it)"
        )
    return column


def split_by_key(task, frame: pd.DataFrame, spec: FeatureSpec, params) -> pd.DataFrame:
    """Labeled rows into sets by the hash of their key (or group); unlabeled rows (an
    active-learning pool) join no set: `unlabeled`."""
    columns, group = split_keys(task, spec)
    labeled = frame[spec.target_column].notna()
    # The labeled rows' keys only: a copy of every column of them was the stage's largest.
    rows = frame.loc[labeled, list(dict.fromkeys([*columns, *task.key_columns]))]
    if group is not None:
        # One key, one set: a key whose group changed keeps its first group's set.
        keys = key_text(rows, list(task.key_columns))
        first = rows[group].groupby(keys).transform("first")
        rows = grouped_split(rows.assign(**{group: first}), params.split, group, params.split.salt)
        rows[group] = frame.loc[rows.index, group]
    else:
        rows = hash_split(rows, params.split, columns, params.split.salt)
    out = frame.assign(split="unlabeled")
    out.loc[rows.index, "split"] = rows["split"]
    empty = [s for s in SETS if not (out["split"] == s).any()]
    if empty:
        raise ValueError(
            f"split leaves {empty} empty: {len(rows)} labeled rows are too few for ratios "
            f"{params.split.train}/{params.split.val}/{params.split.test}"
        )
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
        gap = task.split_margin(params, spec)
        out = chronological_split(frame, params.split, time_column_of(task), gap)
    else:
        out = split_by_key(task, frame, spec, params)
    return out, task.fit_features(spec, out[out["split"] == "train"])


def split_report(task, frame: pd.DataFrame, spec: FeatureSpec, params) -> SplitReport:
    """Rows per set of a split `frame`, their shares, and the keys to name."""
    in_sets = frame[frame["split"].isin(SETS)]
    counts = {s: int((in_sets["split"] == s).sum()) for s in SETS}
    total = max(sum(counts.values()), 1)
    shares = {s: counts[s] / total for s in SETS}
    configured = {"train": params.split.train, "val": params.split.val, "test": params.split.test}
    problems: dict[str, list[str]] = {}
    within = True
    if task.split_kind != "chronological":
        # Shares are of keys (or groups): the tolerance is of the count that drew them.
        columns, group = split_keys(task, spec)
        drawn = key_text(in_sets, columns).nunique()
        keyed = key_text(in_sets, columns).drop_duplicates().index
        for s in SETS:
            share = float((in_sets.loc[keyed, "split"] == s).mean()) if len(keyed) else 0.0
            within &= abs(share - configured[s]) <= share_tolerance(drawn, configured[s])
        labeled = frame[frame[spec.target_column].notna()]
        problems = key_problems(labeled, list(task.key_columns), group, spec.target_column)
    return SplitReport(counts, shares, bool(within), problems)


def training_view(task, frame: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """Rows tuning and training may read: never the test set (nor, in time, past it)."""
    if task.split_kind == "chronological":
        return without_test(frame, time_column_of(task))
    return frame[frame["split"].isin(["train", "val"])]


def evaluation_view(task, frame: pd.DataFrame, spec: FeatureSpec, params) -> pd.DataFrame:
    """Rows evaluation reads: the test set, plus the history its examples may read."""
    if task.split_kind == "chronological":
        return test_view(frame, time_column_of(task), task.history_span(params, spec))
    return frame[frame["split"] == "test"]


def without_test(frame: pd.DataFrame, time_column: str) -> pd.DataFrame:
    """Rows tuning and training may read: the test set is for evaluation only."""
    test_start = frame.loc[frame["split"] == "test", time_column].min()
    return frame[frame[time_column] < test_start] if pd.notna(test_start) else frame


def test_view(frame: pd.DataFrame, time_column: str, history: pd.Timedelta) -> pd.DataFrame:
    """Test rows plus the `history` of time before them: past rows an example may read.

    Examples still end (and their labels lie) in the test set; the history lets a champion
    recompute its own features of past rows for the very first test examples too.
    """
    test_start = frame.loc[frame["split"] == "test", time_column].min()
    if pd.isna(test_start):
        return frame
    return frame[frame[time_column] >= test_start - pd.Timedelta(history)]


def labeled_set(frame: pd.DataFrame, target_set: str, target_column: str) -> pd.DataFrame:
    """The rows of one split set that carry a label (unlabeled rows are a labeling pool)."""
    return frame[(frame["split"] == target_set) & frame[target_column].notna()]
