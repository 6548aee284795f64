"""Forecast labels and sliding windows: the forecast family's examples.

The labels are the next `horizon` values of the target column of the same group (series), at
exact multiples of the step: a missing reading leaves the label NaN rather than silently
shifting a later value into its place. A window is `window` consecutive readings of one
series, ending at its origin (the last input time).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from loopline.offline.features import FeatureSpec, normalize
from loopline.offline.labeling import Examples


def label_columns(horizon: int) -> list[str]:
    return [f"label_{h}" for h in range(1, horizon + 1)]


def utc_values(times: pd.Series) -> np.ndarray:
    """Timestamps as naive-UTC datetime64 (numpy arithmetic cannot take tz-aware objects)."""
    times = pd.to_datetime(times, utc=True)
    return times.dt.tz_convert(None).to_numpy(dtype="datetime64[ns]")


def shifted_values(
    frame: pd.DataFrame, column: str, steps: int, group: str, time: str, freq: str
) -> np.ndarray:
    """`column` at `time + steps * freq` within the same group (NaN where that row is absent).

    Positive steps look ahead (labels), negative steps look back (lags).
    """
    out = np.full(len(frame), np.nan)
    if frame.empty:
        return out
    # numpy per group instead of pandas: the service computes a batch of windows as one
    # group each, and pandas' per-call overhead would then dominate each answer.
    codes, uniques = pd.factorize(frame[group].to_numpy())
    stamps = utc_values(frame[time]).astype(np.int64)
    values = frame[column].to_numpy(dtype=np.float64)
    wanted = stamps + (pd.Timedelta(freq) * steps).value
    order = np.lexsort((stamps, codes))  # stable: among duplicates the first row wins
    sorted_codes, sorted_stamps = codes[order], stamps[order]
    bounds = np.searchsorted(sorted_codes, np.arange(len(uniques) + 1))
    for code in range(len(uniques)):
        lo, hi = bounds[code], bounds[code + 1]
        rows = order[lo:hi]
        block = sorted_stamps[lo:hi]
        found = np.minimum(np.searchsorted(block, wanted[rows]), hi - lo - 1)
        hit = block[found] == wanted[rows]
        out[rows[hit]] = values[order[lo + found[hit]]]
    return out


def add_forecast_labels(frame: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """Return `frame` with `label_1..label_H`: the target `h` steps after each row."""
    frame = frame.reset_index(drop=True)
    o = spec.options
    labels = {
        name: shifted_values(frame, spec.target_column, h, o.group_column, o.time_column, o.freq)
        for h, name in enumerate(label_columns(o.horizon), start=1)
    }
    return pd.concat([frame, pd.DataFrame(labels, index=frame.index)], axis=1)


def make_windows(
    frame: pd.DataFrame,
    spec: FeatureSpec,
    window: int,
    target_set: str | None = None,
    history_sets: tuple[str, ...] = (),
) -> Examples:
    """Cut sliding windows ending at each valid origin (the last input time): inputs `x`
    (N, window, features), labels `y` (N, horizon) in target units, and `keys` (group,
    origin time).

    A window is valid when its input rows and its label rows are consecutive readings of one
    group, all finite. With `target_set`, the origin and its labels must lie in that split set
    and the inputs in it or in `history_sets` (past rows a forecaster legitimately sees).
    """
    xs, ys, keys = [], [], []
    o = spec.options
    horizon, group_column, time_column = o.horizon, o.group_column, o.time_column
    labels = label_columns(horizon)
    step = pd.Timedelta(o.freq)
    for group, rows in frame.groupby(group_column, sort=True):
        rows = rows.sort_values(time_column)
        n = len(rows)
        if n < window:
            continue
        feats = normalize(rows, spec)
        y = rows[labels].to_numpy(dtype=np.float32)
        times = utc_values(rows[time_column])
        # Consecutive readings share a segment id; a gap starts a new one.
        gaps = np.diff(times) != step.to_timedelta64()
        segment = np.concatenate([[0], np.cumsum(gaps)])
        finite = np.isfinite(feats).all(axis=1)
        finite_count = np.concatenate([[0], np.cumsum(finite)])
        origins = np.arange(window - 1, n)
        starts = origins - window + 1
        valid = (segment[starts] == segment[origins]) & (
            finite_count[origins + 1] - finite_count[starts] == window
        )
        valid &= np.isfinite(y[origins]).all(axis=1)
        if target_set is not None:
            sets = rows["split"].to_numpy()
            allowed = np.isin(sets, (target_set, *history_sets))
            allowed_count = np.concatenate([[0], np.cumsum(allowed)])
            valid &= sets[origins] == target_set
            valid &= allowed_count[origins + 1] - allowed_count[starts] == window
            # Labels run `horizon` rows past the origin; they must stay inside the target set.
            ahead = np.minimum(origins + horizon, n - 1)
            valid &= (sets[ahead] == target_set) & (origins + horizon < n)
        origins = origins[valid]
        if origins.size == 0:
            continue
        view = np.lib.stride_tricks.sliding_window_view(feats, window, axis=0)
        # sliding_window_view puts the window axis last: (n-w+1, F, w) -> (N, w, F)
        xs.append(np.ascontiguousarray(view[origins - window + 1].transpose(0, 2, 1)))
        ys.append(y[origins])
        keys.append(
            pd.DataFrame(
                {
                    group_column: group,
                    time_column: pd.to_datetime(times[origins]).tz_localize("UTC"),
                }
            )
        )
    if not xs:
        empty_keys = pd.DataFrame({group_column: [], time_column: []})
        n_feat = len(spec.feature_columns)
        return Examples(
            np.zeros((0, window, n_feat), np.float32),
            np.zeros((0, horizon), np.float32),
            empty_keys,
        )
    return Examples(np.concatenate(xs), np.concatenate(ys), pd.concat(keys, ignore_index=True))
