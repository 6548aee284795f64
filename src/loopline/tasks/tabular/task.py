"""The `tabular` family: a class or a number from named columns of a file or a SQL table,
configured in params.yaml alone (section `tabular:`):

    task: tabular
    tabular:
      target: churned
      id_column: customer_id
      numeric: [tenure_months, monthly_spend]
      categorical: [plan, region]
      kind: classification        # or regression
      labels: null                # null: the training split's distinct labels

Built on `RowTask` (one row, one example), bound to the section (`bind`). Numeric columns
are standardised, categorical ones one-hot encoded with an "other" slot (`encoding`); the
vocabulary, scaling, columns and labels go into the model's feature spec, which is all that
serving and evaluating a champion read. Tuning chooses the algorithm per trial: the MLP,
gradient-boosted trees (`model.GradientBoosted`) or the linear model (`model.Linear`:
logistic or ridge regression), so data that is linear gets the linear model served. The gate
requires beating the feature-blind baseline (`RowTask.evaluate`) and the champion, and the
report ranks each feature by permutation importance on the test rows.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import Field

import loopline.tasks.tabular.encoding as encoding
from loopline.config import Dimension, Params, Section
from loopline.offline.features import FeatureSpec
from loopline.offline.validate import Rule
from loopline.tasks.base import FeatureOptions, Hyperparameters
from loopline.tasks.rows.task import RowHyperparameters, RowTask, _finite
from loopline.tasks.tabular.serving import TabularServing

_LARGEST = float(np.finfo(np.float64).max)
Kind = Literal["classification", "regression"]


class TabularSettings(Section):
    """The `tabular:` section: which columns are what."""

    target: str = ""  # the column to predict
    id_column: str = "id"  # each row's unique id (echoed in the served answer as `id`)
    numeric: list[str] = Field(default_factory=list)  # number columns: standardised
    categorical: list[str] = Field(default_factory=list)  # text/code columns: one-hot
    kind: Kind = "classification"
    # A classifier's classes in output order; null: the training split's, sorted. A label
    # set that changes between runs makes the champion incomparable (it is not scored).
    labels: list[str | int] | None = None
    # A category seen in fewer training rows goes to the column's "other" slot, as an
    # unseen one does at serving time (so that slot is learned).
    min_category_rows: int = Field(2, ge=1)


@dataclass(frozen=True, kw_only=True)
class TabularHyperparameters(RowHyperparameters):
    """The algorithm, then the MLP's (`learning_rate`, `batch_size`, `hidden_size`,
    `layers`, `dropout`), the trees' (`trees`, `depth`, `shrinkage`: their learning rate)
    and the linear model's (`inverse_regularization`: scikit-learn's `C`). A trial reads
    those of its algorithm."""

    algorithm: Literal["mlp", "gbm", "linear"]
    trees: int
    depth: int
    shrinkage: float
    inverse_regularization: float = 1.0


@dataclass(frozen=True)
class TabularOptions(FeatureOptions):
    """What a tabular model's spec carries beyond columns, scaling and labels."""

    kind: str = "classification"
    id_column: str = "id"
    numeric: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    # Per categorical column, the categories with an input of their own (training split).
    vocabulary: dict[str, list[str]] = field(default_factory=dict)
    min_category_rows: int = 2


class TabularTask(RowTask):
    name = "tabular"
    Settings: ClassVar[type[Section]] = TabularSettings
    Hyperparameters: ClassVar[type[Hyperparameters]] = TabularHyperparameters
    architecture: ClassVar[tuple[str, ...]] = ("algorithm", "hidden_size", "layers")
    Options: ClassVar[type[FeatureOptions]] = TabularOptions
    transferred_features: ClassVar[tuple[str, ...]] = (
        "mean",
        "std",
        "target_mean",
        "target_std",
        "vocabulary",
    )
    # Unbound: no columns yet (`bind` sets them from the section).
    schema: ClassVar[dict[str, str]] = {}
    key_columns: ClassVar[list[str]] = ["id"]
    target_column: ClassVar[str] = ""
    Serving: ClassVar[type] = TabularServing
    section: TabularSettings | None = None  # set by `bind`

    # ------------------------------------------------------------------ params

    def bind(self, settings: TabularSettings) -> TabularTask:
        """A copy whose columns, split and classes come from the `tabular:` section."""
        problems = settings_problems(settings)
        if problems:
            raise ValueError("; ".join(problems))
        bound = copy.copy(self)
        classify = settings.kind == "classification"
        bound.section = settings
        bound.features = (*settings.numeric, *settings.categorical)
        bound.target, bound.target_column = settings.target, settings.target
        bound.id_column, bound.key_columns = settings.id_column, [settings.id_column]
        bound.group_column = settings.id_column  # a regression's rows are their own groups
        bound.classes = tuple(str(c) for c in settings.labels) if settings.labels else None
        bound.schema = {
            settings.id_column: "string",
            **dict.fromkeys(settings.numeric, "float"),
            **dict.fromkeys(settings.categorical, "string"),
            settings.target: "string" if classify else "float",
        }
        bound.split_kind = "stratified" if classify else "grouped"
        return bound

    def default_space(self) -> dict[str, Dimension]:
        return {
            "algorithm": Dimension(choices=["mlp", "gbm", "linear"]),
            "hidden_size": Dimension(choices=[32, 64]),
            "layers": Dimension(choices=[1, 2]),
            "dropout": Dimension(low=0.0, high=0.3),
            "learning_rate": Dimension(low=1e-3, high=1e-2, log=True),
            "batch_size": Dimension(choices=[32]),
            "trees": Dimension(choices=[50, 100, 200]),
            "depth": Dimension(choices=[2, 3]),
            "shrinkage": Dimension(low=0.05, high=0.3, log=True),
            "inverse_regularization": Dimension(low=0.01, high=100.0, log=True),
        }

    @property
    def is_classifier(self) -> bool:
        return self._settings().kind == "classification"

    def _settings(self) -> TabularSettings:
        if self.section is None:
            raise ValueError("the tabular task is not bound to its `tabular:` section")
        return self.section

    def rules(self, params: Params) -> list[Rule]:
        settings = self._settings()
        key, numeric = self.id_column, tuple(settings.numeric)
        rules = [
            Rule(f"{key}_not_null", "not_null", column=key),
            Rule(f"{key}_unique", "unique", columns=(key,)),
            Rule("features_complete", "complete", columns=tuple(self.features)),
        ]
        if numeric:
            rules.append(
                Rule("numbers_finite", "between", columns=numeric, min=-_LARGEST, max=_LARGEST)
            )
        if not self.is_classifier:
            return [
                *rules,
                Rule("target_finite", "between", column=self.target, min=-_LARGEST, max=_LARGEST),
            ]
        if self.classes is not None:
            return [
                *rules,
                Rule("target_is_a_label", "in_set", column=self.target, values=tuple(self.classes)),
            ]
        return rules

    # ------------------------------------------------------------------ features

    def new_feature_spec(self, params: Params) -> FeatureSpec:
        settings = self._settings()
        labels = list(self.classes) if self.classes is not None else None
        return FeatureSpec(
            task=self.name,
            feature_columns=list(self.features),
            target_column=self.target,
            labels=labels,
            options=TabularOptions(
                kind=settings.kind,
                id_column=settings.id_column,
                numeric=list(settings.numeric),
                categorical=list(settings.categorical),
                min_category_rows=settings.min_category_rows,
            ),
        )

    def fit_features(self, spec: FeatureSpec, train_rows: pd.DataFrame) -> FeatureSpec:
        """Scaling, vocabularies and (when not fixed) the labels, from the training split."""
        options: TabularOptions = spec.options
        mean, std = {}, {}
        for column in options.numeric:
            values = _finite(train_rows[column])
            if not values.size:
                raise ValueError(f"numeric feature {column!r} has no value in the training split")
            mean[column], std[column] = float(values.mean()), float(values.std()) or 1.0
        vocabulary = {
            column: encoding.vocabulary(train_rows[column], options.min_category_rows)
            for column in options.categorical
        }
        labels, target_mean, target_std = spec.labels, 0.0, 1.0
        targets = train_rows[spec.target_column].dropna()
        if options.kind == "classification" and labels is None:
            labels = sorted(encoding.as_category(targets).unique().tolist())
            if len(labels) < 2:
                raise ValueError(
                    f"target {spec.target_column!r} holds {len(labels)} label(s) in the "
                    f"training split ({labels}); a classifier needs two or more"
                )
        if options.kind == "regression":
            values = _finite(targets)
            if not values.size:
                raise ValueError(f"target {spec.target_column!r}: no value in the training split")
            target_mean, target_std = float(values.mean()), float(values.std()) or 1.0
        return replace(
            spec,
            mean=mean,
            std=std,
            target_mean=target_mean,
            target_std=target_std,
            labels=labels,
            horizon=len(labels) if labels else 1,
            options=replace(options, vocabulary=vocabulary),
        )

    def inputs(self, rows: pd.DataFrame, spec: FeatureSpec) -> np.ndarray:
        """Model inputs of raw rows, from the spec alone (the service's code too)."""
        options: TabularOptions = spec.options
        return encoding.encode(rows, options.numeric, spec.mean, spec.std, options.vocabulary)

    def targets(self, rows: pd.DataFrame, spec: FeatureSpec, target_set: str) -> np.ndarray:
        if spec.labels is None:
            return super().targets(rows, spec, target_set)
        # The same text form as the labels were read in (3, 3.0 and "3" are one label).
        # The target column alone: a copy of every column costs the table again.
        target = encoding.as_category(rows[spec.target_column])
        return super().targets(target.to_frame(spec.target_column), spec, target_set)

    # ------------------------------------------------------------------ model

    def input_width(self, spec: FeatureSpec) -> int:
        """Standardised numbers and one-hot categories, each with its "other" input."""
        return len(encoding.input_names(spec.options.numeric, spec.options.vocabulary))

    def build_model(self, hparams: TabularHyperparameters, spec: FeatureSpec):
        # torch: training only
        from loopline.tasks.tabular.model import GradientBoosted, Linear

        labels = spec.labels
        n_outputs = len(labels) if labels is not None else 1
        if hparams.algorithm == "gbm":
            return GradientBoosted(
                n_outputs,
                labels is not None,
                hparams.trees,
                hparams.depth,
                hparams.shrinkage,
                spec.target_mean,
                spec.target_std,
            )
        if hparams.algorithm == "linear":
            return Linear(
                n_outputs,
                labels is not None,
                hparams.inverse_regularization,
                spec.target_mean,
                spec.target_std,
            )
        return super().build_model(hparams, spec)

    # ------------------------------------------------------------------ evaluation

    def evaluation_report(self, evaluation, frame, spec, model, params, folder):
        """Per-feature permutation importance on the test rows: a PNG and an HTML page."""

        # torch: training only
        from loopline.tasks.tabular.report import write_report

        return write_report(self, evaluation, frame, spec, model, params.seed, folder)


def settings_problems(settings: TabularSettings) -> list[str]:
    """What the `tabular:` section gets wrong, each naming its key (empty when nothing)."""
    problems = []
    features = [*settings.numeric, *settings.categorical]
    if not settings.target:
        problems.append("tabular.target is not set: name the column to predict")
    if not features:
        problems.append("tabular.numeric and tabular.categorical list no column: name the features")
    twice = sorted({c for c in features if features.count(c) > 1})
    if twice:
        problems.append(f"tabular.numeric/categorical name column(s) {twice} twice")
    reserved = sorted({settings.target, settings.id_column, "split"} & set(features))
    if reserved:
        problems.append(f"tabular.numeric/categorical hold {reserved}: not a feature")
    if settings.target in (settings.id_column, "split"):
        problems.append(f"tabular.target must not be {settings.target!r}")
    if not settings.id_column:
        problems.append("tabular.id_column is empty: name the rows' unique id column")
    if settings.labels is not None:
        names = [str(label) for label in settings.labels]
        if settings.kind == "regression":
            problems.append("tabular.labels is set, but tabular.kind is regression (a number)")
        elif len(set(names)) < 2 or len(set(names)) != len(names):
            problems.append(f"tabular.labels must list two or more distinct labels, not {names}")
    return problems
