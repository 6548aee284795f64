"""Task plug-ins: what differs per task (solar, reviews, digits), and nothing else.

Shared stages call a task only through the `Task` contract below and never test which task
they run, so adding a task never edits a stage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

if TYPE_CHECKING:
    from pathlib import Path

    import pandas as pd
    import torch

    from loopline.config import Params
    from loopline.evaluate import Evaluation
    from loopline.features import FeatureSpec
    from loopline.labeling import Examples
    from loopline.validate import Rule


class Task(Protocol):
    """The contract every built-in task implements."""

    name: ClassVar[str]
    # Column types of the raw data contract: "float", "string" or "datetime".
    schema: ClassVar[dict[str, str]]
    key_columns: ClassVar[list[str]]
    time_column: ClassVar[str | None]
    target_column: ClassVar[str]
    # chronological: by time with gaps; grouped: no group (say, a movie) in two sets.
    split_kind: ClassVar[Literal["chronological", "stratified", "grouped"]]
    # What a model started from another (`train.init_from`) reads the source's way: feature
    # spec fields or options fitted on data (scaling, a vocabulary) that its weights expect.
    transferred_features: ClassVar[tuple[str, ...]]

    def load_builtin(self, params: Params) -> pd.DataFrame: ...

    def schema_for(self, params: Params) -> dict[str, str]:
        """The raw data contract under these params (say, an image size sets the pixel
        columns); `schema` when nothing in params changes it."""
        ...

    def rules(self, params: Params) -> list[Rule]: ...

    def add_features(self, frame: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame: ...

    def new_feature_spec(self, params: Params) -> FeatureSpec: ...

    def add_labels(
        self, frame: pd.DataFrame, spec: FeatureSpec, human: pd.DataFrame | None = None
    ) -> pd.DataFrame:
        """Rows with their labels: from the data, and `human` ones (`loopline label
        import`) where the task takes them."""
        ...

    def fit_features(self, spec: FeatureSpec, train_rows: pd.DataFrame) -> FeatureSpec:
        """What is learned from the training split only (scaling, a vocabulary)."""
        ...

    def configure(self, spec: FeatureSpec, hparams: dict[str, Any]) -> FeatureSpec:
        """The spec a model with these hyperparameters reads (say, its input window)."""
        ...

    def examples(self, frame: pd.DataFrame, spec: FeatureSpec, target_set: str) -> Examples:
        """Model-ready inputs and labels of one split set ("train", "val" or "test")."""
        ...

    def build_model(self, hparams: dict[str, Any], spec: FeatureSpec) -> torch.nn.Module: ...

    def augmentation(self, spec: FeatureSpec) -> Any | None:
        """Random changes to training batches (`train.Augment`), or None."""
        ...

    def fine_tuning(self, spec: FeatureSpec, transfer: Any) -> Any | None:
        """How `train.fit` fine-tunes a model the task pretrained itself (see
        `train.FineTuning`; `transfer` is the `train.transfer` section), or None."""
        ...

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
        ...

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
        ...


def get_task(name: str) -> Task:
    """The task plug-in called `name`."""
    if name == "solar":
        from loopline.tasks.solar.task import SolarTask

        return SolarTask()
    if name == "reviews":
        from loopline.tasks.reviews.task import ReviewsTask

        return ReviewsTask()
    if name == "digits":
        from loopline.tasks.digits.task import DigitsTask

        return DigitsTask()
    raise KeyError(f"unknown task {name!r}; built-in tasks: ['solar', 'reviews', 'digits']")
