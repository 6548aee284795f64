"""Evaluate: score a candidate on the test split beside baselines and the champion, and decide.

`should_promote` is a pure decision, tested on its own; the registry step only carries it out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from loopline.offline.gate import GateTest, Paired, RowErrors, RowOutcomes, paired_test


def _public(scores) -> dict[str, Any]:
    """A scores object's figures, without its per-row data (`per_row`)."""
    return {f.name: getattr(scores, f.name) for f in fields(scores) if f.name != "per_row"}


@dataclass(frozen=True)
class Scores:
    """Errors of one forecaster on a fixed set of test rows."""

    rmse: float
    mae: float
    rmse_per_step: list[float]
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


def score(y_true: np.ndarray, y_pred: np.ndarray) -> Scores:
    """RMSE and MAE overall and RMSE per horizon step, on rows where both are finite."""
    if y_true.shape != y_pred.shape:
        raise ValueError(f"shape mismatch: truth {y_true.shape} vs predicted {y_pred.shape}")
    ok = np.isfinite(y_true).all(axis=1) & np.isfinite(y_pred).all(axis=1)
    if not ok.any():
        raise ValueError("no test row has both a finite truth and a finite prediction")
    err = y_pred[ok].astype(np.float64) - y_true[ok].astype(np.float64)
    return Scores(
        rmse=float(np.sqrt(np.mean(err**2))),
        mae=float(np.mean(np.abs(err))),
        rmse_per_step=[float(v) for v in np.sqrt(np.mean(err**2, axis=0))],
        rows=int(ok.sum()),
        per_row=RowErrors.of(err),
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

    Scores are compared on `metric` (RMSE for a forecaster, lower is better; accuracy for a
    classifier, higher is better). `champion` is None when there is none yet; its scores
    must come from the same test rows as the candidate's (the caller re-scores the champion
    on them). When a champion exists but cannot be scored on those rows
    (`champion_incomparable` says why, e.g. another horizon), the candidate is held: an
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


def plot_per_step_rmse(curves: dict[str, Scores], path: Path, unit: str = "W") -> Path:
    """RMSE per horizon step of the model and each baseline: a PNG."""
    from loopline.plots import new_figure, save_figure

    fig, ax = new_figure()
    for name, scores in curves.items():
        steps = range(1, len(scores.rmse_per_step) + 1)
        ax.plot(steps, scores.rmse_per_step, marker=".", label=f"{name} (mean {scores.rmse:.0f})")
    ax.set_xlabel("steps ahead")
    ax.set_ylabel(f"RMSE ({unit})")
    ax.set_title("Test RMSE per horizon step")
    return save_figure(fig, ax, path)


@dataclass
class Evaluation:
    """Every model scored on the same test rows, and the gate's decision.

    `scores` maps "model", each baseline and "champion" (when there is one) to a scores
    object with `rows` and a `to_dict()`; `skill` is given for forecasters (1 - RMSE ratio).
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
        others, skill_vs_<name> for forecasters."""
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
    task may know more reasons: `Task.incomparable`)."""
    for name in ("task", "target_column", "horizon", "freq", "group_column", "time_column"):
        mine, theirs = getattr(candidate, name), getattr(champion, name)
        if mine != theirs:
            return f"its {name} is {theirs!r}, the candidate's {mine!r}"
    # A classifier's outputs are positions in its label set: another set, other meanings.
    if candidate.labels != champion.labels:
        return f"its labels are {champion.labels!r}, the candidate's {candidate.labels!r}"
    return task.incomparable(candidate, champion) if task is not None else None


def _torch_forecasts(task, test_frame, spec, model):
    from loopline.offline.train import predict

    examples = task.examples(test_frame, spec, "test")
    return examples.keys, predict(model, examples.x), examples.y


def onnx_forecasts(task, test_frame, spec, session):
    """Forecasts of an ONNX model with its own feature spec, from the raw test rows."""
    from loopline.offline.export import run_onnx

    raw = test_frame[[*task.schema, "split"]]
    frame = task.add_labels(task.add_features(raw, spec), spec)
    examples = task.examples(frame, spec, "test")
    values = run_onnx(session, examples.x) if len(examples) else np.zeros((0, spec.horizon))
    return examples.keys, values


def evaluate_candidate(task, test_frame, spec, model, params, champion=None) -> Evaluation:
    """Score the candidate, the task's baselines and the champion on the same test rows.

    `champion` is (onnx session, its feature spec) or None. Rows are the window origins all
    forecasters can serve, so a champion with a longer window is compared fairly.
    """
    import pandas as pd

    keys, predicted, truth = _torch_forecasts(task, test_frame, spec, model)
    forecasts = {"model": predicted}
    incomparable = incomparable_specs(spec, champion[1], task) if champion is not None else None
    if champion is not None and incomparable is None:
        try:
            champion_keys, champion_values = onnx_forecasts(
                task, test_frame, champion[1], champion[0]
            )
        except ValueError as error:  # e.g. a site the champion has no location for
            incomparable = str(error)
    if champion is not None and incomparable is None:
        position = pd.MultiIndex.from_frame(champion_keys).get_indexer(
            pd.MultiIndex.from_frame(keys)
        )
        aligned = np.full_like(predicted, np.nan, dtype=np.float64)
        found = position >= 0
        aligned[found] = champion_values[position[found]]
        forecasts["champion"] = aligned
    forecasts.update(task.baselines(test_frame, keys, spec, params))
    common = np.isfinite(truth).all(axis=1)
    for values in forecasts.values():
        common &= np.isfinite(values).all(axis=1)
    if not common.any():
        raise ValueError("no test window that every forecaster can score")
    scores = {name: score(truth[common], values[common]) for name, values in forecasts.items()}
    return judge(scores, params, incomparable)


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
