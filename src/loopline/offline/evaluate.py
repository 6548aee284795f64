"""Evaluate: score a candidate on the test split beside baselines and the champion, and decide.

`should_promote` is a pure decision, tested on its own; the registry step only carries it out.
Shared scores are a regressor's (`score`) and a classifier's (`score_classes`); a task whose
outputs need more (say, an error per step ahead) subclasses `Scores` in its own package.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

import numpy as np

from loopline.offline.gate import GateTest, Paired, RowErrors, RowOutcomes, paired_test


def _public(scores) -> dict[str, Any]:
    """A scores object's figures, without its per-row data (`per_row`)."""
    return {f.name: getattr(scores, f.name) for f in fields(scores) if f.name != "per_row"}


@dataclass(frozen=True)
class Scores:
    """Errors of one regressor on a fixed set of test rows."""

    rmse: float
    mae: float
    rows: int
    # Each row's errors, for the paired gate: travel with the scores, never in to_dict.
    per_row: RowErrors | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return _public(self)

    def headline(self) -> str:
        return f"RMSE {self.rmse:8.1f}  MAE {self.mae:8.1f}"


@dataclass(frozen=True)
class ClassScores:
    """How well one classifier labels a fixed set of test rows."""

    accuracy: float
    f1: float  # of the positive class (1) with two classes; macro-averaged with more
    log_loss: float
    rows: int
    # More than two classes: the F1 of each class, averaged (every class counts the same,
    # however rare); None with two.
    macro_f1: float | None = None
    # Each row's label, prediction and log loss, for the paired gate; never in to_dict.
    per_row: RowOutcomes | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return _public(self)

    def headline(self) -> str:
        macro = f"  macro F1 {self.macro_f1:.4f}" if self.macro_f1 is not None else ""
        return (
            f"accuracy {self.accuracy:.4f}  F1 {self.f1:.4f}{macro}  log loss {self.log_loss:.4f}"
        )


def score_classes(labels: np.ndarray, probabilities: np.ndarray) -> ClassScores:
    """Accuracy, F1 (positive-class; macro with more than two classes, also given as
    `macro_f1`) and log loss of predicted class probabilities."""
    from sklearn.metrics import f1_score
    from sklearn.metrics import log_loss as cross_entropy

    labels = np.asarray(labels).astype(np.int64)
    p = np.asarray(probabilities, dtype=np.float64)
    p = p / p.sum(axis=1, keepdims=True)  # float32 outputs sum to 1 within 1e-7 only
    if len(labels) != len(p):
        raise ValueError(f"{len(labels)} labels but {len(p)} predictions")
    if not len(labels):
        raise ValueError("no labeled test row to score")
    predicted = p.argmax(axis=1)
    f1 = float(
        f1_score(
            labels,
            predicted,
            labels=range(p.shape[1]),
            average="binary" if p.shape[1] == 2 else "macro",
            zero_division=0.0,
        )
    )
    return ClassScores(
        accuracy=float((predicted == labels).mean()),
        f1=f1,
        log_loss=float(cross_entropy(labels, p, labels=range(p.shape[1]))),
        rows=len(labels),
        macro_f1=f1 if p.shape[1] > 2 else None,
        per_row=RowOutcomes(
            labels,
            predicted,
            -np.log(np.clip(p[np.arange(len(labels)), labels], 1e-15, 1.0)),
            p.shape[1],
        ),
    )


def row_errors(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Errors (predicted - true) of the rows where both are finite, shaped (rows, outputs)."""
    if y_true.shape != y_pred.shape:
        raise ValueError(f"shape mismatch: truth {y_true.shape} vs predicted {y_pred.shape}")
    ok = np.isfinite(y_true).all(axis=1) & np.isfinite(y_pred).all(axis=1)
    if not ok.any():
        raise ValueError("no test row has both a finite truth and a finite prediction")
    return y_pred[ok].astype(np.float64) - y_true[ok].astype(np.float64)


def score(y_true: np.ndarray, y_pred: np.ndarray, overlap: int = 1) -> Scores:
    """RMSE and MAE over every output of the rows where truth and prediction are finite
    (arrays shaped (rows, outputs)). `overlap`: how many neighbouring rows may share targets
    (`Task.loss_dependence`), for the paired gate's test."""
    return scores_of(row_errors(y_true, y_pred), overlap)


def scores_of(err: np.ndarray, overlap: int = 1, kind: type[Scores] = Scores, **more) -> Scores:
    """`kind` (Scores or a subclass with `more` fields) of errors shaped (rows, outputs)."""
    return kind(
        rmse=float(np.sqrt(np.mean(err**2))),
        mae=float(np.mean(np.abs(err))),
        rows=len(err),
        per_row=RowErrors.of(err, overlap),
        **more,
    )


def skill(model: Scores, baseline: Scores) -> float:
    """Skill: 1 - RMSE / baseline RMSE (> 0 means better than the baseline)."""
    return 1.0 - model.rmse / baseline.rmse if baseline.rmse > 0 else 0.0


@dataclass(frozen=True)
class Decision:
    """The gate's verdict, its reasons and, under the paired gate with a champion, the
    paired test that compared them (method, statistic, p-value, interval, alpha)."""

    promote: bool
    reasons: list[str] = field(default_factory=list)
    test: GateTest | None = None
    rule: Literal["point", "paired", "cross-validation"] = "point"
    # Candidate test rows the champion never trained or validated on (None: no champion).
    comparison_rows: int | None = None
    # Small data: the cross-validated test against each baseline (`crossval.corrected_t`).
    baseline_tests: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def gate_record(self) -> dict[str, Any] | None:
        """What the registry keeps of this decision (a version's tag, the champion history):
        the test against the champion, else (small data) the cross-validated test against
        the first baseline; None when no test decided (the point rule)."""
        kept = {"rule": self.rule, "comparison_rows": self.comparison_rows}
        if self.test is not None:
            return {**self.test.to_dict(), **kept, "against": "champion"}
        if self.baseline_tests:
            name = sorted(self.baseline_tests)[0]
            return {**self.baseline_tests[name], **kept, "against": name}
        return None

    def tracking(self) -> tuple[dict[str, float], dict[str, str]]:
        """MLflow metrics and tags of the decision (`loopline.gate.*`)."""
        metrics, tags = self.test.tracking() if self.test is not None else ({}, {})
        if self.comparison_rows is not None:
            metrics = {
                **metrics,
                "loopline.gate.comparison_rows": float(self.comparison_rows),
            }
        tags = {"loopline.gate.rule": self.rule, **tags}
        tags["loopline.gate.promote"] = "true" if self.promote else "false"
        return metrics, tags


NO_CHAMPION = "no current champion"


def compared_on(evaluation: Evaluation, rows: int, note: str, hold: str | None) -> Evaluation:
    """`evaluation` with the rows the champion was compared on said in its decision; with
    `hold` (why the champion could not be compared), the candidate is held for it."""
    decision = evaluation.decision
    if hold is None:
        reasons = [*decision.reasons, note]
        decided = replace(decision, reasons=reasons, comparison_rows=rows)
    else:
        reasons = [r for r in decision.reasons if r != NO_CHAMPION]
        decided = replace(decision, promote=False, reasons=[*reasons, hold], comparison_rows=rows)
    return replace(evaluation, decision=decided)


def _better(candidate: float, other: float, higher_is_better: bool) -> bool:
    return candidate > other if higher_is_better else candidate < other


def should_promote(
    candidate: Any,
    champion: Any | None,
    baselines: dict[str, Any],
    min_improvement: float = 0.0,
    champion_incomparable: str | None = None,
    metric: str = "rmse",
    higher_is_better: bool = False,
    paired: Paired | None = None,
) -> Decision:
    """Promote only a candidate that beats every baseline and the champion on the same rows.

    Scores are compared on `metric` (RMSE for a regressor, lower is better; accuracy for a
    classifier, higher is better). `champion` is None when there is none yet; its scores
    must come from the same test rows as the candidate's (the caller re-scores the champion
    on them). When a champion exists but cannot be scored on those rows
    (`champion_incomparable` says why, e.g. another label set), the candidate is held: an
    automatic gate never replaces what it cannot compare. `min_improvement` is relative: the
    share of the champion's error (or of its distance to a perfect score) to win back.

    `paired` None is the point rule: any win on `metric` (beyond `min_improvement`) beats
    the champion. With `paired`, the candidate must also be significantly better than the
    champion row by row (`gate.paired_test`, one-sided at `paired.alpha`); the test goes
    into the decision. Both scores must then carry their rows (`per_row`).
    """
    label = metric.upper() if metric in ("rmse", "mae") else metric
    mine = getattr(candidate, metric)
    reasons: list[str] = []
    promote = True
    if champion_incomparable:
        promote = False
        reasons.append(
            f"the champion cannot be compared on these rows ({champion_incomparable}); "
            "promote by hand if the change is intended"
        )
    for name, base in sorted(baselines.items()):
        if base.rows != candidate.rows:
            raise ValueError(
                f"baseline {name} was scored on {base.rows} rows, candidate on "
                f"{candidate.rows}: compare on the same rows"
            )
        theirs = getattr(base, metric)
        if _better(mine, theirs, higher_is_better):
            sign = ">" if higher_is_better else "<"
            reasons.append(f"beats {name}: {label} {mine:.4g} {sign} {theirs:.4g}")
        else:
            promote = False
            sign = "<=" if higher_is_better else ">="
            reasons.append(f"does not beat {name}: {label} {mine:.4g} {sign} {theirs:.4g}")
    if champion_incomparable:
        pass  # held above, with the reason
    elif champion is None:
        reasons.append(NO_CHAMPION)
    else:
        if champion.rows != candidate.rows:
            raise ValueError(
                f"champion was scored on {champion.rows} rows, candidate on "
                f"{candidate.rows}: compare on the same rows"
            )
        theirs = getattr(champion, metric)
        if higher_is_better:  # win back a share of the champion's distance to 1
            needed = theirs + (1.0 - theirs) * min_improvement
            wins = mine > needed
        else:
            needed = theirs * (1.0 - min_improvement)
            wins = mine < needed
        sign = (">" if higher_is_better else "<") if wins else ("<=" if higher_is_better else ">=")
        verdict = "beats the champion" if wins else "does not beat the champion"
        reasons.append(
            f"{verdict}: {label} {mine:.4g} {sign} {needed:.4g}"
            f" (champion {theirs:.4g}, min_improvement {min_improvement:g})"
        )
        promote &= wins
        if paired is not None:
            test = _paired(candidate, champion, metric, higher_is_better, paired)
            significant = "significantly better" if test.better else "not significantly better"
            reasons.append(f"{significant} than the champion: {test.describe()}")
            promote &= test.better
            return Decision(promote, reasons, test, "paired")
    return Decision(promote, reasons, rule="point" if paired is None else "paired")


def _paired(candidate, champion, metric: str, higher_is_better: bool, rule: Paired) -> GateTest:
    if candidate.per_row is None or champion.per_row is None:
        raise ValueError(
            "the paired gate needs each row's scores of the candidate and the champion "
            "(score them with evaluate.score / score_classes), or evaluate.gate: point"
        )
    return paired_test(candidate.per_row, champion.per_row, metric, higher_is_better, rule)


@dataclass
class Evaluation:
    """Every model scored on the same test rows, and the gate's decision.

    `scores` maps "model", each baseline and "champion" (when there is one) to a scores
    object with `rows` and a `to_dict()`; `skill` is given for regressors (1 - RMSE ratio).
    `examples` is what the task's report shows (e.g. highlighted test texts).
    """

    scores: dict[str, Any]
    decision: Decision
    examples: list[dict[str, Any]] = field(default_factory=list)
    # What the gate decided on (`judge`): the metric, its direction, and why the champion
    # could not be scored (None when it could, or there is none).
    metric: str = "rmse"
    higher_is_better: bool = False
    incomparable: str | None = None
    # Small data (`loopline.offline.crossval`): each model's mean metric over the folds.
    cross_validated: dict[str, float] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        """Test rows every model was scored on (the same for all, by construction)."""
        return self.scores["model"].rows

    def metrics(self) -> dict[str, float]:
        """Flat metrics for tracking: test_<metric> for the model, <name>_<metric> for the
        others, skill_vs_<name> for regressors."""
        out: dict[str, float] = {}
        for name, scores in self.scores.items():
            prefix = "test" if name == "model" else name
            for key, value in scores.to_dict().items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    if name != "model" and key == "rows":
                        continue  # the same rows for all
                    out[f"{prefix}_{key}"] = float(value)
            if name != "model" and isinstance(scores, Scores):
                out[f"skill_vs_{name}"] = skill(self.scores["model"], scores)
        for name, value in self.cross_validated.items():
            out[f"cv_{name}_{self.metric}"] = float(value)
        return out

    def headlines(self) -> list[str]:
        """One line per scored model, for the console."""
        return [f"{name:18s} {scores.headline()}" for name, scores in self.scores.items()]


def incomparable_specs(candidate, champion, task=None) -> str | None:
    """Why a champion's outputs cannot be scored against the candidate's, or None (the
    task knows its own reasons: `Task.incomparable`)."""
    for name in ("task", "target_column"):
        mine, theirs = getattr(candidate, name), getattr(champion, name)
        if mine != theirs:
            return f"its {name} is {theirs!r}, the candidate's {mine!r}"
    # A classifier's outputs are positions in its label set: another set, other meanings.
    if candidate.labels != champion.labels:
        return f"its labels are {champion.labels!r}, the candidate's {candidate.labels!r}"
    return task.incomparable(candidate, champion) if task is not None else None


def judge(
    scores: dict[str, Any],
    params,
    incomparable: str | None,
    metric: str = "rmse",
    higher_is_better: bool = False,
) -> Evaluation:
    """The gate's decision on scores of "model", the baselines and maybe "champion"."""
    baselines = {k: v for k, v in scores.items() if k not in ("model", "champion")}
    rule = params.evaluate
    decision = should_promote(
        scores["model"],
        scores.get("champion"),
        baselines,
        rule.min_improvement,
        champion_incomparable=incomparable,
        metric=metric,
        higher_is_better=higher_is_better,
        paired=Paired(rule.alpha, params.seed, rule.resamples) if rule.gate == "paired" else None,
    )
    return Evaluation(
        scores,
        decision,
        metric=metric,
        higher_is_better=higher_is_better,
        incomparable=incomparable,
    )


def evaluate_classifier(
    labels: np.ndarray,
    probabilities: dict[str, np.ndarray],
    spec,
    champion,
    champion_probabilities,
    params,
) -> Evaluation:
    """Score a classifier and its baselines (`probabilities` by name, "model" first) and
    the champion on the same labeled test rows, and decide on accuracy.

    `champion` is (ONNX session, its spec) or None; `champion_probabilities(session, spec)`
    runs it on the test rows read its own way (its own vocabulary, its own image size).
    """
    incomparable = None
    if champion is not None:
        session, champion_spec = champion
        incomparable = incomparable_specs(spec, champion_spec, params.plugin)
        if incomparable is None:
            probabilities = {
                **probabilities,
                "champion": champion_probabilities(session, champion_spec),
            }
    scores = {name: score_classes(labels, p) for name, p in probabilities.items()}
    return judge(scores, params, incomparable, metric="accuracy", higher_is_better=True)
