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


def stack_windows(windows, time_column: str, freq: str) -> WindowBatch | None:
    """Windows (`Window`s of numpy columns) as one `WindowBatch`, or None when they differ
    in length or a window's readings are not exactly `freq` apart (then lags by index
    would not be lags by time, and the frame path answers)."""
    if not windows:
        return None
    count, width = len(windows), len(windows[0])
    stamps = [w.rows[time_column] for w in windows]
    if any(len(t) != width for t in stamps):
        return None
    # concatenate + reshape: np.stack costs an expand_dims per window
    joined = stamps[0] if count == 1 else np.concatenate(stamps)
    times = joined.astype("datetime64[ns]", copy=False).view(np.int64).reshape(count, width)
    if width > 1 and not (np.diff(times, axis=1) == pd.Timedelta(freq).value).all():
        return None
    numeric = [c for c, v in windows[0].rows.items() if c != time_column and v.dtype.kind == "f"]
    if count == 1:
        values = {c: windows[0].rows[c].reshape(1, width) for c in numeric}
    else:
        values = {
            c: np.concatenate([w.rows[c] for w in windows]).reshape(count, width) for c in numeric
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


def day_of_year(ns: np.ndarray) -> np.ndarray:
    """1 on January 1st (UTC)."""
    days = ns // NS_PER_DAY
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
