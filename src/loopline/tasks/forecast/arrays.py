"""Serving features on column arrays: a batch of windows as (N, R) arrays, no DataFrame.

The offline process computes features with `add_features` on a frame of many series; the
service answers small batches of windows, where building that frame, sorting it and
looking lags up by time cost ~100x the model call. A batch of complete windows (equal
length, consecutive readings: what `/predict` checks and a stream keeps) needs none of it:
a lag is the reading k places back, a time encoding is integer arithmetic on the epoch, and
only the last `window` rows of each window reach the model. `Task.window_features` computes
the same columns this way; tests hold it equal to `add_features` on the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from loopline.offline.features import FeatureSpec

NS_PER_S = 1_000_000_000
NS_PER_DAY = 86_400 * NS_PER_S
EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0, as pandas counts)


@dataclass(frozen=True)
class WindowBatch:
    """N windows of R consecutive readings each, oldest first: `times` (N, R) int64 UTC
    nanoseconds since the epoch, `values` one (N, R) float64 array per numeric column,
    `keys` the series of each window."""

    keys: list[str]
    times: np.ndarray
    values: dict[str, np.ndarray]

    def last(self, n: int) -> WindowBatch:
        """The last `n` readings of every window."""
        return WindowBatch(
            self.keys, self.times[:, -n:], {c: v[:, -n:] for c, v in self.values.items()}
        )

    def lagged(self, column: str, k: int, n: int) -> np.ndarray:
        """`column` k readings before each of the last `n` readings (needs R >= n + k)."""
        values = self.values[column]
        width = values.shape[1]
        return values[:, width - n - k : width - k]


def joined_columns(windows) -> dict[str, np.ndarray] | None:
    """Each column of windows of one length and the same columns, end to end (one array of
    N x R values per column; one window's own arrays as they are), or None when they differ.
    Made once per batch: the contract, the features and the answers all read it."""
    if not windows:
        return None
    first = windows[0].rows
    if len(windows) == 1:
        return dict(first)
    width = len(windows[0])
    if any(w.rows.keys() != first.keys() or len(w) != width for w in windows):
        return None
    return {c: np.concatenate([w.rows[c] for w in windows]) for c in first}


def stack_windows(
    windows, time_column: str, freq: str, joined: dict[str, np.ndarray] | None = None
) -> WindowBatch | None:
    """Windows (`Window`s of numpy columns) as one `WindowBatch`, or None when they differ
    in length or a window's readings are not exactly `freq` apart (then lags by index
    would not be lags by time, and the frame path answers). `joined`: their
    `joined_columns`, when the caller has them."""
    if joined is None:
        joined = joined_columns(windows)
    if joined is None:
        return None
    count = len(windows)
    width = len(joined[time_column]) // count
    times = joined[time_column].astype("datetime64[ns]", copy=False).view(np.int64)
    times = times.reshape(count, width)
    if width > 1 and not (np.diff(times, axis=1) == pd.Timedelta(freq).value).all():
        return None
    values = {
        c: v.reshape(count, width)
        for c, v in joined.items()
        if c != time_column and v.dtype.kind == "f"
    }
    return WindowBatch([w.key for w in windows], times, values)


# ----------------------------------------------------------------------------- the clock


def hour_of_day(ns: np.ndarray) -> np.ndarray:
    """Hour + minute / 60 (UTC), as `stamps.hour + stamps.minute / 60` computes it."""
    seconds = ns // NS_PER_S
    return (seconds // 3600) % 24 + ((seconds // 60) % 60) / 60


def day_of_week(ns: np.ndarray) -> np.ndarray:
    """Monday = 0 (UTC)."""
    return (ns // NS_PER_DAY + EPOCH_WEEKDAY) % 7


_FEW_DAYS = 256


def day_of_year(ns: np.ndarray) -> np.ndarray:
    """1 on January 1st (UTC)."""
    days = ns // NS_PER_DAY
    if days.size <= _FEW_DAYS:  # a sort for the distinct days costs more than converting all
        year_start = days.astype("datetime64[D]").astype("datetime64[Y]").astype("datetime64[D]")
        return days - year_start.astype(np.int64) + 1
    # The calendar conversion is numpy's slowest step: done once per distinct day.
    distinct, where = np.unique(days, return_inverse=True)
    year_start = distinct.astype("datetime64[D]").astype("datetime64[Y]").astype("datetime64[D]")
    return days - year_start.astype(np.int64)[where.reshape(days.shape)] + 1


_ISO: dict[int, str] = {}  # ISO text per instant: forecasts of many windows share hours
_ISO_LIMIT = 200_000


def iso_utc(ns: np.ndarray) -> list[str]:
    """UTC nanoseconds as the ISO strings `pd.Timestamp(...).isoformat()` writes."""
    flat = np.asarray(ns, dtype=np.int64).ravel().tolist()
    known = _ISO
    missing = [v for v in dict.fromkeys(flat) if v not in known]
    if missing:
        if len(known) > _ISO_LIMIT:
            known.clear()
        known.update(zip(missing, _iso_texts(np.array(missing, dtype=np.int64)), strict=True))
    return [known[v] for v in flat]


def iso_instant(ns: int) -> str:
    """One instant (UTC nanoseconds) as `iso_utc` writes it."""
    text = _ISO.get(ns)
    return text if text is not None else iso_utc(np.array([ns], dtype=np.int64))[0]


def _iso_texts(ns: np.ndarray) -> list[str]:
    if (ns % NS_PER_S == 0).all():  # whole seconds: numpy formats them all at once
        text = np.datetime_as_string((ns // NS_PER_S).astype("datetime64[s]"), unit="s")
        return [t + "+00:00" for t in text.tolist()]
    return [pd.Timestamp(v, tz="UTC").isoformat() for v in ns.tolist()]


# ----------------------------------------------------------------------------- model inputs


def normalized(columns: dict[str, np.ndarray], spec: FeatureSpec) -> np.ndarray:
    """Feature columns (each (N, W)) as the (N, W, F) float32 input `normalize` makes: the
    same float64 arithmetic, so the two agree bit for bit."""
    names = spec.feature_columns
    mean, std = _scales(spec)
    values = np.stack([np.asarray(columns[c], dtype=np.float64) for c in names], axis=-1)
    return ((values - mean) / std).astype(np.float32)


# Per served spec, by identity (a spec holds dicts: it has no hash): (spec, mean, std).
_SCALES: dict[int, tuple[FeatureSpec, np.ndarray, np.ndarray]] = {}


def _scales(spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
    """The spec's means and deviations in feature order (made once per served spec)."""
    found = _SCALES.get(id(spec))
    if found is None or found[0] is not spec:
        if len(_SCALES) > 64:  # specs come and go with hot swaps: never many at once
            _SCALES.clear()
        names = spec.feature_columns
        found = _SCALES[id(spec)] = (
            spec,
            np.array([spec.mean[c] for c in names], dtype=np.float64),
            np.array([spec.std[c] for c in names], dtype=np.float64),
        )
    return found[1], found[2]
