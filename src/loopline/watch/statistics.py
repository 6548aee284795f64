"""The monitor's statistics: two-sample tests of a period of live values against a
reference (Kolmogorov-Smirnov for numbers, chi-square for categories), and what tells how
far a reference's rows depend on each other (its autocorrelation's reach, a variance
ratio, an effective size), which the calibration (`loopline.watch.calibration`) needs.
Pure numpy: no I/O, no state.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


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
    """Pearson's chi-square of a period's category counts against the reference's shares
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
    """The period size thresholds are calibrated at: the largest of 2^(k/8) at or below
    `n` (periods of 293 or 300 rows share one calibration; a period is sampled down to
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
    runs = np.convolve(small.astype(int), np.ones(run, dtype=int), mode="valid")
    found = np.flatnonzero(runs[: longest + 1] == run)
    return int(found[0]) if len(found) else longest


def dependent_at(values: np.ndarray, n: int) -> bool:
    """Whether a series' rows depend on each other at the scale of a period of n rows:
    the variance of its moving sums of n over n times its variance (Lo and MacKinlay's
    variance ratio, 1 for iid rows) above 1 by 2.33 of its iid standard deviation
    sqrt(2 (2n - 1)(n - 1) / (3 n N)). Weak correlation that lasts (a ten-row cluster of
    a few percent each) passes every single lag's test yet makes periods vary several
    times more than iid rows would; this sees it. (rows, k) columns: any of them."""
    x = np.asarray(values, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    rows = len(x)
    if n < 2:
        return False
    if rows < 2 * n:
        return True  # too short to tell: drawn as whole periods
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
