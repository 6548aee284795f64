"""The task contract: what a team writes to bring its own problem to Loopline.

A task is a package (or one module) holding everything about itself: its data contract and
rules, its own `params.yaml` section (`Settings`), typed hyperparameters (`Hyperparameters`)
with their default search space, typed feature options (`Options`, saved inside every
model), the model, the evaluation with its baselines, and how it is served (`Serving`).
Shared stages call a task only through `Task` below and never ask which task they run.

Optional abilities are small protocols (`HumanLabels`, `Pretraining`, `FolderSource`,
`Explaining`): a stage that offers one checks `isinstance(task, Ability)` once.

The shortest task subclasses `loopline.tasks.rows.RowTask` (one row, one example); a task
with its own shape of data subclasses `Task` and fills in the methods marked abstract.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Protocol, runtime_checkable

from pydantic import AfterValidator, StrictInt

from loopline.config import SHARED_SECTIONS, Params, Section
from loopline.online.adapter import Serving

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np
    import pandas as pd
    import torch

    from loopline.config import Dimension, Params
    from loopline.offline.evaluate import Evaluation
    from loopline.offline.features import FeatureSpec
    from loopline.offline.labeling import Examples
    from loopline.offline.validate import Rule


# The column of a monitored frame (`Task.monitor_inputs`) holding each row's event time,
# which orders the rows and cuts them into the monitor's periods.
EVENT_TIME = "event_time"


class NoParams(Section):
    """A task without a params section of its own."""


def _two_distinct_labels(labels: list[Any] | None) -> list[Any] | None:
    if labels is None:
        return None
    names = [str(label) for label in labels]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"labels {repeated} are given more than once")
    if len(names) < 2:
        raise ValueError(f"a classifier needs two labels or more, got {names}")
    return labels


# A settings field naming a classifier's classes: None takes the training split's sorted
# distinct labels; a list (strings or integers, two or more, each once) fixes them.
LabelSet = Annotated[list[StrictInt | str] | None, AfterValidator(_two_distinct_labels)]


def _cast(value: Any, annotation: Any, where: str) -> Any:
    """`value` as the field type `annotation` (int, float, str, bool, a Literal of them)."""
    if typing.get_origin(annotation) is Literal:
        allowed = typing.get_args(annotation)
        for choice in allowed:
            if value == choice or str(value) == str(choice):
                return choice
        raise ValueError(f"{where} is {value!r}; one of {list(allowed)}")
    if annotation is bool:
        return bool(value)
    if annotation is int:
        if float(value) != int(float(value)):
            raise ValueError(f"{where} is {value!r}; a whole number")
        return int(float(value))
    if annotation in (float, str):
        return annotation(value)
    return value


@dataclass(frozen=True, kw_only=True)
class Hyperparameters:
    """A model's hyperparameters (nanoGPT's `GPTConfig`): what `build_model` and training
    read, typed. Every model trains with a learning rate and a batch size; a task's subclass
    adds its own fields (int, float, str or a `Literal` of choices)."""

    learning_rate: float
    batch_size: int

    @classmethod
    def axes(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def choices(cls, axis: str) -> tuple[Any, ...] | None:
        """The values a `Literal` field allows (a search space may pick among them only)."""
        annotation = typing.get_type_hints(cls)[axis]
        return typing.get_args(annotation) if typing.get_origin(annotation) is Literal else None

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The fields that have a default: a search space or a model saved before such a
        field existed may leave them out."""
        return {
            f.name: f.default
            for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Hyperparameters:
        """Typed hyperparameters from plain values (a trial, a checkpoint, MLflow params);
        unknown or missing names are named (a field with a default may be missing)."""
        undecorated = undecorated_hyperparameters(cls)
        if undecorated:
            raise ValueError(undecorated)
        known = cls.axes()
        values = {**cls.defaults(), **values}
        unknown = sorted(set(values) - set(known))
        missing = sorted(set(known) - set(values))
        if unknown or missing:
            raise ValueError(
                f"{cls.__name__}: unknown {unknown}, missing {missing}; expected {list(known)}"
            )
        hints = typing.get_type_hints(cls)
        return cls(**{k: _cast(values[k], hints[k], f"{cls.__name__}.{k}") for k in known})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def undecorated_hyperparameters(cls: type) -> str | None:
    """Why a `Hyperparameters` subclass's fields are not seen (None when they are): a class
    that declares fields without its own dataclass decorator leaves them out of
    `dataclasses.fields`, and they would be reported as unknown names instead."""
    for klass in cls.__mro__:
        if klass is Hyperparameters or not issubclass(klass, Hyperparameters):
            continue
        declared = [
            name
            for name, annotation in inspect.get_annotations(klass).items()
            if "ClassVar" not in str(annotation)
        ]
        if declared and "__dataclass_fields__" not in klass.__dict__:
            return (
                f"{klass.__name__} declares {declared} but is not a dataclass itself: put "
                f"@dataclass(frozen=True, kw_only=True) above `class {klass.__name__}` "
                "(from dataclasses import dataclass)"
            )
    return None


@dataclass(frozen=True)
class FeatureOptions:
    """Typed settings of a task's features that travel inside the model's feature spec
    (say, a vocabulary or the image size). Plain JSON values only: the spec is JSON."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FeatureOptions:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown option(s) {unknown}")
        return cls(**values)


@dataclass(frozen=True)
class NoOptions(FeatureOptions):
    """A task whose features need no settings beyond the spec's own fields."""


@dataclass(frozen=True)
class LivePicture:
    """What the operator page draws of recent live predictions (`Task.live_picture`).

    `frame` has a `time` column (UTC) and, for a picture of several series, a `key`
    column. "lines": one line per other column (say the forecast and the measured value,
    NaN until it arrives), over time. "mix": a `label` column, drawn as each label's share
    of the predictions over time.
    """

    kind: Literal["lines", "mix"]
    title: str
    frame: pd.DataFrame
    unit: str = ""


class Task:
    """The contract every task implements; subclass it (or `RowTask`) and set the class
    attributes, then override the methods that raise NotImplementedError."""

    # The task's name: its params section key, its default model name, its data folders.
    name: ClassVar[str]
    # Column types of the raw data contract: "float", "string" or "datetime".
    schema: ClassVar[dict[str, str]]
    key_columns: ClassVar[list[str]]
    time_column: ClassVar[str | None] = None
    target_column: ClassVar[str]
    # chronological: by time with gaps; stratified: each row by the hash of its key (small
    # data is cross-validated stratified by label); grouped: by its group's key, so no group
    # is in two sets (`loopline.offline.split`).
    split_kind: ClassVar[Literal["chronological", "stratified", "grouped"]] = "stratified"
    # The column whose rows stay together (a grouped split puts each of its values in one
    # set, cross-validation in one fold), or None.
    group_column: ClassVar[str | None] = None
    # What a model started from another (`train.init_from`) reads the source's way: feature
    # spec fields or options fitted on data (scaling, a vocabulary) that its weights expect.
    transferred_features: ClassVar[tuple[str, ...]] = ()
    # The task's own section of params.yaml, under `name` (validated with everything else).
    Settings: ClassVar[type[Section]] = NoParams
    # Keys of shared sections this task's section took over ("features.freq": "freq"): an
    # old params.yaml that still holds one is told where it moved.
    moved_keys: ClassVar[dict[str, str]] = {}
    # Typed hyperparameters; `architecture` names those that shape the weights (a model
    # started from another takes them from it, and tuning searches the others only).
    Hyperparameters: ClassVar[type[Hyperparameters]]
    architecture: ClassVar[tuple[str, ...]] = ()
    # Typed options in the feature spec (`spec.options` is an instance).
    Options: ClassVar[type[FeatureOptions]] = NoOptions
    # How the one service serves this task (`loopline.online.adapter.Serving` subclass).
    Serving: ClassVar[type]

    # ------------------------------------------------------------------ params

    def settings(self, params: Params) -> Any:
        """This task's own params section (an instance of `Settings`)."""
        return params.task_params

    def bind(self, settings: Any) -> Task:
        """This task configured by its own params section (`params.plugin` is the result).

        A task whose data contract is fixed returns itself. A family configured without
        code (say, any table's target and feature columns) returns an instance whose
        `schema`, `key_columns`, `time_column`, `target_column` and `split_kind` come from
        `settings`; raise ValueError, naming the key, for settings it cannot work with.
        Everything a served model needs of them belongs in its feature spec: the service
        reads the model's spec, never today's params."""
        return self

    def default_space(self) -> dict[str, Dimension]:
        """The search space tuning uses when params.yaml gives none: every hyperparameter."""
        raise NotImplementedError

    # ------------------------------------------------------------------ data

    def schema_for(self, params: Params) -> dict[str, str]:
        """The raw data contract under these params (say, an image size sets the pixel
        columns); `schema` when nothing in params changes it."""
        return self.schema

    def load_builtin(self, params: Params) -> pd.DataFrame:
        """The task's own data (`ingest.source: builtin`)."""
        raise ValueError(
            f"task {self.name} has no built-in data: point ingest.source at a file, a glob "
            f"or a SQLAlchemy URL with columns {list(self.schema)}"
        )

    def rules(self, params: Params) -> list[Rule]:
        """The data contract beyond column types: rows breaking a rule are quarantined."""
        raise NotImplementedError

    def split_margin(self, params: Params, spec: FeatureSpec) -> pd.Timedelta:
        """Time left out between chronological sets, so that no example's inputs or labels
        reach into a neighbouring set (say, the longest input window); none for one-row
        examples. Default: `split_gap` steps of the spec's step (see there)."""
        return _steps_as_time(self.split_gap(params), spec, "split_gap")

    def history_span(self, params: Params, spec: FeatureSpec) -> pd.Timedelta:
        """Time before the test set that evaluating a chronological task reads (say, a
        window plus the longest lag). Default: `history_steps` steps of the spec's step."""
        return _steps_as_time(self.history_steps(params), spec, "history_steps")

    def split_gap(self, params: Params) -> int:
        """The margin in steps (the former hook, still honoured: `split_margin` reads it as
        steps of the spec's `freq`, which the task's `Options` must then declare); prefer
        overriding `split_margin`. 0 by default."""
        return 0

    def history_steps(self, params: Params) -> int:
        """The history in steps (the former hook, honoured as `split_gap` is); prefer
        overriding `history_span`. `split_gap` by default."""
        return self.split_gap(params)

    # ------------------------------------------------------------------ features and labels

    def new_feature_spec(self, params: Params) -> FeatureSpec:
        raise NotImplementedError

    def add_features(self, frame: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
        """Feature columns for raw rows; pure in (rows, spec), shared with the service."""
        return frame

    def add_labels(
        self, frame: pd.DataFrame, spec: FeatureSpec, human: pd.DataFrame | None = None
    ) -> pd.DataFrame:
        """Rows with their labels: from the data, and `human` ones (`loopline label
        import`) where the task takes them (`HumanLabels`)."""
        return frame

    def fit_features(self, spec: FeatureSpec, train_rows: pd.DataFrame) -> FeatureSpec:
        """What is learned from the training split only (scaling, a vocabulary)."""
        return spec

    def configure(self, spec: FeatureSpec, hparams: Hyperparameters) -> FeatureSpec:
        """The spec a model with these hyperparameters reads (say, its input window)."""
        return spec

    def examples(self, frame: pd.DataFrame, spec: FeatureSpec, target_set: str) -> Examples:
        """Model-ready inputs and labels of one split set ("train", "val" or "test")."""
        raise NotImplementedError

    # ------------------------------------------------------------------ model

    def build_model(self, hparams: Hyperparameters, spec: FeatureSpec) -> torch.nn.Module:
        raise NotImplementedError

    def augmentation(self, spec: FeatureSpec) -> Any | None:
        """Random changes to training batches (`train.Augment`), or None."""
        return None

    def fine_tuning(self, spec: FeatureSpec, transfer: Any) -> Any | None:
        """How `train.fit` fine-tunes a model the task pretrained itself (see
        `train.FineTuning`; `transfer` is the `train.transfer` section), or None."""
        return None

    # ------------------------------------------------------------------ evaluation

    def evaluate(
        self,
        frame: pd.DataFrame,
        spec: FeatureSpec,
        model: torch.nn.Module,
        params: Params,
        champion: tuple[Any, FeatureSpec] | None = None,
    ) -> Evaluation:
        """Score the model, the task's baselines and the champion (ONNX session, its spec)
        on the same test rows of the split `frame` (baselines that learn, learn from its
        training rows), and decide whether the model may be promoted."""
        raise NotImplementedError

    def evaluation_report(
        self,
        evaluation: Evaluation,
        frame: pd.DataFrame,
        spec: FeatureSpec,
        model: torch.nn.Module,
        params: Params,
        folder: Path,
    ) -> list[Path]:
        """Files a person opens to judge the model (plots, an HTML page), for MLflow."""
        return []

    def incomparable(self, candidate: FeatureSpec, champion: FeatureSpec) -> str | None:
        """Why the champion's outputs cannot be scored beside the candidate's (say, another
        label set or image size), or None."""
        return None

    def loss_dependence(self, spec: FeatureSpec) -> int:
        """How many neighbouring rows (in time order) may share targets, so that their
        losses are not independent: the paired gate's and the deployment policy's
        Diebold–Mariano test allows for that many - 1 lags (say, a forecast's horizon:
        overlapping forecasts share all but one step). 1: every row stands alone."""
        return 1

    def probe_input(self, spec: FeatureSpec) -> np.ndarray:
        """A small input batch a loaded model is checked on when no golden batch was
        published beside it (it must give finite outputs, one per row). Default: two rows
        of zeros, one column per feature; a task whose model reads another shape (a
        sequence, token ids, an image) returns its own."""
        import numpy as np

        return np.zeros((2, len(spec.feature_columns)), np.float32)

    # ------------------------------------------------------------------ monitoring
    # What a model's reference profile holds and how live ground truth joins its logged
    # predictions (`loopline.offline.reference`, `loopline.watch.monitor`). The defaults watch
    # the data contract's columns for drift and know no live quality.

    def monitor_inputs(self, rows: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
        """The input features watched for drift, one row per raw row (numeric or
        categorical by dtype), with the rows' event time as column `event_time` (NaT where
        the task has no time). Default: the contract's number and string columns, less
        the keys, the time and the target."""
        import pandas as pd

        skip = {*self.key_columns, self.time_column, self.target_column}
        # Columns gathered first and joined once: a frame grown column by column warns
        # (PerformanceWarning) past a hundred columns, once per column of a wide table.
        columns: dict[str, pd.Series] = {}
        for column, kind in self.schema.items():
            if column in skip or column not in rows.columns:
                continue
            if kind == "float":
                columns[column] = pd.to_numeric(rows[column], errors="coerce")
            elif kind == "string":
                columns[column] = rows[column].astype("string")
        columns[EVENT_TIME] = self._event_times(rows)
        return pd.DataFrame(columns, index=rows.index)

    def _event_times(self, rows: pd.DataFrame):
        import pandas as pd

        if self.time_column and self.time_column in rows.columns:
            return pd.to_datetime(rows[self.time_column], utc=True, errors="coerce")
        return pd.Series(pd.NaT, index=rows.index, dtype="datetime64[ns, UTC]")

    def logged_rows(self, records: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
        """The raw rows that logged predictions stand for (`records`: the prediction log's
        `key`, `origin`, `inputs` and `logged_at` columns), one row each, in the data
        contract's columns where the log holds them. Default: each record's `inputs`."""
        import pandas as pd

        return pd.DataFrame([i if isinstance(i, dict) else {} for i in records["inputs"]])

    def reference_outputs(self, outputs: np.ndarray, spec: FeatureSpec) -> list[Any]:
        """The model's outputs on test rows (its first ONNX output) as the prediction log
        stores a served one."""
        return outputs.tolist()

    def reference_times(self, examples: Examples, spec: FeatureSpec) -> np.ndarray | None:
        """Event times of test examples (their order in the profile), or None (no order)."""
        return None

    def monitor_outputs(self, outputs: list[Any], spec: FeatureSpec) -> pd.DataFrame:
        """Prediction columns watched for drift, one row per logged output. Default: none."""
        import pandas as pd

        return pd.DataFrame(index=range(len(outputs)))

    def reference_losses(self, y: np.ndarray, outputs: np.ndarray, spec: FeatureSpec):
        """Each test row's loss (the live-quality unit); NaN: the task knows none."""
        import numpy as np

        return np.full(len(outputs), np.nan)

    def live_losses(
        self,
        predictions: pd.DataFrame,
        rows: pd.DataFrame,
        labels: pd.DataFrame,
        spec: FeatureSpec,
    ) -> np.ndarray:
        """Each logged prediction's loss once its ground truth is known, else NaN:
        `predictions` has `key`, `origin` and `output`; the truth is in the raw `rows` the
        log holds (`logged_rows`) or in people's `labels` (`loopline label import`)."""
        import numpy as np

        return np.full(len(predictions), np.nan)

    def reference_bias(self, y: np.ndarray, outputs: np.ndarray, spec: FeatureSpec):
        """Per test row, (signed error, size of the truth) as an (N, 2) array, for a task
        whose errors have a direction (a forecast too high); None: no bias test."""
        return None

    def live_bias(self, predictions, rows, labels, spec: FeatureSpec):
        """`reference_bias` of logged predictions whose truth is known (NaN else), or None."""
        return None

    def truth_delay(self, spec: FeatureSpec) -> Any | None:
        """How long after a prediction's event time its truth is complete (a Timedelta), or
        None when it comes whenever people give it (labels)."""
        return None

    def live_picture(
        self, predictions: pd.DataFrame, rows: pd.DataFrame, spec: FeatureSpec
    ) -> LivePicture | None:
        """The picture of recent predictions on the operator page (`predictions`: the
        log's `key`, `origin`, `output` and `time`; `rows`: the raw rows as in
        `live_losses`). Default: the first `monitor_outputs` column, a mix of labels if it
        holds text, else a line; None when the task watches no output."""
        outputs = self.monitor_outputs(list(predictions["output"]), spec)
        if outputs.columns.empty:
            return None
        column = outputs.columns[0]
        # No `key`: a classifier's keys are its items' ids, one picture of them all.
        frame = predictions[["time"]].reset_index(drop=True)
        values = outputs[column].reset_index(drop=True)
        if values.dtype.kind in "fiub":
            return LivePicture(
                "lines", f"{column} of each prediction", frame.assign(**{column: values})
            )
        return LivePicture("mix", f"Share of each {column}", frame.assign(label=values.astype(str)))

    def quality_name(self, spec: FeatureSpec) -> str:
        return "mean_loss"

    def quality_from_metrics(self, metrics: dict[str, float]) -> float | None:
        """The live-quality figure of a version's registered test metrics (for versions
        published without a reference profile), or None."""
        return None

    def quality_figure(self, losses: np.ndarray) -> Any:
        """The live-quality figure of per-prediction losses, reduced along the last axis
        (a window's losses, or many reference windows' at once): their mean by default."""
        return losses.mean(axis=-1)


def _steps_as_time(steps: int, spec: FeatureSpec, hook: str) -> pd.Timedelta:
    """`steps` of the spec's step (its options' `freq`), for the former step-counting hooks."""
    import pandas as pd

    if not steps:
        return pd.Timedelta(0)
    step = getattr(spec.options, "freq", None)
    if not step:
        raise ValueError(
            f"{hook}() gives {steps} steps, but the spec has no step to count them in (its "
            "Options declare no `freq`): override split_margin / history_span to return "
            "a pandas Timedelta instead"
        )
    return pd.Timedelta(step) * int(steps)


# ---------------------------------------------------------------------- optional abilities


@runtime_checkable
class HumanLabels(Protocol):
    """People label rows (`loopline label export/import`, active learning)."""

    class_names: ClassVar[tuple[str, ...]]

    def unlabeled_pool(self, rows: pd.DataFrame) -> pd.DataFrame: ...

    def pool_probabilities(self, session: Any, spec: FeatureSpec, pool: pd.DataFrame) -> Any: ...


@runtime_checkable
class FolderSource(Protocol):
    """`ingest.source` may be a folder of files (images, documents)."""

    def load_folder(self, folder: Path, params: Params) -> pd.DataFrame: ...


@runtime_checkable
class Pretraining(Protocol):
    """`loopline pretrain`: self-supervised pretraining on the snapshot's rows, whose
    result the task fine-tunes from (its own params section says where it is)."""

    def pretrain(
        self, rows: pd.DataFrame, params: Params, folder: Path, on_epoch: Any, device: str
    ) -> PretrainResult:
        """Pretrain into a file under `folder`; `on_epoch(epoch, epochs, metrics)` shows
        progress."""
        ...


@dataclass
class PretrainResult:
    """What `Pretraining.pretrain` made: a file to fine-tune from, its metrics and the
    settings it ran with, and the params override (`{path}` stands for the registered
    file's path) that points the task at it."""

    path: Path
    metrics: dict[str, float]
    override: str
    params: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Explaining(Protocol):
    """`loopline explain FILE` and the service's explanations: why the model answered."""

    def explain_file(
        self, data: bytes, session: Any, spec: FeatureSpec, params: Params
    ) -> Explanation: ...


@dataclass
class Explanation:
    answer: dict[str, Any]
    picture: bytes | None = None  # a PNG a person opens
    values: Any = None  # the same as numbers


def abilities(task: Task) -> list[str]:
    """The optional abilities `task` has, by name (for messages and `/metadata`)."""
    kinds = (HumanLabels, FolderSource, Pretraining, Explaining)
    return [kind.__name__ for kind in kinds if isinstance(task, kind)]


REQUIRED = ("name", "schema", "key_columns", "target_column", "Hyperparameters", "Serving")


NAME = re.compile(r"^[a-z][a-z0-9_]*$")
# Folders of the data store beside the tasks' own (`data/<task name>`).
RESERVED_NAMES = frozenset({"labels", "quarantine", "snapshots"})


def task_name_problem(name: Any) -> str | None:
    """Why `name` cannot name a task (None when it can): it becomes a params section, a
    model name and a data folder."""

    if not isinstance(name, str) or not NAME.match(name):
        return f"task name {name!r} must be lower-case letters, digits and '_', from a letter"
    if name in SHARED_SECTIONS or name in RESERVED_NAMES or hasattr(Params, name):
        return f"task name {name!r} is taken (a params section, a data folder or a Params field)"
    return None


def contract_problems(cls: type) -> list[str]:
    """What `cls` misses of the contract (empty when it is complete)."""

    problems = []
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        return [f"{cls!r} is not a subclass of loopline.tasks.base.Task"]
    problems += [f"class attribute {a!r} is not set" for a in REQUIRED if not hasattr(cls, a)]
    name_problem = task_name_problem(getattr(cls, "name", None)) if hasattr(cls, "name") else None
    if name_problem:
        problems.append(name_problem)
    serving = getattr(cls, "Serving", None)
    if serving is not None and not (isinstance(serving, type) and issubclass(serving, Serving)):
        problems.append("Serving must subclass loopline.online.adapter.Serving")
    for method in ("rules", "new_feature_spec", "examples", "build_model", "evaluate"):
        if getattr(cls, method) is getattr(Task, method):
            problems.append(f"method {method}() is not implemented")
    if cls.default_space is Task.default_space:
        problems.append("method default_space() is not implemented")
    hp = getattr(cls, "Hyperparameters", None)
    if hp is not None and not (isinstance(hp, type) and issubclass(hp, Hyperparameters)):
        problems.append("Hyperparameters must subclass loopline.tasks.base.Hyperparameters")
    elif hp is not None and undecorated_hyperparameters(hp):
        problems.append(undecorated_hyperparameters(hp))
    options = getattr(cls, "Options", NoOptions)
    if not (isinstance(options, type) and issubclass(options, FeatureOptions)):
        problems.append("Options must subclass loopline.tasks.base.FeatureOptions")
    params = getattr(cls, "Settings", NoParams)
    if not (isinstance(params, type) and issubclass(params, Section)):
        problems.append("Settings must subclass loopline.config.Section")
    return problems


__all__ = [
    "Explaining",
    "Explanation",
    "FeatureOptions",
    "FolderSource",
    "HumanLabels",
    "Hyperparameters",
    "NoOptions",
    "NoParams",
    "PretrainResult",
    "Pretraining",
    "Task",
    "abilities",
    "contract_problems",
]
