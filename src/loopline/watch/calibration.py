"""The monitor's calibrated thresholds: for each signal of a profile, the threshold per
column that a clean period of live data crosses with a chosen probability, found by
resampling periods of the reference (see `Calibrator`).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

from loopline.offline.reference import Column, ReferenceProfile
from loopline.watch.statistics import (
    Categories,
    correlation_range,
    dependence_series,
    dependent_at,
    distinct_slots,
    effective_size,
    ks_statistics,
    relative_bias,
    rest_figures,
)


class Calibrator:
    """Calibrated thresholds of one profile: per signal, one threshold per column, such
    that a clean period of the live period's size crosses any of them with probability at
    most `alpha` (cached by signal, columns, period sizes and alpha).

    Clean periods are drawn from the reference in its event-time order (a moving block
    bootstrap): a drawn period of n rows is made of blocks of contiguous rows. Where a
    column's rows depend on each other at the period's scale (`dependent_at`), a block is
    the whole period (a contiguous period of the reference, starting anywhere); else
    twice how far its autocorrelation reaches (`correlation_range`: Politis and White's
    m-hat; single rows where the order says nothing). So what a day of hourly readings,
    or of texts about the same product, has in common counts as normal. A draw never takes
    a row twice, and its statistic is taken against the rest of the reference (the
    period left out), as a live period's is against a reference it is not part of.

    The columns of a signal are calibrated together (max-T, Westfall and Young): each
    draw takes the same rows of every column, each column's statistic is standardised by
    its own tail (z = (s - u) / sigma: u its 1 - p0 quantile, sigma the mean excess over
    u), and z* is the 1 - alpha quantile of the largest z; column c's threshold is u +
    sigma z*. Correlated columns (irradiance and power) cost no power then, as a
    Bonferroni split of alpha over the columns does.

    A reference holds few independent periods: a year of daily periods, fewer still
    where neighbouring days are alike (`effective_size` of the disjoint periods' largest
    z). Where alpha times their number is under `TAIL_PERIODS`, the quantile is not read
    off the draws (a new period would cross it about once in their number whatever
    alpha is: several times alpha per signal on a year of daily periods): the largest z's
    tail over its 1 - p0 quantile (p0 = TAIL_PERIODS / their number) is taken as
    exponential (a peaks-over-threshold fit; the KS statistic's tail is lighter, so this
    errs high) and extrapolated to alpha, its scale's estimation error included. The aim
    is `AIM` x alpha."""

    TAIL_PERIODS = 10  # independent periods beyond the quantile read off the draws
    # Thresholds aim at this share of alpha: the rate a threshold estimated from a finite
    # reference (a few hundred independent periods at most) gives scatters around its
    # aim by about as much as the aim itself, so aiming at alpha would exceed it about
    # every other reference; aiming at half keeps it at or under alpha.
    AIM = 0.5
    # A period under this share of the test losses moves the figure it is compared with
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
        """The block length for periods of n rows of a reference series: n (whole
        periods) where its rows depend on each other at that scale (`dependent_at`), else
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
        # The same columns, sizes and seed draw the same reference periods in every pass.
        return np.random.default_rng([self.seed, *(zlib.crc32(str(k).encode()) for k in key)])

    @staticmethod
    def _lengths(parts: list[tuple[int, int, int]]) -> list[tuple[int, int]]:
        """Per part (rows, period size n, its block length): (block length, blocks per
        period), the length shared (the longest any part needs), at most n; whole
        periods where a period's blocks would not fit in distinct slots of every part."""
        longest = max(block for _, _, block in parts)
        slots = min(rows // longest for rows, _, _ in parts)
        if any(-(-n // min(longest, n)) > slots for _, n, _ in parts):
            longest = max(n for _, n, _ in parts)
        return [(min(longest, n), -(-n // min(longest, n))) for _, n, _ in parts]

    def _draw(self, key: tuple, parts: list[tuple[int, int, int]]) -> list[np.ndarray]:
        """Per part (rows of its reference, period size n, block length), the row indices
        of `draws` periods (draws, n), the same relative places in every part. A whole
        period starts anywhere (circular); blocks of a period are distinct slots of the
        parts' grid of blocks, shifted together, so that no row is drawn twice (the rest
        of the reference is what a drawn period is compared with). Where every draw is a
        whole period, the reference's disjoint periods in order follow (`_thresholds`
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
        """About how many independent periods the draws stand for, before the periods'
        own dependence (`_thresholds`): the reference's disjoint periods when a draw is
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
        disjoint periods in order if any), its threshold: max-T over the columns, each
        standardised by its tail; the largest z's 1 - alpha quantile read off the draws
        or, with too few independent periods, extrapolated (exponential tail)."""
        draws, disjoint = stats[: self.draws], stats[self.draws :]
        alpha = alpha * self.AIM

        def tails(p0: float) -> tuple[np.ndarray, np.ndarray]:
            u = np.quantile(draws, 1 - p0, axis=0)
            over = draws > u
            sigma = np.where(over, draws - u, 0.0).sum(axis=0) / np.maximum(over.sum(axis=0), 1)
            return u, np.maximum(sigma, 1e-9 * np.maximum(np.abs(u), 1.0))

        u, sigma = tails(float(np.clip(self.TAIL_PERIODS / independent, 0.05, 0.5)))
        if len(disjoint) > 1:
            # Whole periods: neighbours alike (a week of one weather, a season) are fewer
            # independent periods than there are periods.
            series = np.max((disjoint - u) / sigma, axis=1)
            independent = min(independent, effective_size(series))
        p0 = float(np.clip(self.TAIL_PERIODS / independent, 0.05, 0.5))
        u, sigma = tails(p0)
        largest = np.max((draws - u) / sigma, axis=1)
        if alpha * independent >= self.TAIL_PERIODS:
            z = float(np.quantile(largest, 1 - alpha, method="higher"))
        else:
            top = float(np.quantile(largest, 1 - p0))
            over = largest[largest > top] - top
            # An exponential tail with its scale estimated from m independent excesses:
            # a new period's excess has the predictive tail (1 + y / (m scale))^-m, wider
            # than exp(-y / scale) by the scale's own error.
            m = max(1.0, p0 * independent)
            spread = m * ((p0 / alpha) ** (1 / m) - 1)
            z = top + (float(over.mean()) if len(over) else 0.0) * spread
        return u + sigma * z

    def drift_thresholds(
        self, group: str, columns: dict[str, tuple[Column, int]], alpha: float
    ) -> dict[str, float]:
        """Thresholds of a signal's columns ({name: (reference column, period size)}) such
        that a clean period crosses any with probability `alpha`."""
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
        """(the threshold of a period's figure over the whole test figure, of its relative
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
            if n >= self.LEAVE_OUT * len(losses):  # a period's share of the test figure
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
