"""The task contract's public names, in one place: what a team imports to write a task.

A task is a package holding everything about itself (see docs/own-task.md for a walk-through
of one outside the built-in families). Subclass `Task` (or `RowTask`, one row = one
example), type its params section (`Section`), hyperparameters (`Hyperparameters`, a
`@dataclass(frozen=True, kw_only=True)`) and feature options (`FeatureOptions`), and serve
it with a `Serving` subclass. `check_task` runs the contract kit on it.

Where each name lives (for `help()` and for reading its source):

- `loopline.tasks.base`: Task, Hyperparameters, FeatureOptions, NoOptions, NoParams,
  LabelSet, LivePicture, EVENT_TIME (the event-time column of `Task.monitor_inputs`) and
  the abilities (HumanLabels, FolderSource, Pretraining, Explaining, Explanation,
  PretrainResult);
- `loopline.tasks.rows`: RowTask, RowServing;
- `loopline.config`: Section, Dimension, Params;
- `loopline.offline.features`: FeatureSpec, fit_normalization, normalize, scale_target,
  unscale_target;
- `loopline.offline.labeling`: Examples;
- `loopline.offline.evaluate`: Evaluation, Decision, Scores, ClassScores, score,
  score_classes, evaluate_classifier, judge;
- `loopline.offline.validate`: Rule;
- `loopline.offline.export`: run_onnx, run_onnx_outputs, ExportsItself;
- `loopline.online.models`: LoadedModel;
- `loopline.online.adapter`: Serving, StreamState, Answer, BadInput, FileInput,
  ServingExplaining (the adapter's `Explaining`), refusal, nonfinite_items, run_finite,
  stored_row, items_from_rows;
- `loopline.testing`: check_task, contract_report, ContractViolation.
"""

from loopline.config import Dimension, Params, Section
from loopline.offline.evaluate import (
    ClassScores,
    Decision,
    Evaluation,
    Scores,
    evaluate_classifier,
    judge,
    score,
    score_classes,
)
from loopline.offline.export import ExportsItself
from loopline.offline.features import (
    FeatureSpec,
    fit_normalization,
    normalize,
    scale_target,
    unscale_target,
)
from loopline.offline.labeling import Examples
from loopline.offline.validate import Rule
from loopline.online.adapter import (
    Answer,
    BadInput,
    FileInput,
    Serving,
    StreamState,
    items_from_rows,
    nonfinite_items,
    refusal,
    run_finite,
    stored_row,
)
from loopline.online.adapter import Explaining as ServingExplaining
from loopline.online.models import LoadedModel
from loopline.onnx_runtime import run_onnx, run_onnx_outputs
from loopline.tasks.base import (
    EVENT_TIME,
    Explaining,
    Explanation,
    FeatureOptions,
    FolderSource,
    HumanLabels,
    Hyperparameters,
    LabelSet,
    LivePicture,
    NoOptions,
    NoParams,
    Pretraining,
    PretrainResult,
    Task,
)
from loopline.tasks.rows import RowServing, RowTask
from loopline.testing import ContractViolation, check_task, contract_report

__all__ = [
    "EVENT_TIME",
    "Answer",
    "BadInput",
    "ClassScores",
    "ContractViolation",
    "Decision",
    "Dimension",
    "Evaluation",
    "Examples",
    "Explaining",
    "Explanation",
    "ExportsItself",
    "FeatureOptions",
    "FeatureSpec",
    "FileInput",
    "FolderSource",
    "HumanLabels",
    "Hyperparameters",
    "LabelSet",
    "LivePicture",
    "LoadedModel",
    "NoOptions",
    "NoParams",
    "Params",
    "PretrainResult",
    "Pretraining",
    "RowServing",
    "RowTask",
    "Rule",
    "Scores",
    "Section",
    "Serving",
    "ServingExplaining",
    "StreamState",
    "Task",
    "check_task",
    "contract_report",
    "evaluate_classifier",
    "fit_normalization",
    "items_from_rows",
    "judge",
    "nonfinite_items",
    "normalize",
    "refusal",
    "run_finite",
    "run_onnx",
    "run_onnx_outputs",
    "scale_target",
    "score",
    "score_classes",
    "stored_row",
    "unscale_target",
]
