"""Small data: repeated k-fold cross-validation of the candidate and the baselines, and a
paired decision with an interval instead of a point comparison.

Below `evaluate.cross_validate_below` labeled rows (1,000 by default) one held-out test set
is too small to decide on: with the default 10 % it holds under 100 rows, where an accuracy
near 0.85 has a standard error above 3.6 points, so models within about 7 points of each
other cannot be told apart, and a 178-row table decides on 18 rows (one row is 5.6
points). Repeated k-fold (`evaluate.folds` x `evaluate.repeats`, stratified by label or
grouped as the task's split is) scores every labeled row once per repeat. The learner the
candidate came from (its hyperparameters, trained from scratch on each fold's training
rows, early-stopped on the fold's rows of the hash split's val set) and the task's
baselines are compared fold by fold with the corrected resampled t-test (Nadeau & Bengio
2003, as recommended by Bouckaert & Frank 2004): the folds' training sets overlap, so the
naive t-test's variance is inflated by n_test / n_train. The candidate must be
significantly better than every baseline (one-sided at `evaluate.alpha`); the champion is
still judged on the held-out rows it never learned from (`membership.comparison_rows`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from loopline.offline.evaluate import Decision, Evaluation, should_promote
from loopline.offline.gate import GateTest, Paired
from loopline.offline.split import group_column_of
from loopline.offline.train import train_model

CORRECTED_T = "corrected-resampled-t"


def applies(task, frame: pd.DataFrame, spec, params) -> bool:
    """Whether `frame` is small enough to cross-validate (a row-per-example task only:
    examples cut from a series in time order are not exchangeable)."""
    if task.split_kind == "chronological":
        return False
    labeled = int(frame[spec.target_column].notna().sum())
    return labeled < params.evaluate.cross_validate_below


def folds(task, frame: pd.DataFrame, spec, params) -> Iterator[np.ndarray]:
    """The index labels of each fold's test rows, `folds` x `repeats` of them, seeded."""
    from sklearn.model_selection import GroupKFold, KFold, StratifiedKFold

    labeled = frame[frame[spec.target_column].notna()]
    settings = params.evaluate
    group = group_column_of(task) if task.split_kind == "grouped" else None
    labels = labeled[spec.target_column].astype(str).to_numpy()
    stratify = spec.labels is not None and np.unique(labels, return_counts=True)[1].min() >= (
        settings.folds
    )
    for repeat in range(settings.repeats):
        seed = params.seed + repeat
        if group is not None:
            splitter = GroupKFold(settings.folds, shuffle=True, random_state=seed)
            parts = splitter.split(labeled, groups=labeled[group].astype(str))
        elif stratify:
            parts = StratifiedKFold(settings.folds, shuffle=True, random_state=seed).split(
                labeled, labels
            )
        else:
            parts = KFold(settings.folds, shuffle=True, random_state=seed).split(labeled)
        for _, test in parts:
            yield labeled.index[test]


def fold_frame(frame: pd.DataFrame, test_index) -> pd.DataFrame:
    """The split frame of one fold: its rows are the test set, every other labeled row
    trains, but for the hash split's val rows, which early stopping reads."""
    labeled = frame["split"] != "unlabeled"
    split = np.where(frame["split"] == "val", "val", "train")
    out = frame.assign(split=np.where(labeled, split, frame["split"]))
    out.loc[test_index, "split"] = "test"
    return out


@dataclass(frozen=True)
class CrossValidation:
    """Each model's metric on each fold (`values[name]`), with what the test needs."""

    metric: str
    higher_is_better: bool
    values: dict[str, list[float]]
    folds: int
    repeats: int
    test_share: float  # a fold's test rows / its training rows

    def means(self) -> dict[str, float]:
        return {name: float(np.mean(v)) for name, v in self.values.items()}


@dataclass(frozen=True)
class Learner:
    """How the candidate was trained: its hyperparameters and the epochs its early stopping
    kept (each fold trains at most that many: the candidate's own recipe, and half the
    cost of searching for the stopping point again)."""

    hparams: dict[str, Any]
    epochs: int | None = None

    def params(self, params):
        if self.epochs is None:
            return params
        train = params.train.model_copy(update={"max_epochs": max(int(self.epochs), 1)})
        return params.model_copy(update={"train": train})


def cross_validate(
    task,
    frame: pd.DataFrame,
    spec,
    learner: Learner,
    params,
    on_fold: Callable[[int, int, dict[str, float]], None] | None = None,
):
    """Train the candidate's learner on every fold and score it beside the baselines;
    `on_fold(number, of, {model: metric})` after each fold (progress)."""
    hparams, trained = learner.hparams, learner.params(params)
    values: dict[str, list[float]] = {}
    shares, metric, higher = [], "rmse", False
    total = params.evaluate.folds * params.evaluate.repeats
    for number, test_index in enumerate(folds(task, frame, spec, params), start=1):
        rows = fold_frame(frame, test_index)
        fitted = task.fit_features(spec, rows[rows["split"] == "train"])
        result, fitted = train_model(task, rows, fitted, hparams, trained)
        scored = task.evaluate(rows, fitted, result.model, params, None)
        metric, higher = scored.metric, scored.higher_is_better
        for name, scores in scored.scores.items():
            values.setdefault(name, []).append(float(getattr(scores, metric)))
        shares.append(len(test_index) / max(int((rows["split"] == "train").sum()), 1))
        if on_fold is not None:
            on_fold(number, total, {name: v[-1] for name, v in values.items()})
    settings = params.evaluate
    return CrossValidation(
        metric, higher, values, settings.folds, settings.repeats, float(np.mean(shares))
    )


def corrected_t(
    candidate: list[float], other: list[float], cv: CrossValidation, alpha: float
) -> GateTest:
    """One-sided corrected resampled t-test (H1: the candidate is better) of the folds'
    metric differences, with its two-sided 1 - 2*alpha interval of the mean difference."""
    from scipy.stats import t

    difference = np.asarray(candidate, np.float64) - np.asarray(other, np.float64)
    gain = difference if cv.higher_is_better else -difference  # > 0: the candidate is better
    runs = len(gain)
    mean = float(gain.mean())
    variance = float(gain.var(ddof=1)) if runs > 1 else 0.0
    error = np.sqrt((1.0 / runs + cv.test_share) * variance)
    if error == 0:
        statistic, p_value = (np.inf, 0.0) if mean > 0 else (0.0, 1.0)
    else:
        statistic = mean / error
        p_value = float(t.sf(statistic, df=runs - 1))
    spread = float(t.ppf(1 - alpha, df=max(runs - 1, 1)) * error)
    signed = float(difference.mean())
    return GateTest(
        CORRECTED_T,
        float(statistic),
        p_value,
        (signed - spread, signed + spread),
        alpha,
        signed,
        runs,
    )


def decide(evaluation: Evaluation, cv: CrossValidation, params) -> Evaluation:
    """The small-data decision: significantly better than every baseline over the folds,
    and (with a champion) the held-out rule against the champion (before
    `evaluate.compared_on` says on which rows, or holds the candidate)."""
    rule = params.evaluate
    means = cv.means()
    label = cv.metric.upper() if cv.metric in ("rmse", "mae") else cv.metric
    reasons = [
        f"{len(cv.values['model'])} folds ({cv.folds}-fold x {cv.repeats}): small data "
        f"(fewer labeled rows than evaluate.cross_validate_below, {rule.cross_validate_below})"
    ]
    promote = True
    tests: dict[str, dict[str, Any]] = {}
    for name in sorted(n for n in cv.values if n != "model"):
        test = corrected_t(cv.values["model"], cv.values[name], cv, rule.alpha)
        tests[name] = test.to_dict()
        verdict = "significantly better" if test.better else "not significantly better"
        reasons.append(
            f"{verdict} than {name} over the folds: {label} {means['model']:.4g} vs "
            f"{means[name]:.4g}; {test.describe()}"
        )
        promote &= test.better
    champion = should_promote(
        evaluation.scores["model"],
        evaluation.scores.get("champion"),
        {},
        rule.min_improvement,
        champion_incomparable=evaluation.incomparable,
        metric=evaluation.metric,
        higher_is_better=evaluation.higher_is_better,
        paired=Paired(rule.alpha, params.seed, rule.resamples) if rule.gate == "paired" else None,
    )
    decision = Decision(
        promote and champion.promote,
        [*reasons, *champion.reasons],
        champion.test,
        "cross-validation",
        baseline_tests=tests,
    )
    return replace(evaluation, decision=decision, cross_validated=means)
