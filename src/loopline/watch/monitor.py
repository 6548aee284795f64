"""The monitor: drift and live quality over event-time windows of the prediction log, each
against the reference profile published with the model version that answered.

One pass (`run_pass`) reads the log, cuts each version's predictions into windows of
`monitor.window` by event time (a forecast's origin, else when it was logged: a replayed
month is a month of windows, in minutes), and tests every complete window the monitoring
table has not seen yet (its watermark: no window is counted twice, and a pass that failed
is caught up by the next):

- feature drift: per monitored input (`Task.monitor_inputs`), the two-sample KS statistic
  (numbers) or the chi-square statistic against the reference's shares (categories);
- prediction drift: the same on the prediction columns (`Task.monitor_outputs`);
- live quality: the window's figure (forecast RMSE, error rate) over the profile's test
  figure, once ground truth joins the predictions (`Task.live_losses`).

Thresholds are calibrated, not guessed: the same statistic on `calibration_draws`
windows of the reference of the live window's size, drawn in blocks of contiguous rows so
that the reference's own autocorrelation counts as normal, each against the rest of the
reference, calibrates a signal's columns together so that a clean window crosses any of
their thresholds with probability at most `false_alarm_rate` (`Calibrator`). A signal
alarms when `min_windows` consecutive tested windows cross it. Bad input says so and
raises nothing: an empty log, windows too small (`min_rows`), a column the reference
names but the log lacks, a version without a profile (live quality only, against its
registered test figure and a fixed ratio).
"""

from __future__ import annotations

import base64
import logging
import math
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loopline.offline.reference import EVENT_TIME, Column, ReferenceProfile
from loopline.online.predlog import insert_skipping_conflicts

log = logging.getLogger(__name__)

SIGNALS = ("feature_drift", "prediction_drift", "live_quality")
SUMMARY = "*"  # the `feature` of a signal's own row per window
SMALL = ("too small", "too few truths")  # notes of windows recorded but not tested
NO_PROFILE_RATIO = 1.5  # live quality over a version's registered figure, without a profile


# ---------------------------------------------------------------------- statistics


def ks_statistic(reference_sorted: np.ndarray, sample: np.ndarray) -> float:
    """The two-sample Kolmogorov-Smirnov statistic sup |F_sample - F_reference| (equal to
    `scipy.stats.ks_2samp(...).statistic`), for a reference already sorted; ties handled."""
    return float(ks_statistics(reference_sorted, np.asarray(sample)[None, :])[0])


def ks_statistics(
    reference_sorted: np.ndarray, samples: np.ndarray, leave_out: bool = False
) -> np.ndarray:
    """`ks_statistic` of each row of `samples` (draws, n), vectorised: the supremum is
    reached at a sample value, just at it (F_sample - F_ref) or just before (F_ref -
    F_sample), and a run of tied values counts as one step. `leave_out`: each row is rows
    of the reference itself, compared with the rest of the reference (without it)."""
    s = np.sort(samples, axis=1)
    n = s.shape[1]
    m = len(reference_sorted)
    ref_right = np.searchsorted(reference_sorted, s, side="right").astype(np.float64)
    ref_left = np.searchsorted(reference_sorted, s, side="left").astype(np.float64)
    position = np.broadcast_to(np.arange(n), s.shape)
    new_run = np.ones(s.shape, dtype=bool)
    new_run[:, 1:] = s[:, 1:] != s[:, :-1]
    run_end = np.ones(s.shape, dtype=bool)
    run_end[:, :-1] = new_run[:, 1:]
    # Values at or below each sample value: the end of its run of ties; below: its start.
    own_right = np.minimum.accumulate(np.where(run_end, position + 1, n)[:, ::-1], axis=1)
    own_right = own_right[:, ::-1] / n
    own_left = np.maximum.accumulate(np.where(new_run, position, 0), axis=1) / n
    if leave_out and m > n:
        ref_right = (ref_right - own_right * n) / (m - n)
        ref_left = (ref_left - own_left * n) / (m - n)
    else:
        ref_right, ref_left = ref_right / m, ref_left / m
    up = np.max(own_right - ref_right, axis=1)
    down = np.max(ref_left - own_left, axis=1)
    return np.maximum(np.maximum(up, down), 0.0)


def chi_square_statistic(shares: np.ndarray, counts: np.ndarray) -> float:
    """Pearson's chi-square of a window's category counts against the reference's shares
    (equal to `scipy.stats.chisquare(counts, shares * counts.sum()).statistic`)."""
    expected = shares * counts.sum()
    return float(np.sum((counts - expected) ** 2 / expected))


class Categories:
    """A categorical reference: its categories (plus one for any unseen value) and shares,
    smoothed so that no expected count is zero."""

    OTHER = "\x00other"

    def __init__(self, values: np.ndarray):
        names, counts = np.unique(values.astype(str), return_counts=True)
        self.names = [*names.tolist(), self.OTHER]
        self.index = {name: i for i, name in enumerate(self.names)}
        smoothed = np.append(counts, 0).astype(np.float64) + 0.5
        self.shares = smoothed / smoothed.sum()
        self.codes = np.asarray([self.index[v] for v in values.astype(str)])

    def encode(self, values: np.ndarray) -> np.ndarray:
        other = self.index[self.OTHER]
        return np.asarray([self.index.get(str(v), other) for v in values], dtype=np.int64)

    def statistic(self, codes: np.ndarray) -> float:
        counts = np.bincount(codes, minlength=len(self.names)).astype(np.float64)
        return chi_square_statistic(self.shares, counts)

    def statistics(self, codes: np.ndarray, leave_out: bool = False) -> np.ndarray:
        """`statistic` of each row of `codes` (draws, n), vectorised. `leave_out`: each
        row is rows of the reference itself, compared with the shares of the rest."""
        k, rows = len(self.names), len(codes)
        flat = (codes + k * np.arange(rows)[:, None]).ravel()
        counts = np.bincount(flat, minlength=rows * k).reshape(rows, k).astype(np.float64)
        shares = self.shares[None, :]
        if leave_out:
            everything = np.bincount(self.codes, minlength=k).astype(np.float64)
            rest = np.maximum(everything[None, :] - counts, 0.0) + 0.5
            shares = rest / rest.sum(axis=1, keepdims=True)
        expected = shares * counts.sum(axis=1, keepdims=True)
        return np.sum((counts - expected) ** 2 / expected, axis=1)


def relative_bias(error: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """|sum of signed errors| over the sum of the truth's size, along the last axis."""
    total = np.sum(scale, axis=-1)
    return np.abs(np.sum(error, axis=-1)) / np.where(total > 0, total, np.inf)


def calibration_size(n: int) -> int:
    """The window size thresholds are calibrated at: the largest of 2^(k/8) at or below
    `n` (windows of 293 or 300 rows share one calibration; a window is sampled down to
    it, losing under a tenth of its rows)."""
    if n < 16:
        return n
    return int(2 ** (np.floor(8 * np.log2(n)) / 8) + 1e-9)


def correlation_range(values: np.ndarray) -> int:
    """How far a series' autocorrelation reaches, in rows: the smallest lag m after which
    K autocorrelations in a row all lie within +-2 sqrt(log10(N) / N), K = max(5,
    sqrt(log10 N)) (the m-hat of Politis and White's automatic block length, 2004); 0 for
    rows without order (iid), the longest lag looked at when it never dies out (a daily
    cycle). A numeric array, or (rows, k) indicator columns: the largest of theirs."""
    x = np.asarray(values, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    rows = len(x)
    if rows < 16:
        return 0
    x = x - x.mean(axis=0)
    power = (x * x).sum(axis=0)
    x = x[:, power > 0]
    if not x.shape[1]:
        return 0
    size = 1 << int(np.ceil(np.log2(2 * rows)))
    spectrum = np.fft.rfft(x, size, axis=0)
    acf = np.fft.irfft(spectrum * np.conj(spectrum), size, axis=0)[:rows] / power[power > 0]
    longest = max(1, rows // 4)
    bound = 2 * np.sqrt(np.log10(rows) / rows)
    run = max(5, int(np.ceil(np.sqrt(np.log10(rows)))))
    small = (np.abs(acf[1 : longest + run + 1]) < bound).all(axis=1)  # lags 1, 2, ...
    # small[m:m + run] all true: the run of lags m+1..m+run is within the bound.
    window = np.convolve(small.astype(int), np.ones(run, dtype=int), mode="valid")
    found = np.flatnonzero(window[: longest + 1] == run)
    return int(found[0]) if len(found) else longest


def dependent_at(values: np.ndarray, n: int) -> bool:
    """Whether a series' rows depend on each other at the scale of a window of n rows:
    the variance of its moving sums of n over n times its variance (Lo and MacKinlay's
    variance ratio, 1 for iid rows) above 1 by 2.33 of its iid standard deviation
    sqrt(2 (2n - 1)(n - 1) / (3 n N)). Weak correlation that lasts (a ten-row cluster of
    a few percent each) passes every single lag's test yet makes windows vary several
    times more than iid rows would; this sees it. (rows, k) columns: any of them."""
    x = np.asarray(values, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    rows = len(x)
    if n < 2:
        return False
    if rows < 2 * n:
        return True  # too short to tell: drawn as whole windows
    x = x - x.mean(axis=0)
    spread = (x * x).mean(axis=0)
    x = x[:, spread > 0]
    if not x.shape[1]:
        return False
    sums = np.cumsum(np.vstack([np.zeros((1, x.shape[1])), x]), axis=0)
    moving = sums[n:] - sums[:-n]
    ratio = (moving * moving).mean(axis=0) / (n * spread[spread > 0])
    sd = np.sqrt(2 * (2 * n - 1) * (n - 1) / (3 * n * rows))
    return bool(np.any(ratio > 1 + 2.33 * sd))


def dependence_series(values: np.ndarray) -> np.ndarray:
    """What a column's dependence is looked for in: a numeric column's values and whether
    each is above the median (its spread, not only its level); a categorical column's
    (codes) indicators of its five commonest categories."""
    if values.dtype.kind == "f":
        return np.stack([values, (values > np.median(values)).astype(np.float64)], axis=1)
    common = np.argsort(np.bincount(values))[::-1][:5]
    return (values[:, None] == common[None, :]).astype(np.float64)


def effective_size(series: np.ndarray) -> float:
    """How many independent values a series in order is worth: its length over 1 + 2 x
    the sum of its autocorrelations up to the first under 2 / sqrt(length) (between 1
    and its length)."""
    x = np.asarray(series, dtype=np.float64)
    count = len(x)
    x = x - x.mean()
    spread = float((x * x).mean())
    if count < 4 or spread <= 0:
        return float(max(count, 1))
    total = 0.0
    for lag in range(1, count // 4 + 1):
        rho = float((x[:-lag] * x[lag:]).mean()) / spread
        if rho < 2 / np.sqrt(count):
            break
        total += rho
    return float(np.clip(count / (1 + 2 * total), 1, count))


def distinct_slots(rng: np.random.Generator, draws: int, count: int, slots: int) -> np.ndarray:
    """(draws, count) slot numbers below `slots`, distinct within each row."""
    if 4 * count >= slots:
        return np.argsort(rng.random((draws, slots)), axis=1)[:, :count]
    chosen = np.sort(rng.integers(0, slots, (draws, count)), axis=1)
    while True:
        again = np.zeros(chosen.shape, dtype=bool)
        again[:, 1:] = chosen[:, 1:] == chosen[:, :-1]
        if not again.any():
            return chosen
        chosen = np.sort(np.where(again, rng.integers(0, slots, chosen.shape), chosen), axis=1)


def rest_figures(losses: np.ndarray, index: np.ndarray, figure: Callable) -> np.ndarray:
    """The figure of the reference's losses without each row's (distinct) rows of
    `index` (draws, n), in chunks of a few million values."""
    rows = len(losses)
    out = np.empty(len(index))
    step = max(1, 4_000_000 // rows)
    for first in range(0, len(index), step):
        part = index[first : first + step]
        keep = np.ones((len(part), rows), dtype=bool)
        np.put_along_axis(keep, part, False, axis=1)
        rest = np.nonzero(keep)[1].reshape(len(part), -1)
        out[first : first + step] = figure(losses[rest])
    return out


class Calibrator:
    """Calibrated thresholds of one profile: per signal, one threshold per column, such
    that a clean window of the live window's size crosses any of them with probability at
    most `alpha` (cached by signal, columns, window sizes and alpha).

    Clean windows are drawn from the reference in its event-time order (a moving block
    bootstrap): a drawn window of n rows is made of blocks of contiguous rows. Where a
    column's rows depend on each other at the window's scale (`dependent_at`), a block is
    the whole window (a contiguous window of the reference, starting anywhere); else
    twice how far its autocorrelation reaches (`correlation_range`: Politis and White's
    m-hat; single rows where the order says nothing). So what a day of hourly readings,
    or of texts about the same product, has in common counts as normal. A draw never takes
    a row twice, and its statistic is taken against the rest of the reference (the
    window left out), as a live window's is against a reference it is not part of.

    The columns of a signal are calibrated together (max-T, Westfall and Young): each
    draw takes the same rows of every column, each column's statistic is standardised by
    its own tail (z = (s - u) / sigma: u its 1 - p0 quantile, sigma the mean excess over
    u), and z* is the 1 - alpha quantile of the largest z; column c's threshold is u +
    sigma z*. Correlated columns (irradiance and power) cost no power then, as a
    Bonferroni split of alpha over the columns does.

    A reference holds few independent windows: a year of daily windows, fewer still
    where neighbouring days are alike (`effective_size` of the disjoint windows' largest
    z). Where alpha times their number is under `TAIL_WINDOWS`, the quantile is not read
    off the draws (a new window would cross it about once in their number whatever
    alpha is: several times alpha per signal on a year of daily windows): the largest z's
    tail over its 1 - p0 quantile (p0 = TAIL_WINDOWS / their number) is taken as
    exponential (a peaks-over-threshold fit; the KS statistic's tail is lighter, so this
    errs high) and extrapolated to alpha, its scale's estimation error included. The aim
    is `AIM` x alpha."""

    TAIL_WINDOWS = 10  # independent windows beyond the quantile read off the draws
    # Thresholds aim at this share of alpha: the rate a threshold estimated from a finite
    # reference (a few hundred independent windows at most) gives scatters around its
    # aim by about as much as the aim itself, so aiming at alpha would exceed it about
    # every other reference; aiming at half keeps it at or under alpha.
    AIM = 0.5
    # A window under this share of the test losses moves the figure it is compared with
    # too little to leave it out of it (the cost is the reference's size per draw).
    LEAVE_OUT = 0.01

    def __init__(self, profile: ReferenceProfile, draws: int, seed: int):
        self.profile = profile
        self.draws = draws
        self.seed = seed
        self._cache: dict[tuple, dict[str, float]] = {}
        self._prepared: dict[tuple[str, str], Any] = {}
        self._series: dict[tuple, np.ndarray] = {}  # where dependence is looked for
        self._range: dict[tuple, int] = {}  # its correlation_range
        self._blocks: dict[tuple, int] = {}  # (its key, n): block length

    def prepared(self, group: str, name: str, column: Column):
        key = (group, name)
        if key not in self._prepared:
            values = column.array()
            if column.kind == "numeric":
                self._prepared[key] = (values, np.sort(values))
            else:
                self._prepared[key] = Categories(values)
        return self._prepared[key]

    def block(self, key: tuple, series: Callable[[], np.ndarray], n: int) -> int:
        """The block length for windows of n rows of a reference series: n (whole
        windows) where its rows depend on each other at that scale (`dependent_at`), else
        twice its `correlation_range` (1: single rows), at most n."""
        if key not in self._range:
            values = series()
            self._series[key] = values
            self._range[key] = correlation_range(values)
        if (key, n) not in self._blocks:
            whole = dependent_at(self._series[key], n)
            self._blocks[key, n] = n if whole else min(n, max(1, 2 * self._range[key]))
        return self._blocks[key, n]

    def _column_block(self, group: str, name: str, column: Column, n: int) -> int:
        ref = self.prepared(group, name, column)
        values = ref[0] if column.kind == "numeric" else ref.codes
        return self.block((group, name), lambda: dependence_series(values), n)

    def _rng(self, *key: Any) -> np.random.Generator:
        # The same columns, sizes and seed draw the same reference windows in every pass.
        return np.random.default_rng([self.seed, *(zlib.crc32(str(k).encode()) for k in key)])

    @staticmethod
    def _lengths(parts: list[tuple[int, int, int]]) -> list[tuple[int, int]]:
        """Per part (rows, window size n, its block length): (block length, blocks per
        window), the length shared (the longest any part needs), at most n; whole
        windows where a window's blocks would not fit in distinct slots of every part."""
        longest = max(block for _, _, block in parts)
        slots = min(rows // longest for rows, _, _ in parts)
        if any(-(-n // min(longest, n)) > slots for _, n, _ in parts):
            longest = max(n for _, n, _ in parts)
        return [(min(longest, n), -(-n // min(longest, n))) for _, n, _ in parts]

    def _draw(self, key: tuple, parts: list[tuple[int, int, int]]) -> list[np.ndarray]:
        """Per part (rows of its reference, window size n, block length), the row indices
        of `draws` windows (draws, n), the same relative places in every part. A whole
        window starts anywhere (circular); blocks of a window are distinct slots of the
        parts' grid of blocks, shifted together, so that no row is drawn twice (the rest
        of the reference is what a drawn window is compared with). Where every draw is a
        whole window, the reference's disjoint windows in order follow (`_thresholds`
        reads how much they have in common)."""
        lengths = self._lengths(parts)
        rng = self._rng(*key)
        out = []
        if all(count == 1 for _, count in lengths):
            disjoint = min(self.draws, max(2, min(rows // n for rows, n, _ in parts)))
            places = np.concatenate([rng.random(self.draws), np.arange(disjoint) / disjoint])
            for rows, n, _ in parts:
                starts = (places * rows).astype(np.int64)
                out.append((starts[:, None] + np.arange(n)[None, :]) % rows)
            return out
        most = max(count for _, count in lengths)
        slots = min(rows // block for (rows, _, _), (block, _) in zip(parts, lengths, strict=True))
        chosen = distinct_slots(rng, self.draws, most, slots)
        shift = rng.random((self.draws, 1))
        for (rows, n, _), (block, count) in zip(parts, lengths, strict=True):
            width = rows / slots  # each slot's rows: at least a block
            starts = (chosen[:, :count] * width).astype(np.int64)
            starts += (shift * (width - block)).astype(np.int64)
            index = starts[:, :, None] + np.arange(block)[None, None, :]
            out.append(index.reshape(self.draws, -1)[:, :n] % rows)
        return out

    def _independent(self, parts: list[tuple[int, int, int]]) -> float:
        """About how many independent windows the draws stand for, before the windows'
        own dependence (`_thresholds`): the reference's disjoint windows when a draw is
        one block; else the ways to pick a draw's blocks among the reference's disjoint
        blocks (at most the draws)."""
        counts = []
        for (rows, n, _), (block, count) in zip(parts, self._lengths(parts), strict=True):
            if count == 1:
                counts.append(max(1.0, rows / n))
                continue
            blocks = max(rows / block, float(count))
            ways = math.lgamma(blocks + 1) - math.lgamma(count + 1)
            ways -= math.lgamma(blocks - count + 1)
            counts.append(math.exp(min(ways, 30.0)))
        return min(float(self.draws), *counts)

    def _thresholds(self, stats: np.ndarray, alpha: float, independent: float) -> np.ndarray:
        """Per column of `stats` (the draws' statistics, then those of the reference's
        disjoint windows in order if any), its threshold: max-T over the columns, each
        standardised by its tail; the largest z's 1 - alpha quantile read off the draws
        or, with too few independent windows, extrapolated (exponential tail)."""
        draws, disjoint = stats[: self.draws], stats[self.draws :]
        alpha = alpha * self.AIM

        def tails(p0: float) -> tuple[np.ndarray, np.ndarray]:
            u = np.quantile(draws, 1 - p0, axis=0)
            over = draws > u
            sigma = np.where(over, draws - u, 0.0).sum(axis=0) / np.maximum(over.sum(axis=0), 1)
            return u, np.maximum(sigma, 1e-9 * np.maximum(np.abs(u), 1.0))

        u, sigma = tails(float(np.clip(self.TAIL_WINDOWS / independent, 0.05, 0.5)))
        if len(disjoint) > 1:
            # Whole windows: neighbours alike (a week of one weather, a season) are fewer
            # independent windows than there are windows.
            series = np.max((disjoint - u) / sigma, axis=1)
            independent = min(independent, effective_size(series))
        p0 = float(np.clip(self.TAIL_WINDOWS / independent, 0.05, 0.5))
        u, sigma = tails(p0)
        largest = np.max((draws - u) / sigma, axis=1)
        if alpha * independent >= self.TAIL_WINDOWS:
            z = float(np.quantile(largest, 1 - alpha, method="higher"))
        else:
            top = float(np.quantile(largest, 1 - p0))
            over = largest[largest > top] - top
            # An exponential tail with its scale estimated from m independent excesses:
            # a new window's excess has the predictive tail (1 + y / (m scale))^-m, wider
            # than exp(-y / scale) by the scale's own error.
            m = max(1.0, p0 * independent)
            spread = m * ((p0 / alpha) ** (1 / m) - 1)
            z = top + (float(over.mean()) if len(over) else 0.0) * spread
        return u + sigma * z

    def drift_thresholds(
        self, group: str, columns: dict[str, tuple[Column, int]], alpha: float
    ) -> dict[str, float]:
        """Thresholds of a signal's columns ({name: (reference column, window size)}) such
        that a clean window crosses any with probability `alpha`."""
        key = (group, tuple((name, n) for name, (_, n) in columns.items()), alpha)
        if key not in self._cache:
            parts, refs = [], []
            for name, (column, n) in columns.items():
                ref = self.prepared(group, name, column)
                rows = len(ref[0]) if column.kind == "numeric" else len(ref.codes)
                parts.append((rows, n, self._column_block(group, name, column, n)))
                refs.append((column.kind, ref))
            indices = self._draw(key[:2], parts)
            stats = np.empty((len(indices[0]), len(parts)))
            for j, (index, (kind, ref)) in enumerate(zip(indices, refs, strict=True)):
                if kind == "numeric":
                    stats[:, j] = ks_statistics(ref[1], ref[0][index], leave_out=True)
                else:
                    stats[:, j] = ref.statistics(ref.codes[index], leave_out=True)
            found = self._thresholds(stats, alpha, self._independent(parts))
            self._cache[key] = dict(zip(columns, map(float, found), strict=True))
        return self._cache[key]

    def drift_threshold(self, group: str, name: str, column: Column, n: int, alpha: float):
        """One column's threshold (a signal of one column)."""
        return self.drift_thresholds(group, {name: (column, n)}, alpha)[name]

    def quality_thresholds(
        self,
        losses: np.ndarray,
        figure: Callable,
        n: int,
        alpha: float,
        pairs: np.ndarray | None = None,
        n_pairs: int = 0,
    ) -> tuple[float, float | None]:
        """(the threshold of a window's figure over the whole test figure, of its relative
        bias |sum error| / sum |truth| or None without `pairs`), together at `alpha`."""
        key = ("quality", n, n_pairs if pairs is not None else None, alpha)
        if key not in self._cache:
            whole = float(figure(losses))
            # Losses and the profile's predictions are of the same test rows, in the same
            # order: their dependence is the losses' too (errors cluster where inputs do).
            blocks = [self.block(("quality", "figure"), lambda: losses, n)]
            for name, column in (self.profile.predictions or {}).items():
                if len(column.values) >= 2:
                    size = min(n, len(column.values) // 2)
                    block = self._column_block("prediction_drift", name, column, size)
                    blocks.append(n if block >= size else block)
            parts = [(len(losses), n, max(blocks))]
            if pairs is not None:
                block = self.block(("quality", "bias"), lambda: pairs[:, :1], n_pairs)
                parts.append((len(pairs), n_pairs, block))  # the longer block is shared
            index = self._draw(key[:3], parts)
            whole = np.full(len(index[0]), whole, dtype=np.float64)
            if n >= self.LEAVE_OUT * len(losses):  # a window's share of the test figure
                whole = rest_figures(losses, index[0], figure)
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(whole > 0, figure(losses[index[0]]) / whole, 1.0)
            columns = [ratio]
            if pairs is not None:
                columns.append(relative_bias(pairs[index[1], 0], pairs[index[1], 1]))
            found = self._thresholds(np.stack(columns, axis=1), alpha, self._independent(parts))
            self._cache[key] = {"figure": float(found[0])}
            if pairs is not None:
                self._cache[key]["bias"] = float(found[1])
        found = self._cache[key]
        return found["figure"], found.get("bias")


# ---------------------------------------------------------------------- the monitoring table


def monitoring_table(metadata):
    from sqlalchemy import (
        BigInteger,
        Boolean,
        Column,
        DateTime,
        Float,
        Integer,
        String,
        Table,
        UniqueConstraint,
    )

    return Table(
        "monitoring",
        metadata,
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
        Column("model_name", String(200), nullable=False),
        Column("model_version", String(50), nullable=False),
        Column("signal", String(50), nullable=False),
        Column("feature", String(200), nullable=False),  # "*": the signal's own row
        Column("window_start", DateTime(timezone=True), nullable=False),
        Column("window_end", DateTime(timezone=True), nullable=False),
        Column("rows", Integer, nullable=False),
        Column("statistic", Float),
        Column("threshold", Float),
        Column("exceeded", Boolean, nullable=False),
        Column("streak", Integer, nullable=False),  # consecutive tested windows exceeded
        Column("alarm", Boolean, nullable=False),
        Column("note", String(500)),
        Column("pass_id", String(50), nullable=False),
        Column("computed_at", DateTime(timezone=True), nullable=False),
        # A window is counted once, whatever passes race or repeat.
        UniqueConstraint("model_name", "model_version", "signal", "feature", "window_start"),
    )


def _utc(value: Any) -> pd.Timestamp | None:
    if value is None or pd.isna(value):
        return None
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


class MonitoringStore:
    """The `monitoring` table in the prediction-log database: the monitor's rows and its
    watermark per (model, version, signal)."""

    def __init__(self, url: str, attempts: int = 3, backoff_s: float = 0.5):
        from sqlalchemy import MetaData, create_engine

        self.url = url
        self.attempts, self.backoff_s = attempts, backoff_s
        self.engine = create_engine(url, pool_pre_ping=True)
        metadata = MetaData()
        self.table = monitoring_table(metadata)
        self._retry(lambda: metadata.create_all(self.engine))

    def _retry(self, action: Callable[[], Any]) -> Any:
        """A database briefly away: retried with backoff, then the last error raised."""
        for attempt in range(self.attempts):
            try:
                return action()
            except Exception as error:
                if attempt == self.attempts - 1:
                    raise
                log.warning("monitoring table: %s; retrying", type(error).__name__)
                time.sleep(self.backoff_s * (attempt + 1))
        return None

    def last(self, model_name: str, version: str, signal: str) -> tuple[pd.Timestamp | None, int]:
        """(the watermark: the last window tested or passed, the streak it left)."""
        from sqlalchemy import select

        t = self.table
        query = (
            select(t.c.window_start, t.c.streak)
            .where(
                t.c.model_name == model_name,
                t.c.model_version == str(version),
                t.c.signal == signal,
                t.c.feature == SUMMARY,
            )
            .order_by(t.c.window_start.desc())
            .limit(1)
        )

        def read():
            with self.engine.connect() as connection:
                return connection.execute(query).first()

        row = self._retry(read)
        return (_utc(row.window_start), int(row.streak)) if row else (None, 0)

    def last_retrain(self, model_name: str) -> pd.Timestamp | None:
        """When the monitor last started a retrain of `model_name` (any version)."""
        from sqlalchemy import func, select

        t = self.table
        query = select(func.max(t.c.window_start)).where(
            t.c.model_name == model_name, t.c.signal == RETRAIN
        )

        def read():
            with self.engine.connect() as connection:
                return connection.execute(query).scalar()

        return _utc(self._retry(read))

    def add(self, rows: list[dict[str, Any]]) -> int:
        """Insert rows; one already there (same window, signal, feature) is left as it was."""
        if not rows:
            return 0
        dialect = self.engine.dialect.name
        statement = insert_skipping_conflicts(self.table, dialect)
        if statement is None:  # another database: a repeated window fails on the unique key
            statement = self.table.insert()

        def write():
            with self.engine.begin() as connection:
                return connection.execute(statement, rows).rowcount

        return self._retry(write)

    def rows(self, model_name: str | None = None) -> pd.DataFrame:
        from sqlalchemy import select

        query = select(self.table).order_by(self.table.c.id)
        if model_name:
            query = query.where(self.table.c.model_name == model_name)

        def read():
            with self.engine.connect() as connection:
                return pd.DataFrame([dict(r._mapping) for r in connection.execute(query)])

        return self._retry(read)

    def close(self) -> None:
        self.engine.dispose()


def latest_signals(url: str, model_name: str) -> list[dict[str, Any]]:
    """Each (version, signal)'s latest tested window in the monitoring table: its ratio
    (statistic over threshold: 1 = at the threshold) and whether it alarmed (for the
    service's Prometheus gauges). No table yet: none."""
    from sqlalchemy import MetaData, create_engine, inspect, select

    engine = create_engine(url)
    try:
        if not inspect(engine).has_table("monitoring"):
            return []
        t = monitoring_table(MetaData())
        query = (
            select(t.c.model_version, t.c.signal, t.c.statistic, t.c.threshold, t.c.alarm)
            .where(t.c.model_name == model_name, t.c.feature == SUMMARY, t.c.statistic.isnot(None))
            .order_by(t.c.window_start.desc())
            .limit(500)
        )
        with engine.connect() as connection:
            found: dict[tuple[str, str], dict[str, Any]] = {}
            for row in connection.execute(query):
                found.setdefault(
                    (row.model_version, row.signal),
                    {
                        "version": row.model_version,
                        "signal": row.signal,
                        "ratio": float(row.statistic) / float(row.threshold or 1.0),
                        "alarm": bool(row.alarm),
                    },
                )
        return list(found.values())
    finally:
        engine.dispose()


def read_log(url: str, model_name: str, attempts: int = 3) -> pd.DataFrame:
    """The prediction log's rows for `model_name` (an absent log: empty), with retries."""
    from sqlalchemy import MetaData, create_engine, inspect, select

    from loopline.online.predlog import predictions_table

    columns = ["model_version", "key", "origin", "inputs", "output", "logged_at"]
    for attempt in range(attempts):
        engine = create_engine(url)
        try:
            if not inspect(engine).has_table("predictions"):
                return pd.DataFrame(columns=columns)
            t = predictions_table(MetaData())
            query = (
                select(*(t.c[c] for c in columns))
                .where(t.c.model_name == model_name)
                .order_by(t.c.id)
            )
            with engine.connect() as connection:
                return pd.DataFrame(
                    [dict(r._mapping) for r in connection.execute(query)], columns=columns
                )
        except Exception as error:
            if attempt == attempts - 1:
                raise
            log.warning("prediction log: %s; retrying", type(error).__name__)
            time.sleep(0.5 * (attempt + 1))
        finally:
            engine.dispose()
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------- one pass


@dataclass(frozen=True)
class Version:
    """What the monitor needs of one model version: its spec, its profile (None when it
    was published without one) and its registered test figure (for live quality then)."""

    spec: Any
    profile: ReferenceProfile | None
    figure: float | None = None


@dataclass
class PassResult:
    """One pass: every row it added to the monitoring table, the alarms among them, and
    what it could not test and why."""

    model_name: str
    pass_id: str
    rows: int  # predictions read
    windows: list[dict[str, Any]] = field(default_factory=list)
    alarms: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for group in ("windows", "alarms"):
            for row in out[group]:
                for key in ("window_start", "window_end", "computed_at"):
                    if isinstance(row.get(key), datetime | pd.Timestamp):
                        row[key] = pd.Timestamp(row[key]).isoformat()
        return out

    @property
    def alarm(self) -> bool:
        return bool(self.alarms)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


def event_times(records: pd.DataFrame) -> pd.Series:
    """A prediction's event time: its origin (a forecast), else when it was logged. The
    columns may hold datetimes (the log's rows) or ISO text (the operator page's)."""
    origin = pd.to_datetime(records["origin"], utc=True, errors="coerce", format="ISO8601")
    logged = pd.to_datetime(records["logged_at"], utc=True, errors="coerce", format="ISO8601")
    return origin.fillna(logged)


@dataclass
class _Live:
    """One version's live columns, each with the event time its windows are cut by."""

    features: pd.DataFrame
    outputs: pd.DataFrame
    losses: pd.DataFrame  # columns loss, event_time
    truth_until: pd.Timestamp | None


def stored_rows(url: str, task: Any) -> pd.DataFrame | None:
    """The raw rows the service stored as training data (the `live_inputs` table: its
    `fields` JSON per row, by task), or None when there is no such table or no row."""
    from sqlalchemy import MetaData, Table, create_engine, inspect, select

    engine = create_engine(url)
    try:
        if not inspect(engine).has_table("live_inputs"):
            return None
        table = Table("live_inputs", MetaData(), autoload_with=engine)
        query = select(table.c.fields).where(table.c.task == task.name).order_by(table.c.id)
        with engine.connect() as connection:
            rows = [r.fields for r in connection.execute(query)]
    finally:
        engine.dispose()
    if not rows:
        return None
    frame = pd.DataFrame.from_records(rows)
    if task.time_column and task.time_column in frame:
        frame[task.time_column] = pd.to_datetime(frame[task.time_column], utc=True, errors="coerce")
    return frame


def _live(
    task: Any,
    records: pd.DataFrame,
    spec: Any,
    labels: pd.DataFrame,
    stored: pd.DataFrame | None = None,
) -> _Live:
    times = event_times(records).reset_index(drop=True)
    records = records.reset_index(drop=True)
    # The rows the service stored (every reading) where there are any and they carry
    # their own time; else the rows the log's records stand for.
    own_time = stored is not None and task.time_column in stored.columns
    rows = stored if own_time else task.logged_rows(records, spec)
    features = task.monitor_inputs(rows, spec) if len(rows) else pd.DataFrame()
    if len(features) and features[EVENT_TIME].isna().all() and len(features) == len(records):
        features[EVENT_TIME] = times.to_numpy()
    outputs = task.monitor_outputs(list(records["output"]), spec).reset_index(drop=True)
    outputs[EVENT_TIME] = times.to_numpy()
    predictions = records[["key", "origin", "output"]]
    losses = pd.DataFrame(
        {
            "loss": np.asarray(task.live_losses(predictions, rows, labels, spec), np.float64),
            EVENT_TIME: times,
        }
    )
    bias = task.live_bias(predictions, rows, labels, spec)
    if bias is not None:
        losses["error"], losses["scale"] = np.asarray(bias, np.float64).T
    until = None
    if len(features) and features[EVENT_TIME].notna().any():
        until = _utc(features[EVENT_TIME].max())
    return _Live(features, outputs, losses, until)


def run_pass(
    task: Any,
    model_name: str,
    records: pd.DataFrame,
    versions: Callable[[str], Version],
    settings: Any,
    store: MonitoringStore,
    seed: int = 42,
    labels: pd.DataFrame | None = None,
    now: datetime | None = None,
    stored: pd.DataFrame | None = None,
) -> PassResult:
    """Test every complete window not yet in the monitoring table, per model version, and
    record them there (`settings`: the `monitor` params section).

    A window is complete once the log holds a prediction after its end; its live quality
    once its truth can be complete too (`Task.truth_delay` after its end; labels: any
    time), and windows wait for it without moving the watermark. `stored`: the raw rows
    the service stored (`stored_rows`), read instead of the log's own where they carry time.
    """
    started = time.perf_counter()
    result = PassResult(model_name, uuid.uuid4().hex[:12], len(records))
    labels = labels if labels is not None else pd.DataFrame(columns=["id", "label"])
    computed_at = now or datetime.now(UTC)
    if records.empty:
        result.note(f"the prediction log holds no prediction of {model_name}: nothing to test")
        return result
    span = pd.Timedelta(settings.window)
    latest = event_times(records).max()
    for version, group in records.groupby("model_version", sort=True):
        info = versions(str(version))
        live = _live(task, group, info.spec, labels, stored)
        check = _Check(task, model_name, str(version), info, live, settings, store, result)
        check.calibrator = (
            Calibrator(info.profile, settings.calibration_draws, seed)
            if (info.profile is not None)
            else None
        )
        check.computed_at = computed_at
        for signal in SIGNALS:
            check.signal(signal, span, latest)
    result.seconds = time.perf_counter() - started
    return result


def _windows(times: pd.Series, span: pd.Timedelta) -> pd.Series:
    epoch = pd.Timestamp(0, tz="UTC")
    return epoch + ((times - epoch) // span) * span


@dataclass
class _Check:
    task: Any
    model_name: str
    version: str
    info: Version
    live: _Live
    settings: Any
    store: MonitoringStore
    result: PassResult
    calibrator: Calibrator | None = None
    computed_at: datetime | None = None
    pending: list[dict[str, Any]] = field(default_factory=list)  # a test's column rows

    def signal(self, signal: str, span: pd.Timedelta, latest: pd.Timestamp) -> None:
        frame, columns = self._inputs(signal)
        if frame is None:
            return
        times = pd.to_datetime(frame[EVENT_TIME], utc=True)
        frame = frame[times.notna()]
        starts = _windows(times[times.notna()], span)
        watermark, streak = self.store.last(self.model_name, self.version, signal)
        ready_until = latest
        if signal == "live_quality":
            delay = self.task.truth_delay(self.info.spec)
            if delay is not None:
                truth = self.live.truth_until
                ready_until = min(latest, truth - delay) if truth is not None else None
        rows = []
        for start, window in frame.groupby(starts.to_numpy(), sort=True):
            start = pd.Timestamp(start)
            end = start + span
            if watermark is not None and start <= watermark:
                continue
            if ready_until is None or end > ready_until:
                break  # not complete yet: a later pass tests it
            tested, exceeded, summary = self._test(signal, columns, window, start, end, rows)
            rows += self.pending
            self.pending = []
            if tested:
                streak = streak + 1 if exceeded else 0
            alarm = bool(tested and exceeded and streak >= self.settings.min_windows)
            alarm = alarm and signal in self.settings.signals
            summary.update(streak=streak, alarm=alarm, exceeded=bool(exceeded))
            rows.append(summary)
            if alarm:
                self.result.alarms.append(summary)
        small = sum(r["feature"] == SUMMARY and r["note"] in SMALL for r in rows)
        if small:
            self.result.note(
                f"v{self.version} {signal}: {small} window(s) with fewer than min_rows="
                f"{self.settings.min_rows} rows: recorded, not tested"
            )
        self.store.add(rows)
        self.result.windows.extend(rows)

    def _inputs(self, signal: str) -> tuple[pd.DataFrame | None, dict[str, Column]]:
        profile = self.info.profile
        if signal == "live_quality":
            losses = self.live.losses
            if not np.isfinite(losses["loss"]).any():
                self.result.note(
                    f"v{self.version}: no ground truth joins the predictions yet: live quality "
                    "not tested"
                )
                return None, {}
            if profile is None or profile.quality is None:
                if self.info.figure is None:
                    self.result.note(f"v{self.version}: no test figure to compare live quality")
                    return None, {}
                self.result.note(
                    f"v{self.version} has no reference profile (published before profiles): "
                    f"live quality only, against its registered figure x{NO_PROFILE_RATIO}"
                )
            return losses, {}
        if profile is None:
            self.result.note(f"v{self.version} has no reference profile: no drift tested")
            return None, {}
        frame = self.live.features if signal == "feature_drift" else self.live.outputs
        reference = profile.features if signal == "feature_drift" else profile.predictions
        present = {n: c for n, c in reference.items() if n in frame.columns and len(c.values)}
        missing = sorted(set(reference) - set(present))
        if missing:
            self.result.note(
                f"v{self.version}: the log lacks {missing}, which the reference names: "
                f"{signal} tests the others"
            )
        if not present or EVENT_TIME not in frame.columns:
            return None, {}
        return frame, present

    def _row(self, signal: str, feature: str, start, end, n: int, **more: Any) -> dict:
        return {
            "model_name": self.model_name,
            "model_version": self.version,
            "signal": signal,
            "feature": feature,
            "window_start": start.to_pydatetime(),
            "window_end": end.to_pydatetime(),
            "rows": int(n),
            "statistic": more.get("statistic"),
            "threshold": more.get("threshold"),
            "exceeded": bool(more.get("exceeded", False)),
            "streak": 0,
            "alarm": False,
            "note": more.get("note"),
            "pass_id": self.result.pass_id,
            "computed_at": self.computed_at,
        }

    def _fixed(self, signal: str, feature: str | None = None) -> float | None:
        fixed = self.settings.thresholds
        if feature is not None and f"{signal}.{feature}" in fixed:
            return float(fixed[f"{signal}.{feature}"])
        return float(fixed[signal]) if signal in fixed else None

    def _test(self, signal, columns, window, start, end, rows) -> tuple[bool, bool, dict]:
        if signal == "live_quality":
            return self._quality(window, start, end)
        tested: dict[str, tuple[float, int]] = {}  # name: (statistic, rows it was taken on)
        for name, column in columns.items():
            values = window[name].dropna().to_numpy()
            if column.kind == "numeric":
                values = values.astype(np.float64)
                values = values[np.isfinite(values)]
            if len(values) < self.settings.min_rows:
                rows.append(self._row(signal, name, start, end, len(values), note="too small"))
                continue
            n = calibration_size(min(len(values), max(2, len(column.values) // 2)))
            if n < len(values):  # a sample of the window, of a size calibrated once
                pick = np.random.default_rng(len(values)).choice(len(values), n, replace=False)
                values = values[np.sort(pick)]
            prepared = self.calibrator.prepared(signal, name, column)
            if column.kind == "numeric":
                tested[name] = (ks_statistic(prepared[1], values), n)
            else:
                tested[name] = (prepared.statistic(prepared.encode(values)), n)
        # The columns without a fixed threshold are calibrated together: a clean window
        # crosses any of theirs with probability false_alarm_rate.
        fixed = {name: self._fixed(signal, name) for name in tested}
        calibrated = {
            name: (columns[name], size) for name, (_, size) in tested.items() if fixed[name] is None
        }
        if calibrated:
            alpha = self.settings.false_alarm_rate
            fixed.update(self.calibrator.drift_thresholds(signal, calibrated, alpha))
        worst, exceeded = None, False
        for name, (statistic, n) in tested.items():
            threshold = fixed[name]
            over = statistic > threshold
            exceeded = exceeded or over
            ratio = statistic / threshold if threshold > 0 else np.inf
            worst = ratio if worst is None else max(worst, ratio)
            rows.append(
                self._row(
                    signal,
                    name,
                    start,
                    end,
                    n,
                    statistic=statistic,
                    threshold=threshold,
                    exceeded=over,
                )
            )
        note = None if tested else "too small"
        # The signal's row: its worst column's statistic over threshold (1 = at threshold).
        summary = self._row(
            signal, SUMMARY, start, end, len(window), statistic=worst, threshold=1.0, note=note
        )
        return bool(tested), exceeded, summary

    def _quality(self, window, start, end) -> tuple[bool, bool, dict]:
        """The window's figure over the test figure and, where errors have a direction,
        its relative bias; against thresholds calibrated together (a clean window crosses
        either with probability false_alarm_rate), at the largest calibrated size at or
        below the window's (a smaller window varies more: no more false alarms)."""
        losses = window["loss"].to_numpy(dtype=np.float64)
        losses = losses[np.isfinite(losses)]
        n = len(losses)
        signal = "live_quality"
        if n < self.settings.min_rows:
            return False, False, self._row(signal, SUMMARY, start, end, n, note="too few truths")
        figure = self.task.quality_figure
        profile = self.info.profile
        quality = profile.quality if profile is not None else None
        pairs = None
        if quality is not None and quality.bias and "error" in window:
            pairs = np.asarray(quality.bias, dtype=np.float64)
        alpha = self.settings.false_alarm_rate
        both = None
        if pairs is not None:
            both = window[["error", "scale"]].to_numpy(dtype=np.float64)
            both = both[np.isfinite(both).all(axis=1)]
            if len(both) < self.settings.min_rows:
                pairs = both = None
        limit = None
        if quality is not None:
            reference = np.asarray(quality.losses, dtype=np.float64)
            whole = quality.figure
            threshold = self._fixed(signal, "figure") or self._fixed(signal)
            if pairs is not None:
                limit = self._fixed(signal, "bias")
            if threshold is None or (pairs is not None and limit is None):
                found = self.calibrator.quality_thresholds(
                    reference,
                    figure,
                    calibration_size(min(n, max(2, len(reference) // 2))),
                    alpha,
                    pairs if limit is None else None,
                    calibration_size(min(len(both), max(2, len(pairs) // 2)))
                    if pairs is not None
                    else 0,
                )
                threshold = found[0] if threshold is None else threshold
                limit = found[1] if limit is None else limit
            note = f"{quality.name} {float(figure(losses)):.4g} vs test {whole:.4g}"
        else:
            whole = float(self.info.figure)
            threshold = self._fixed(signal) or NO_PROFILE_RATIO
            note = f"live {float(figure(losses)):.4g} vs registered {whole:.4g} (no profile)"
        statistic = float(figure(losses)) / whole if whole > 0 else np.inf
        over = bool(statistic > threshold)
        rows = [(statistic, threshold, over)]
        if pairs is not None and limit is not None:
            bias = float(relative_bias(both[:, 0], both[:, 1]))
            rows.append((bias, limit, bias > limit))
            note += f"; relative bias {bias:.3f}"
        self.pending = [
            self._row(
                signal, name, start, end, n, statistic=float(s), threshold=t, exceeded=bool(o)
            )
            for name, (s, t, o) in zip(("figure", "bias"), rows, strict=False)
        ]
        over = any(o for _, _, o in rows)
        worst = max(s / t if t > 0 else np.inf for s, t, _ in rows)
        summary = self._row(
            signal, SUMMARY, start, end, n, statistic=float(worst), threshold=1.0, note=note
        )
        return True, over, summary


# ---------------------------------------------------------------------- report and tracking


def plot_pass(rows: pd.DataFrame, path: Path) -> Path:
    """Each signal's statistic over its threshold per window (1: at the threshold), alarms
    marked: the picture a person opens at 2 a.m."""
    from loopline.plots import new_figure, save_figure

    fig, ax = new_figure((9, 4))
    summary = rows[rows["feature"] == SUMMARY] if len(rows) else pd.DataFrame()
    groups = summary.groupby(["signal", "model_version"]) if len(summary) else []
    for (signal, version), group in groups:
        ratio = group["statistic"].astype(float) / group["threshold"].astype(float)
        starts = pd.to_datetime(group["window_start"], utc=True)
        ax.plot(starts, ratio, marker=".", label=f"{signal} v{version}")
        alarms = group["alarm"].astype(bool).to_numpy()
        if alarms.any():
            ax.scatter(starts[alarms], ratio[alarms], color="red", zorder=3, s=40)
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_ylabel("statistic / threshold")
    ax.set_title("Monitor: each window against its calibrated threshold (red: alarm)")
    fig.autofmt_xdate()
    return save_figure(fig, ax, path)


def report_html(result: PassResult, picture: Path, path: Path) -> Path:
    """One HTML page: the alarms, the notes, the picture and every window's signal rows."""
    import html

    rows = pd.DataFrame(result.windows)
    summary = rows[rows["feature"] == SUMMARY] if len(rows) else rows
    image = base64.b64encode(picture.read_bytes()).decode() if picture.exists() else ""
    alarms = "".join(
        f"<li>{html.escape(a['signal'])} v{a['model_version']}: window "
        f"{pd.Timestamp(a['window_start']).isoformat()} ({html.escape(str(a['note'] or ''))})"
        "</li>"
        for a in result.alarms
    )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in result.notes)
    table = summary.to_html(index=False, float_format=lambda v: f"{v:.4g}") if len(rows) else ""
    path.write_text(
        f"<html><head><meta charset='utf-8'><title>Loopline monitor: {result.model_name}"
        f"</title></head><body><h1>Monitor pass {result.pass_id}: {result.model_name}</h1>"
        f"<p>{result.rows} predictions read; {len(summary)} windows tested or passed; "
        f"{len(result.alarms)} alarms</p><h2>Alarms</h2><ul>{alarms or '<li>none</li>'}</ul>"
        f"<h2>Notes</h2><ul>{notes or '<li>none</li>'}</ul>"
        f"<img src='data:image/png;base64,{image}'/><h2>Windows</h2>{table}</body></html>",
        encoding="utf-8",
    )
    return path


def write_report(result: PassResult, folder: Path) -> list[Path]:
    """The pass as `monitor.json`, `monitor.png` and `monitor.html` in `folder`."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "monitor.json"
    data.write_text(json.dumps(result.to_dict(), indent=1, default=str))
    picture = plot_pass(pd.DataFrame(result.windows), folder / "monitor.png")
    return [data, picture, report_html(result, picture, folder / "monitor.html")]


def pass_metrics(result: PassResult) -> dict[str, float]:
    """What MLflow charts of a pass: windows tested, alarms, each signal's worst ratio."""
    rows = pd.DataFrame(result.windows)
    out = {"monitor_predictions": float(result.rows), "monitor_alarms": float(len(result.alarms))}
    if rows.empty:
        return out
    summary = rows[rows["feature"] == SUMMARY]
    out["monitor_windows"] = float(len(summary))
    for signal, group in summary.groupby("signal"):
        ratio = (group["statistic"].astype(float) / group["threshold"].astype(float)).dropna()
        if len(ratio):
            out[f"monitor_{signal}_max_ratio"] = float(ratio.max())
    return out


def record_pass(tracker: Any, result: PassResult, folder: Path) -> list[Path]:
    """One MLflow run per pass: its metrics, tags (alarm, signals) and report files."""
    files = write_report(result, folder)
    tracker.log_metrics(pass_metrics(result))
    signals = sorted({a["signal"] for a in result.alarms})
    tracker.set_tags(
        {
            "loopline.monitor.pass_id": result.pass_id,
            "loopline.monitor.alarm": str(result.alarm).lower(),
            "loopline.monitor.alarm_signals": ",".join(signals),
        }
    )
    for path in files:
        tracker.log_file(path, "monitor")
    return files


# ---------------------------------------------------------------------- the project's pass


def load_version(tracking_uri: str, name: str, version: str, task: Any, dest: Path) -> Version:
    """A registered version's spec, reference profile (None if it has none) and test figure."""
    from loopline import registry
    from loopline.offline.features import FeatureSpec
    from loopline.offline.publishing import tagged_metrics

    folder = registry.download_model(
        tracking_uri, f"models:/{name}/{version}", dest / f"v{version}"
    )
    files = folder / "extra_files"
    spec = FeatureSpec.from_json((files / "feature_spec.json").read_text(), task)
    tags = registry.client(tracking_uri).get_model_version(name, str(version)).tags or {}
    metrics = tagged_metrics(tags)
    return Version(spec, ReferenceProfile.read(files), task.quality_from_metrics(metrics))


def monitor_project(params: Any, paths: Any, model: str | None = None) -> tuple[PassResult, str]:
    """One monitoring pass of the project's served model: read the prediction log and
    people's labels, test what is new, record it in the monitoring table and as one MLflow
    run with its report. Returns (the pass, the MLflow run id)."""
    import tempfile

    from loopline.offline.batch import human_labels
    from loopline.offline.tracking import RunTracker

    settings = params.monitor
    name = model or params.serve.model or params.model_name
    url = paths.prediction_log_url(params)
    tracking_uri = paths.tracking_uri()
    store = MonitoringStore(url)
    with tempfile.TemporaryDirectory(prefix="loopline-monitor-") as scratch:
        cache: dict[str, Version] = {}

        def versions(version: str) -> Version:
            if version not in cache:
                cache[version] = load_version(
                    tracking_uri, name, version, params.plugin, Path(scratch)
                )
            return cache[version]

        try:
            result = run_pass(
                params.plugin,
                name,
                read_log(url, name),
                versions,
                settings,
                store,
                seed=params.seed,
                labels=human_labels(params, paths),
                stored=stored_rows(url, params.plugin),
            )
        finally:
            store.close()
        tracker = RunTracker.start(
            tracking_uri,
            f"{params.experiment_name}-monitor",
            paths.local_artifact_root(),
            "monitor",
            {"loopline.kind": "monitor", "loopline.model": name},
        )
        try:
            record_pass(tracker, result, Path(scratch) / "report")
        finally:
            tracker.end()
    return result, tracker.run_id


# ---------------------------------------------------------------------- alarm -> retrain

RETRAIN = "retrain"  # the `signal` of the monitoring table's row for a requested retrain


@dataclass(frozen=True)
class RetrainDecision:
    """Whether a pass's alarms start the offline deployment, and why (or why not)."""

    start: bool
    reason: str


def describe_alarms(alarms: list[dict[str, Any]]) -> str:
    """A pass's alarms in words, one phrase per signal and version: since which window,
    for how many windows, and the latest statistic against its threshold."""
    phrases = []
    for (signal, version), group in pd.DataFrame(alarms).groupby(
        ["signal", "model_version"], sort=False
    ):
        since = pd.Timestamp(group["window_start"].min()).strftime("%Y-%m-%d %H:%M")
        last = group.sort_values("window_start").iloc[-1]
        figure = ""
        if pd.notna(last.get("statistic")) and pd.notna(last.get("threshold")):
            figure = f", latest {last['statistic']:.3g} > {last['threshold']:.3g}"
        phrases.append(
            f"{signal} of v{version} since the window from {since} UTC "
            f"({int(last['streak'])} window(s) over its threshold{figure})"
        )
    return "; ".join(phrases)


def retrain_decision(
    result: PassResult, store: MonitoringStore, cooldown_h: float, now: datetime | None = None
) -> RetrainDecision:
    """Start a retrain for this pass's alarms unless one was requested within `cooldown_h`
    (an alarm that persists while its retrain runs must not start another). A started one
    is recorded in the monitoring table first: a crash after that skips a run rather than
    starting two."""
    if not result.alarms:
        return RetrainDecision(False, "no alarm")
    now = pd.Timestamp(now or datetime.now(UTC))
    reason = f"monitoring alarm: {describe_alarms(result.alarms)}"
    last = store.last_retrain(result.model_name)
    if last is not None and now - last < pd.Timedelta(hours=cooldown_h):
        until = (last + pd.Timedelta(hours=cooldown_h)).isoformat()
        return RetrainDecision(
            False,
            f"{reason}; not retraining: one was started at {last.isoformat()} "
            f"(monitor.cooldown_h {cooldown_h:g}: the next not before {until})",
        )
    version = str(result.alarms[0]["model_version"])
    store.add([_retrain_row(result, version, reason, now)])
    return RetrainDecision(True, reason)


def _retrain_row(result: PassResult, version: str, reason: str, now: pd.Timestamp) -> dict:
    return {
        "model_name": result.model_name,
        "model_version": version,
        "signal": RETRAIN,
        "feature": SUMMARY,
        "window_start": now.to_pydatetime(),
        "window_end": now.to_pydatetime(),
        "rows": 0,
        "statistic": None,
        "threshold": None,
        "exceeded": True,
        "streak": 0,
        "alarm": True,
        "note": reason[:500],
        "pass_id": result.pass_id,
        "computed_at": now.to_pydatetime(),
    }


def request_retrain(params: Any, paths: Any, result: PassResult) -> RetrainDecision:
    """`retrain_decision` for a project's pass, on its monitoring table."""
    store = MonitoringStore(paths.prediction_log_url(params))
    try:
        return retrain_decision(result, store, params.monitor.cooldown_h)
    finally:
        store.close()
