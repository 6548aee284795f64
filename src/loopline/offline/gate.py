"""The paired gate: is the candidate significantly better than the champion on the same rows?

A point comparison promotes a candidate that wins by noise (0.0004 accuracy on 15,400 rows).
The paired gate compares candidate and champion row by row with a test that fits the metric:

- errors (RMSE, MAE): Diebold–Mariano on the per-row loss differential. With rows that
  stand alone it is the paired t-test (Harvey–Leybourne–Newbold form, t with n - 1 degrees
  of freedom). Where h > 1 neighbouring rows may share targets (`overlap`, from
  `Task.loss_dependence`: say, overlapping multi-step predictions), the differential is
  autocorrelated over about h - 1 lags; its long-run variance is then the equal-weighted
  cosine (EWC) estimate over nu = floor(n / 4h) (at most 0.4 n^(2/3)) cosine projections,
  read against Student's t with nu degrees of freedom (fixed-smoothing asymptotics: Lazarus,
  Lewis, Stock & Watson 2018, "HAR inference: recommendations for practice", JBES 36(4);
  for Diebold–Mariano, Coroneo & Iacone 2020, "Comparing predictive accuracy in small
  samples using fixed-smoothing asymptotics", JAE 35(4)). The former Bartlett variance over
  h - 1 lags with the HLN correction under-estimates that variance by a third for rows
  that share all their targets: it promoted 9-12 % of equal models at alpha 0.05
  (`tests/unit/test_gate_rates.py`; 8.5 % in `benchmarks/gate.py`), this one 5.0-5.5 % in
  that worst case and 4.8 % on the benchmark's multi-step family;
- accuracy: exact McNemar, a binomial test on the discordant rows (one model right, the other
  wrong);
- any other metric (F1, log loss): a paired bootstrap of the metric difference.

Every test is one-sided (H1: the candidate is better) at `alpha`. The paired bootstrap
interval of the metric difference (candidate - champion, seeded) is reported beside every
test: a two-sided 1 - 2*alpha interval, so its bound on the winning side is the one-sided
1 - alpha bound. It resamples rows independently, so for rows that share targets it is
narrower than the truth: the Diebold–Mariano test, not the interval, decides there.

Pure functions of arrays; `evaluate.should_promote` calls `paired_test`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

DIEBOLD_MARIANO = "diebold-mariano"
MCNEMAR = "mcnemar"
BOOTSTRAP = "bootstrap"
TAG = "loopline.gate."


@dataclass(frozen=True)
class RowErrors:
    """A regressor's errors per test row, each the mean over the row's outputs: RMSE is
    sqrt(mean(squared)), MAE is mean(absolute). `overlap`: how many neighbouring rows may
    share targets (1: none), the lag structure of the Diebold–Mariano test."""

    squared: np.ndarray
    absolute: np.ndarray
    overlap: int = 1

    @classmethod
    def of(cls, error: np.ndarray, overlap: int = 1) -> RowErrors:
        """From errors shaped (rows, outputs)."""
        error = np.asarray(error, dtype=np.float64)
        return cls((error**2).mean(axis=1), np.abs(error).mean(axis=1), int(overlap))

    def __len__(self) -> int:
        return len(self.squared)


@dataclass(frozen=True)
class RowOutcomes:
    """A classifier's answer per test row: the true and predicted class and the row's log
    loss, over `classes` classes."""

    labels: np.ndarray
    predicted: np.ndarray
    log_loss: np.ndarray
    classes: int

    @property
    def correct(self) -> np.ndarray:
        return (self.labels == self.predicted).astype(np.float64)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Paired:
    """How the paired gate runs: its level, the bootstrap's seed and resamples."""

    alpha: float = 0.05
    seed: int = 0
    resamples: int = 1999


@dataclass(frozen=True)
class GateTest:
    """One paired comparison of candidate and champion on the same rows.

    `difference` is the metric's candidate - champion; `interval` its paired bootstrap
    interval (two-sided, 1 - 2*alpha); `p_value` is one-sided (H1: the candidate is better);
    `better` whether it is below `alpha`.
    """

    method: str
    statistic: float
    p_value: float
    interval: tuple[float, float]
    alpha: float
    difference: float
    rows: int

    @property
    def better(self) -> bool:
        return bool(self.p_value < self.alpha)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        level = round(100 * (1 - 2 * self.alpha))
        return (
            f"{self.method} statistic {self.statistic:.4g}, one-sided p {self.p_value:.3g} "
            f"(alpha {self.alpha:g}); difference {self.difference:+.4g}, {level}% interval "
            f"[{self.interval[0]:+.4g}, {self.interval[1]:+.4g}] on {self.rows} rows"
        )

    def tracking(self) -> tuple[dict[str, float], dict[str, str]]:
        """MLflow metrics and tags (`loopline.gate.*`); non-finite values are left out."""
        values = {
            "statistic": self.statistic,
            "p_value": self.p_value,
            "interval_low": self.interval[0],
            "interval_high": self.interval[1],
            "alpha": self.alpha,
            "difference": self.difference,
        }
        metrics = {f"{TAG}{k}": float(v) for k, v in values.items() if np.isfinite(v)}
        return metrics, {f"{TAG}method": self.method}


# ---------------------------------------------------------------------- the tests


def dm_projections(rows: int, overlap: int) -> int:
    """Cosine projections of the Diebold–Mariano variance for `rows` rows of which `overlap`
    neighbours may share targets: the slowest floor(n / 4h), so that the fastest of them
    (at pi/4h) still sees the flat part of the spectrum of rows dependent over h - 1
    lags (the estimate's bias stays within a few per cent), at most 0.4 n^(2/3) (Lazarus et
    al. 2018), at least 1."""
    cap = int(0.4 * rows ** (2 / 3))
    return max(1, min(rows // (4 * max(int(overlap), 1)), cap))


def diebold_mariano(
    loss_candidate: np.ndarray, loss_champion: np.ndarray, overlap: int = 1
) -> tuple[float, float]:
    """One-sided Diebold–Mariano test (H1: the candidate's expected loss is lower). Returns
    (statistic, p-value); the statistic is negative when the candidate's losses are lower.
    Rows must be in time order.

    overlap 1: the paired t-test (HLN-corrected DM, t with n - 1 degrees of freedom).
    overlap h > 1: mean / sqrt(EWC long-run variance / n), t with nu = `dm_projections`
    degrees of freedom, the EWC variance being the mean square of the differential's first
    nu type-II cosine transforms, sqrt(2/n) sum_t d_t cos(pi j (t - 1/2) / n), j = 1..nu
    (Lazarus, Lewis, Stock & Watson 2018; Coroneo & Iacone 2020)."""
    from scipy.fft import dct
    from scipy.stats import t

    d = np.asarray(loss_candidate, np.float64) - np.asarray(loss_champion, np.float64)
    n, h = len(d), max(int(overlap), 1)
    if n < 2:
        raise ValueError(f"Diebold–Mariano needs at least 2 rows, got {n}")
    if n < 2 * h:  # too few rows for this much overlap: no evidence either way
        return float("nan"), 1.0
    mean = float(d.mean())
    if h == 1:
        u = d - mean
        variance, df = float(u @ u) / (n - 1), n - 1  # the paired t-test
    else:
        df = dm_projections(n, h)
        # Type-II DCT: 2 sum_t d_t cos(pi j (2t + 1) / 2n); the projections are orthogonal
        # to the constant, so the mean needs no removing.
        projections = dct(d, type=2)[1 : df + 1] * np.sqrt(2.0 / n) / 2.0
        variance = float(np.mean(projections**2))
    scale = max(float(np.abs(d).max()), 1e-300)
    if variance <= (1e-12 * scale) ** 2:  # the same loss on every row: only the sign tells
        return (0.0, 1.0) if mean >= 0 else (float("-inf"), 0.0)
    statistic = mean / np.sqrt(variance / n)
    return float(statistic), float(t.cdf(statistic, df=df))


def mcnemar(correct_candidate: np.ndarray, correct_champion: np.ndarray) -> tuple[float, float]:
    """Exact one-sided McNemar test (H1: the candidate is right more often). Returns (share
    of the discordant rows the candidate wins, p-value); (0.5, 1.0) with no discordant row."""
    from scipy.stats import binomtest

    mine = np.asarray(correct_candidate, bool)
    theirs = np.asarray(correct_champion, bool)
    wins, losses = int((mine & ~theirs).sum()), int((~mine & theirs).sum())
    if wins + losses == 0:
        return 0.5, 1.0
    result = binomtest(wins, wins + losses, 0.5, alternative="greater")
    return float(result.statistic), float(result.pvalue)


def _f1(labels, predicted, classes: int, axis: int = -1):
    """F1 of class 1 with two classes, macro F1 with more (0 for a class never seen or
    predicted, as sklearn's zero_division=0), along `axis`."""

    def one(c):
        actual, said = labels == c, predicted == c
        tp = np.sum(actual & said, axis=axis)
        wrong = np.sum(actual != said, axis=axis)
        denominator = 2 * tp + wrong
        return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)

    if classes == 2:
        return one(1)
    return np.mean([one(c) for c in range(classes)], axis=0)


def _metric_data(candidate, champion, metric: str):
    """The paired samples and the vectorized statistic (candidate - champion) of `metric`."""
    if isinstance(candidate, RowErrors):
        if metric == "rmse":
            return (
                candidate.squared,
                champion.squared,
            ), lambda a, b, axis=-1: np.sqrt(np.mean(a, axis=axis)) - np.sqrt(np.mean(b, axis=axis))
        if metric == "mae":
            data = (candidate.absolute, champion.absolute)
            return data, lambda a, b, axis=-1: np.mean(a, axis=axis) - np.mean(b, axis=axis)
    elif isinstance(candidate, RowOutcomes):
        if not np.array_equal(candidate.labels, champion.labels):
            raise ValueError("candidate and champion were scored on different labels")
        if metric == "accuracy":
            data = (candidate.correct, champion.correct)
            return data, lambda a, b, axis=-1: np.mean(a, axis=axis) - np.mean(b, axis=axis)
        if metric == "log_loss":
            data = (candidate.log_loss, champion.log_loss)
            return data, lambda a, b, axis=-1: np.mean(a, axis=axis) - np.mean(b, axis=axis)
        if metric in ("f1", "macro_f1"):
            k = candidate.classes
            return (candidate.labels, candidate.predicted, champion.predicted), (
                lambda y, a, b, axis=-1: _f1(y, a, k, axis) - _f1(y, b, k, axis)
            )
    raise ValueError(f"no paired test for metric {metric!r} on {type(candidate).__name__}")


def paired_bootstrap(
    data: tuple[np.ndarray, ...],
    statistic,
    higher_is_better: bool,
    alpha: float,
    seed: int,
    resamples: int = 1999,
) -> tuple[float, tuple[float, float], float]:
    """Percentile paired bootstrap of `statistic(*data)` (rows resampled together).

    Returns (observed value, two-sided 1 - 2*alpha interval, one-sided p-value: the share of
    resamples on the wrong side of zero, H1 being "candidate better")."""
    from scipy.stats import bootstrap

    observed = float(statistic(*data))
    n = len(data[0])
    result = bootstrap(
        data,
        statistic,
        n_resamples=resamples,
        batch=max(1, 4_000_000 // max(n, 1)),  # memory ~ batch * rows per sample
        vectorized=True,
        paired=True,
        confidence_level=1 - 2 * alpha,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    spread = result.bootstrap_distribution
    wrong_side = np.sum(spread <= 0) if higher_is_better else np.sum(spread >= 0)
    p_value = float((1 + wrong_side) / (1 + len(spread)))
    low, high = result.confidence_interval
    return observed, (float(low), float(high)), p_value


def paired_test(
    candidate: RowErrors | RowOutcomes,
    champion: RowErrors | RowOutcomes,
    metric: str,
    higher_is_better: bool,
    rule: Paired,
) -> GateTest:
    """The paired test that fits `metric`, with the bootstrap interval beside it."""
    if type(candidate) is not type(champion) or len(candidate) != len(champion):
        raise ValueError("candidate and champion rows differ: compare on the same rows")
    data, statistic = _metric_data(candidate, champion, metric)
    difference, interval, p_boot = paired_bootstrap(
        data, statistic, higher_is_better, rule.alpha, rule.seed, rule.resamples
    )
    if isinstance(candidate, RowErrors) and metric in ("rmse", "mae"):
        method = DIEBOLD_MARIANO
        stat, p_value = diebold_mariano(data[0], data[1], candidate.overlap)
    elif metric == "accuracy":
        method = MCNEMAR
        stat, p_value = mcnemar(data[0], data[1])
    else:
        method, stat, p_value = BOOTSTRAP, difference, p_boot
    return GateTest(method, stat, p_value, interval, rule.alpha, difference, len(candidate))
