"""One row, one example: the shortest way to bring a problem of your own.

A table whose rows each hold an id, a few numeric features and a target is enough:

    from loopline.tasks.rows import RowTask

    class Churn(RowTask):
        name = "churn"
        features = ["tenure_months", "monthly_spend", "support_calls"]
        target = "churned"
        classes = ["no", "yes"]  # leave out for a regression (a number to predict)

`RowTask` derives the rest of the task contract (`loopline.tasks.base.Task`) from these
lines:
- the data contract: `id_column` (default "id") as text, the features as numbers, the
  target as a class name (or a number); rules: ids present and unique, every feature present
  and finite, the target one of `classes` (a row without a target is unlabeled: it joins no
  split set);
- the split: each row's set by the hash of its id (it never moves; small tables are
  cross-validated, stratified by class);
- features: each standardised with the training split's mean and standard deviation
  (`<name>.standardize: false` in params.yaml keeps them as they are);
- the model: a small MLP (`RowHyperparameters`) with a default search space;
- evaluation on the test rows beside a baseline that ignores the features (the training
  split's class frequencies, whose best guess is the majority class; or the training mean)
  and the champion, judged on accuracy (classes) or RMSE (a number);
- serving (`loopline.tasks.rows.serving`): a request item is one row's feature values and an
  optional id; the answer is the label with each class's probability, or the value.

Override a method to change one part (say, `rules` to add value ranges).
"""

from __future__ import annotations

import keyword
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar, Literal

import numpy as np
import pandas as pd

from loopline.config import Dimension, Params, Section
from loopline.offline.evaluate import incomparable_specs, judge, score, score_classes
from loopline.offline.features import FeatureSpec, normalize
from loopline.offline.labeling import Examples
from loopline.offline.split import labeled_set
from loopline.offline.validate import Rule
from loopline.onnx_runtime import run_onnx
from loopline.tasks.base import FeatureOptions, Hyperparameters, Task
from loopline.tasks.rows.serving import serving_for

# Finite values only: an infinity passes a range without bounds and poisons training.
_LARGEST = float(np.finfo(np.float64).max)


class RowSettings(Section):
    """A row task's own section of params.yaml (under the task's name)."""

    # z-score each feature with the training split's mean and standard deviation; turn off
    # for features already on comparable scales.
    standardize: bool = True


@dataclass(frozen=True, kw_only=True)
class RowHyperparameters(Hyperparameters):
    """The MLP's width, depth (hidden layers; 0: a linear model) and dropout."""

    hidden_size: int
    layers: int
    dropout: float


@dataclass(frozen=True)
class RowOptions(FeatureOptions):
    """What a row model's feature spec carries beyond its columns, scaling and labels."""

    standardize: bool = True


class RowTask(Task):
    """A task whose every row is one example: numeric features → a class or a number.

    A subclass sets `name`, `features` (numeric columns), `target` and, for a classifier,
    `classes`; `id_column` names the rows' unique id (default "id")."""

    features: ClassVar[Sequence[str]] = ()
    target: ClassVar[str] = ""
    classes: ClassVar[Sequence[str] | None] = None
    id_column: ClassVar[str] = "id"

    Settings: ClassVar[type[Section]] = RowSettings
    Hyperparameters: ClassVar[type[Hyperparameters]] = RowHyperparameters
    architecture: ClassVar[tuple[str, ...]] = ("hidden_size", "layers")
    Options: ClassVar[type[FeatureOptions]] = RowOptions
    # The scaling is learned from the data and a copied model's weights expect it.
    transferred_features: ClassVar[tuple[str, ...]] = ("mean", "std", "target_mean", "target_std")

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.features and not cls.target:
            return  # an intermediate base class: nothing declared yet
        problems = declaration_problems(cls)
        if problems:
            raise TypeError(f"{cls.__qualname__} (a RowTask): " + "; ".join(problems))
        cls.features = tuple(cls.features)
        classify = cls.classes is not None
        if classify:
            cls.classes = tuple(str(c) for c in cls.classes)
        cls.schema = {
            cls.id_column: "string",
            **dict.fromkeys(cls.features, "float"),
            cls.target: "string" if classify else "float",
        }
        cls.key_columns = [cls.id_column]
        if "group_column" not in cls.__dict__:  # a grouped split's group: each row its own
            cls.group_column = cls.id_column
        cls.target_column = cls.target
        # A number cannot be stratified on (cross-validation): each row is its own group.
        kind: Literal["stratified", "grouped"] = "stratified" if classify else "grouped"
        cls.split_kind = kind
        inherited = getattr(cls, "Serving", None)
        if "Serving" not in cls.__dict__ and (inherited is None or inherited in _MADE):
            cls.Serving = serving_for(cls)
            _MADE.add(cls.Serving)

    # ------------------------------------------------------------------ params and data

    @property
    def is_classifier(self) -> bool:
        return self.classes is not None

    def default_space(self) -> dict[str, Dimension]:
        return {
            "hidden_size": Dimension(choices=[32, 64]),
            "layers": Dimension(choices=[1, 2]),
            "dropout": Dimension(low=0.0, high=0.3),
            "learning_rate": Dimension(low=1e-3, high=1e-2, log=True),
            "batch_size": Dimension(choices=[32]),
        }

    def rules(self, params: Params) -> list[Rule]:
        key, features = self.id_column, tuple(self.features)
        rules = [
            Rule(f"{key}_not_null", "not_null", column=key),
            Rule(f"{key}_unique", "unique", columns=(key,)),
            Rule("features_complete", "complete", columns=features),
            Rule("features_finite", "between", columns=features, min=-_LARGEST, max=_LARGEST),
        ]
        if self.is_classifier:
            values = tuple(self.classes)
            return [*rules, Rule("target_is_a_class", "in_set", column=self.target, values=values)]
        finite = Rule("target_finite", "between", column=self.target, min=-_LARGEST, max=_LARGEST)
        return [*rules, finite]

    # ------------------------------------------------------------------ features and labels

    def new_feature_spec(self, params: Params) -> FeatureSpec:
        return FeatureSpec(
            task=self.name,
            feature_columns=list(self.features),
            target_column=self.target,
            labels=list(self.classes) if self.is_classifier else None,
            options=RowOptions(standardize=self.settings(params).standardize),
        )

    def fit_features(self, spec: FeatureSpec, train_rows: pd.DataFrame) -> FeatureSpec:
        """Each feature's mean and standard deviation on the training split (0 and 1 when
        not standardising), and a regression target's, which the model learns scaled."""
        mean, std = {}, {}
        standardize = spec.options.standardize
        for column in spec.feature_columns:
            values = _finite(train_rows[column])
            if not values.size:
                raise ValueError(f"feature {column!r} has no value in the training split")
            mean[column] = float(values.mean()) if standardize else 0.0
            std[column] = (float(values.std()) or 1.0) if standardize else 1.0
        target_mean, target_std = 0.0, 1.0
        if spec.labels is None:
            target = _finite(train_rows[spec.target_column])
            if not target.size:
                raise ValueError(f"target {spec.target_column!r}: no value in the training split")
            target_mean, target_std = float(target.mean()), float(target.std()) or 1.0
        return replace(spec, mean=mean, std=std, target_mean=target_mean, target_std=target_std)

    def inputs(self, rows: pd.DataFrame, spec: FeatureSpec) -> np.ndarray:
        """Model inputs (N, features) of raw rows, scaled as the spec says."""
        return normalize(rows, spec)

    def targets(self, rows: pd.DataFrame, spec: FeatureSpec, target_set: str) -> np.ndarray:
        """Class ids (N,) of a classifier's rows, or the values (N, 1) of a regression."""
        labels = spec.labels
        if labels is None:
            return rows[[spec.target_column]].to_numpy(dtype=np.float32)
        index = {label: i for i, label in enumerate(labels)}
        # Each distinct value named once: millions of rows hold a few labels.
        codes, distinct = pd.factorize(rows[spec.target_column], use_na_sentinel=False)
        names = pd.Index(distinct, dtype=object).astype(str)
        unknown = sorted(set(names) - set(index))
        if unknown:
            raise ValueError(
                f"{spec.target_column} value(s) {unknown} in the {target_set} split are not "
                f"among the classes {labels}"
            )
        return names.map(index).to_numpy(dtype=np.int64)[codes]

    def examples(self, frame: pd.DataFrame, spec: FeatureSpec, target_set: str) -> Examples:
        rows = labeled_set(frame, target_set, spec.target_column)
        keys = pd.DataFrame({self.id_column: rows[self.id_column].astype(str).to_numpy()})
        return Examples(self.inputs(rows, spec), self.targets(rows, spec, target_set), keys)

    # ------------------------------------------------------------------ model

    def input_width(self, spec: FeatureSpec) -> int:
        """Model inputs per row (one per feature; an encoding may make more)."""
        return len(spec.feature_columns)

    def build_model(self, hparams: RowHyperparameters, spec: FeatureSpec):
        # torch: training only
        from loopline.tasks.rows.model import RowMLP

        labels = spec.labels
        return RowMLP(
            n_features=self.input_width(spec),
            n_outputs=len(labels) if labels is not None else 1,
            hidden_size=hparams.hidden_size,
            layers=hparams.layers,
            dropout=hparams.dropout,
            classify=labels is not None,
            target_mean=spec.target_mean,
            target_std=spec.target_std,
        )

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, frame, spec: FeatureSpec, model, params: Params, champion=None):
        """The model, a baseline that ignores the features and the champion on the same
        labeled test rows: accuracy decides for classes, RMSE for a number."""
        # torch: training only
        from loopline.offline.train import predict

        test_rows = labeled_set(frame, "test", spec.target_column)
        if test_rows.empty:
            raise ValueError("the test split holds no labeled row: nothing to evaluate on")
        truth = self.targets(test_rows, spec, "test")
        train_rows = labeled_set(frame, "train", spec.target_column)
        train_truth = self.targets(train_rows, spec, "train")  # the baselines' only input
        outputs = {"model": predict(model, self.inputs(test_rows, spec))}
        outputs.update(self.baselines(train_truth, len(test_rows), spec))
        reason = None
        if champion is not None:
            session, own = champion
            reason = incomparable_specs(spec, own) or self.incomparable(spec, own)
            if reason is None:  # the champion reads the rows with its own scaling
                outputs["champion"] = run_onnx(session, self.inputs(test_rows, own))
        if spec.labels is not None:
            scores = {name: score_classes(truth, p) for name, p in outputs.items()}
            return judge(scores, params, reason, metric="accuracy", higher_is_better=True)
        scores = {name: score(truth, np.asarray(v).reshape(-1, 1)) for name, v in outputs.items()}
        return judge(scores, params, reason)

    def baselines(self, train_truth: np.ndarray, rows: int, spec: FeatureSpec) -> dict:
        """Answers that ignore the features, learned from the training labels: the class
        frequencies (whose best guess is the majority class), or the mean."""
        labels = spec.labels
        if labels is None:
            mean = float(np.mean(train_truth)) if len(train_truth) else 0.0
            return {"training_mean_baseline": np.full((rows, 1), mean)}
        counts = np.bincount(train_truth, minlength=len(labels)).astype(np.float64)
        shares = counts / max(counts.sum(), 1.0)
        return {"majority_class_baseline": np.tile(shares, (rows, 1))}

    def incomparable(self, candidate: FeatureSpec, champion: FeatureSpec) -> str | None:
        missing = sorted(set(champion.feature_columns) - set(candidate.feature_columns))
        if missing:
            return f"it reads feature(s) {missing} that the candidate's rows lack"
        return None


_MADE: set[type] = set()  # serving adapters made for a subclass (a sub-subclass remakes its own)


def _finite(values: pd.Series) -> np.ndarray:
    array = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    return array[np.isfinite(array)]


def declaration_problems(cls: type[RowTask]) -> list[str]:
    """What is wrong with a RowTask subclass's declared columns (empty when nothing)."""
    problems = []
    features = cls.features
    if isinstance(features, str) or not all(isinstance(f, str) and f for f in features):
        problems.append("`features` must be a list of column names, e.g. ['height', 'weight']")
    elif not features:
        problems.append("`features` lists no column")
    elif len(set(features)) != len(features):
        problems.append(f"`features` names a column twice: {list(features)}")
    if not isinstance(cls.target, str) or not cls.target:
        problems.append("`target` must name the column to predict")
    reserved = {cls.id_column, cls.target, "split"}
    if not isinstance(features, str) and reserved & set(features):
        problems.append(f"`features` must not hold {sorted(reserved & set(features))}")
    if cls.target in (cls.id_column, "split"):
        problems.append(f"`target` must not be {cls.target!r}")
    if cls.classes is not None:
        names = [str(c) for c in cls.classes] if not isinstance(cls.classes, str) else []
        if len(names) < 2 or len(set(names)) != len(names):
            problems.append("`classes` must list at least two distinct class names")
    if not cls.id_column.isidentifier() or keyword.iskeyword(cls.id_column):
        problems.append(f"`id_column` {cls.id_column!r} must be a plain name (a JSON key)")
    if cls.id_column in ("label", "probabilities", "value"):
        problems.append(f"`id_column` {cls.id_column!r} is a field of the served answer")
    return problems
