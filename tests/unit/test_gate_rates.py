"""The paired gate's size: on simulated candidate/champion pairs of exactly equal quality
(exchangeable per-row outcomes), each test promotes at most about alpha of the candidates,
and still promotes a truly better one. Each check could fail: the former Diebold–Mariano
variance (Bartlett weights over horizon - 1 lags, HLN-corrected) does, on the same draws.

The bound: the rate over DRAWS independent pairs must stay within 2.5 standard errors of
alpha (0.062 for 2,000 draws at alpha 0.05); an anticonservative test at 8-10 % cannot."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import t as student

from loopline.offline import gate
from loopline.offline.gate import Paired, RowErrors, RowOutcomes, paired_test

ALPHA = 0.05
DRAWS = 2000


def bound(draws: int, alpha: float = ALPHA) -> float:
    return alpha + 2.5 * np.sqrt(alpha * (1 - alpha) / draws)


def overlapping_losses(rng, windows: int, horizon: int, shift: float = 0.0):
    """Two forecasters' per-window squared errors over `horizon` steps, windows starting at
    every step, so that consecutive windows share horizon - 1 targets (and their errors):
    the loss differential is a moving average over horizon - 1 lags. Equal quality when
    `shift` is 0; the candidate's errors are `shift` smaller in scale otherwise."""
    hours = windows + horizon - 1
    candidate = rng.standard_normal(hours) * (1.0 - shift)
    champion = rng.standard_normal(hours)
    steps = np.arange(windows)[:, None] + np.arange(horizon)[None, :]
    return RowErrors.of(candidate[steps], horizon), RowErrors.of(champion[steps], horizon)


def former_diebold_mariano(d: np.ndarray, h: int) -> float:
    """The gate's former p-value: Newey–West (Bartlett) over h - 1 lags, HLN, t(n - 1)."""
    n = len(d)
    u = d - d.mean()
    variance = float(u @ u) / n
    for k in range(1, h):
        variance += 2 * (1 - k / h) * float(u[k:] @ u[:-k]) / n
    correction = (n + 1 - 2 * h + h * (h - 1) / n) / n
    return float(student.cdf(d.mean() / np.sqrt(variance / n) * np.sqrt(correction), n - 1))


@pytest.mark.parametrize("windows", [96, 720])
def test_diebold_mariano_keeps_its_size_on_overlapping_windows(windows):
    # 24-step windows at every hour (the solar task's test split): equal forecasters.
    rng = np.random.default_rng(windows)
    h, now, former = 24, 0, 0
    for _ in range(DRAWS):
        candidate, champion = overlapping_losses(rng, windows, h)
        now += gate.diebold_mariano(candidate.squared, champion.squared, h)[1] < ALPHA
        former += former_diebold_mariano(candidate.squared - champion.squared, h) < ALPHA
    assert now / DRAWS <= bound(DRAWS), now / DRAWS
    assert former / DRAWS > bound(DRAWS)  # the check has teeth: the former test fails it


def test_diebold_mariano_still_finds_a_better_forecaster():
    rng = np.random.default_rng(11)
    found = 0
    for _ in range(200):
        candidate, champion = overlapping_losses(rng, 720, 24, shift=0.1)  # MSE 0.81 vs 1
        found += gate.diebold_mariano(candidate.squared, champion.squared, 24)[1] < ALPHA
    assert found / 200 > 0.8


def test_diebold_mariano_at_horizon_one_keeps_its_size_on_heavy_tailed_rows():
    # Tabular regression: independent rows, errors of two equal models with heavy tails.
    rng = np.random.default_rng(12)
    promoted = 0
    for _ in range(DRAWS):
        shared = rng.standard_t(3, 300)
        a = shared + rng.standard_t(3, 300) * 0.5
        b = shared + rng.standard_t(3, 300) * 0.5
        promoted += gate.diebold_mariano(a**2, b**2, 1)[1] < ALPHA
    assert promoted / DRAWS <= bound(DRAWS), promoted / DRAWS


def equal_classifiers(rng, rows: int, accuracy: float, classes: int, differ: float):
    """Two classifiers of the same true accuracy on independent rows: each is right where a
    shared 'easy' draw says so, then each independently redraws `differ` of its rows."""
    labels = rng.integers(0, classes, rows)
    easy = rng.random(rows) < accuracy
    answers = []
    for _ in range(2):
        right = np.where(rng.random(rows) < differ, rng.random(rows) < accuracy, easy)
        wrong = (labels + rng.integers(1, classes, rows)) % classes
        answers.append(np.where(right, labels, wrong))
    return labels, answers


@pytest.mark.parametrize(("rows", "classes"), [(200, 10), (5000, 2)])
def test_mcnemar_keeps_its_size_on_equal_classifiers(rows, classes):
    rng = np.random.default_rng(rows)
    promoted = 0
    for _ in range(DRAWS):
        labels, (a, b) = equal_classifiers(rng, rows, 0.85, classes, differ=0.1)
        promoted += gate.mcnemar(a == labels, b == labels)[1] < ALPHA
    assert promoted / DRAWS <= bound(DRAWS), promoted / DRAWS


def test_the_paired_gate_keeps_its_size_through_paired_test():
    # The dispatch as evaluate.should_promote uses it: accuracy -> McNemar, RMSE of
    # 24-step windows -> Diebold–Mariano, log loss -> the paired bootstrap.
    rng = np.random.default_rng(13)
    rule, draws = Paired(alpha=ALPHA, seed=0, resamples=199), 400
    promoted = {"accuracy": 0, "rmse": 0, "log_loss": 0}
    for i in range(draws):
        labels, (a, b) = equal_classifiers(rng, 500, 0.8, 2, differ=0.2)
        losses = rng.gamma(0.5, 1.0, (2, 500))
        one, two = (RowOutcomes(labels, p, q, 2) for p, q in zip((a, b), losses, strict=True))
        rule_i = Paired(rule.alpha, i, rule.resamples)
        promoted["accuracy"] += paired_test(one, two, "accuracy", True, rule_i).better
        promoted["log_loss"] += paired_test(one, two, "log_loss", False, rule_i).better
        candidate, champion = overlapping_losses(rng, 240, 24)
        promoted["rmse"] += paired_test(candidate, champion, "rmse", False, rule_i).better
    rates = {k: v / draws for k, v in promoted.items()}
    assert all(rate <= bound(draws) for rate in rates.values()), rates


def test_the_number_of_cosine_projections():
    assert gate.dm_projections(720, 24) == 7  # floor(720 / 96)
    assert gate.dm_projections(60, 24) == 1  # never fewer than one
    assert gate.dm_projections(100_000, 2) == int(0.4 * 100_000 ** (2 / 3))  # capped
