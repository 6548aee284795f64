"""The image family: small images → one of their labels, configured in `image:`.

The source is a folder of PNG/JPEG images with a labels CSV (`file,label`;
`loopline.tasks.image.images`), read at `image.image_size` with `image.channels` (1 grey,
3 RGB), or a task's built-in arrays (`loopline.tasks.digits`: scikit-learn's 8×8 digits).
Labels are strings or integers, two classes or more: `image.labels: null` takes the sorted
distinct labels of the training split, a list fixes them (rows with another label are
quarantined, the reason naming the value).
A row is one image: an `id`, its `label` and one column per pixel value
(`px_<row>_<col>[_<channel>]`), so images travel through ingest, validation (pixel range,
readable, label set, unique ids) and the snapshot like any other rows. Pixels are scaled
to 0..1 by `max_pixel`; the model reads (batch, channels, size, size) images. The size,
channels, scale and label set are saved in the model's feature spec: the service reads
uploads at the served model's size, whatever params say today.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from loopline.config import Dimension, Params, Positive, Section
from loopline.offline.evaluate import evaluate_classifier
from loopline.offline.features import FeatureSpec
from loopline.offline.labeling import Examples
from loopline.offline.reference import EVENT_TIME
from loopline.offline.split import labeled_set
from loopline.offline.validate import Rule
from loopline.onnx_runtime import run_onnx
from loopline.plots import new_figure, save_figure
from loopline.tasks.base import Explanation, FeatureOptions, Hyperparameters, LabelSet, Task
from loopline.tasks.image.images import image_from_bytes, images, pixel_columns, read_image_folder
from loopline.tasks.image.saliency import occlusion_saliency, saliency_png
from loopline.tasks.image.serving import ImageServing
from loopline.tasks.text.task import label_order


def _scaled_as(champion: FeatureSpec, candidate: FeatureSpec) -> FeatureSpec:
    return replace(
        champion, options=replace(champion.options, max_pixel=candidate.options.max_pixel)
    )


class AugmentParams(Section):
    """Random changes to training images (training split only); 0 turns one off."""

    shift_px: Annotated[float, Field(ge=0, le=4)] = 1.0
    rotate_deg: Annotated[float, Field(ge=0, le=45)] = 10.0
    noise: Annotated[float, Field(ge=0, le=0.5)] = 0.02
    contrast: Annotated[float, Field(ge=0, lt=1)] = 0.2


class ImageCommonSettings(Section):
    """What every image task's section holds (`image:`, `digits:`)."""

    channels: Literal[1, 3] = 1  # 1: grey, 3: RGB (notes ch. 3)
    # An image-folder source (`ingest.source: path/to/folder`): the CSV of file,label in it.
    labels_file: str = "labels.csv"
    augment: AugmentParams = AugmentParams()
    # Uploads to the service: the largest side accepted. Uploads and image folders: whether
    # strokes are darker than the paper ("dark": a scan or photo) or lighter ("light": like
    # the built-in digits).
    max_upload_side: Positive = 1024
    upload_ink: Literal["dark", "light"] = "dark"
    # Explanations (`/explain_image`, `loopline explain`): the side of the occluding square.
    saliency_patch: Positive = 2


class ImageSettings(ImageCommonSettings):
    """The image family's section (`image:`): size, channels, scale and the label set."""

    max_pixel: Annotated[float, Field(gt=0)] = 255.0  # the source's white value
    # Images are read at this square size: at least 4, since the CNN halves it twice.
    image_size: Annotated[int, Field(ge=4, le=256)] = 16
    # The classes: None takes the training split's sorted distinct labels; a list fixes
    # them (strings or integers; images with another label are quarantined).
    labels: LabelSet = None


@dataclass(frozen=True)
class ImageOptions(FeatureOptions):
    """How pixel columns become images, saved with the model: the square size, the
    channel count, the source's white value, and the training augmentation."""

    image_size: int
    channels: int
    max_pixel: float
    augment: dict[str, float]


@dataclass(frozen=True, kw_only=True)
class ImageHyperparameters(Hyperparameters):
    """The CNN's width (filters of the first block), its head and its regularisation."""

    channels: int
    hidden_size: int
    dropout: float


class ImageTask(Task):
    """The image family (see the module docstring); `bind` configures it from `image:`."""

    Settings: ClassVar[type[Section]] = ImageSettings
    Hyperparameters: ClassVar[type[Hyperparameters]] = ImageHyperparameters
    Options: ClassVar[type[FeatureOptions]] = ImageOptions
    Serving: ClassVar[type] = ImageServing
    architecture: ClassVar[tuple[str, ...]] = ("channels", "hidden_size")
    name: ClassVar[str] = "image"
    # Rows of any size: the pixel columns follow the section (`schema_for`).
    schema: ClassVar[dict[str, str]] = {
        "id": "string",
        "label": "string",
        **dict.fromkeys(pixel_columns(16), "float"),
    }
    key_columns: ClassVar[list[str]] = ["id"]
    time_column: ClassVar[str | None] = None
    target_column: ClassVar[str] = "label"
    split_kind: ClassVar[Literal["chronological", "stratified", "grouped"]] = "stratified"
    label_type: ClassVar[str] = "string"  # the label column's schema type
    fixed_labels: ClassVar[tuple[str, ...] | None] = None
    # The label set is the training data's (a new head for new labels); pixels need nothing.
    transferred_features: ClassVar[tuple[str, ...]] = ()

    def bind(self, settings: ImageSettings) -> ImageTask:
        """This family configured by its section: its pixel columns and label set."""
        task = copy.copy(self)
        task.schema = self._schema(settings)
        labels = settings.labels
        task.fixed_labels = tuple(str(label) for label in labels) if labels else None
        return task

    def default_space(self) -> dict[str, Dimension]:
        return {
            "channels": Dimension(choices=[16, 32]),
            "hidden_size": Dimension(choices=[64]),
            "dropout": Dimension(low=0.1, high=0.4),
            "learning_rate": Dimension(low=1e-3, high=1e-2, log=True),
            "batch_size": Dimension(choices=[32]),
        }

    def _schema(self, settings) -> dict[str, str]:
        columns = pixel_columns(settings.image_size, settings.channels)
        return {"id": "string", "label": self.label_type, **dict.fromkeys(columns, "float")}

    def schema_for(self, params: Params) -> dict[str, str]:
        return self._schema(self.settings(params))

    def load_builtin(self, params: Params) -> pd.DataFrame:
        raise ValueError(
            f"task {self.name} has no built-in data: point ingest.source at a folder of "
            "PNG/JPEG images with a labels CSV (columns file,label), or at a CSV/Parquet of "
            "pixel rows (id, label, px_<row>_<col>)"
        )

    def load_folder(self, folder: Path, params: Params) -> pd.DataFrame:
        """A folder of PNG/JPEG images with a labels CSV (`<section>.labels_file`)."""

        settings = self.settings(params)
        return read_image_folder(
            folder,
            settings.labels_file,
            settings.image_size,
            settings.channels,
            settings.upload_ink,
            settings.max_pixel,
        )

    def label_rule(self, params: Params) -> Rule | None:
        """The label set a row's label must be in (None: any label)."""
        if not self.fixed_labels:
            return None
        return Rule(
            "label_in_labels", "in_set", column="label", values=self.fixed_labels, show_value=True
        )

    def rules(self, params: Params) -> list[Rule]:
        settings = self.settings(params)
        columns = pixel_columns(settings.image_size, settings.channels)
        label, top = self.label_rule(params), settings.max_pixel
        return [
            Rule("id_not_null", "not_null", column="id"),
            Rule("image_not_duplicated", "unique", columns=("id",)),
            *([label] if label is not None else []),
            # Every pixel present: a file that could not be read has none.
            Rule("image_readable", "complete", columns=tuple(columns)),
            # One rule over all pixels (one reason per image, and one check, not thousands).
            Rule("pixels_in_range", "between", columns=tuple(columns), min=0, max=top),
        ]

    def label_names(self, values: pd.Series) -> pd.Series:
        """The label column's values as class names (missing stays missing)."""
        return values.astype("string")

    def class_ids(self, values: pd.Series, spec: FeatureSpec, target_set: str) -> np.ndarray:
        """Labels as the model's class ids (positions in the spec's label set)."""
        index = {label: i for i, label in enumerate(spec.labels)}
        names = self.label_names(values).tolist()
        unknown = sorted(set(names) - set(index))
        if unknown:
            raise ValueError(
                f"label(s) {unknown} in the {target_set} split are not among the model's "
                f"labels {spec.labels}: too few images of them to split"
            )
        return np.array([index[n] for n in names], dtype=np.int64)

    def new_feature_spec(self, params: Params) -> FeatureSpec:
        settings = self.settings(params)
        size, channels = settings.image_size, settings.channels
        return FeatureSpec(
            task=self.name,
            feature_columns=pixel_columns(size, channels),
            target_column=self.target_column,
            labels=list(self.fixed_labels) if self.fixed_labels else None,
            options=ImageOptions(
                image_size=size,
                channels=channels,
                max_pixel=settings.max_pixel,
                augment=settings.augment.model_dump(),
            ),
        )

    def add_features(self, frame: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
        return frame  # the pixels are the features

    def add_labels(self, frame: pd.DataFrame, spec: FeatureSpec, human=None) -> pd.DataFrame:
        return frame  # the label is a column of the data

    def fit_features(self, spec: FeatureSpec, train_rows: pd.DataFrame) -> FeatureSpec:
        """The label set: fixed, or the labels the training split holds (the model's
        classes, in order). Pixels have a fixed scale: nothing else is learned."""
        if spec.labels is not None:
            return spec
        names = self.label_names(train_rows[spec.target_column]).dropna().unique().tolist()
        if not names:
            raise ValueError("the training split holds no labeled image")
        return replace(spec, labels=label_order([str(name) for name in names]))

    def configure(self, spec: FeatureSpec, hparams: ImageHyperparameters) -> FeatureSpec:
        return spec

    def fine_tuning(self, spec: FeatureSpec, transfer):
        return None

    def augmentation(self, spec: FeatureSpec):
        """Shifts, rotations, noise and contrast on training images (`augment`)."""
        # torch: training only
        from loopline.tasks.image.augment import ImageAugment

        augment = ImageAugment(**spec.options.augment)
        return augment if augment.active else None

    def probe_input(self, spec: FeatureSpec) -> np.ndarray:
        """Two black images, (2, channels, size, size), as the model reads them."""
        size, channels = spec.options.image_size, spec.options.channels
        return np.zeros((2, channels, size, size), np.float32)

    def examples(self, frame: pd.DataFrame, spec: FeatureSpec, target_set: str) -> Examples:
        rows = labeled_set(frame, target_set, spec.target_column)
        return Examples(
            images(rows, spec),
            self.class_ids(rows[spec.target_column], spec, target_set),
            pd.DataFrame({"id": rows["id"].astype(str)}),
        )

    def build_model(self, hparams: ImageHyperparameters, spec: FeatureSpec):
        # torch: training only
        from loopline.tasks.image.model import ImageClassifier

        return ImageClassifier(
            n_classes=len(spec.labels),
            image_size=spec.options.image_size,
            in_channels=spec.options.channels,
            channels=hparams.channels,
            hidden_size=hparams.hidden_size,
            dropout=hparams.dropout,
        )

    def monitor_inputs(self, rows: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
        """An image's brightness and contrast (mean and spread of its pixels, 0..1), not
        each pixel: a profile of every pixel would outweigh the model."""

        pixels = [c for c in spec.feature_columns if c in rows]
        values = rows[pixels].to_numpy(dtype=np.float64) / spec.options.max_pixel
        empty = not pixels
        return pd.DataFrame(
            {
                "brightness": np.full(len(rows), np.nan) if empty else values.mean(axis=1),
                "contrast": np.full(len(rows), np.nan) if empty else values.std(axis=1),
                EVENT_TIME: pd.Series(pd.NaT, index=rows.index, dtype="datetime64[ns, UTC]"),
            },
            index=rows.index,
        )

    def incomparable(self, candidate: FeatureSpec, champion: FeatureSpec) -> str | None:
        """An image model reads images of one size and channel count: the test rows hold
        the candidate's."""
        for name in ("image_size", "channels"):
            mine, theirs = getattr(candidate.options, name), getattr(champion.options, name)
            if mine != theirs:
                return f"its {name} is {theirs!r}, the candidate's {mine!r}"
        return None

    def explain_file(self, data: bytes, session, spec: FeatureSpec, params: Params) -> Explanation:
        """Why the model answers what it does for one uploaded image: an occlusion
        saliency map (red: pixels that support the answer, blue: against) as a PNG."""

        settings = self.settings(params)
        pixels = image_from_bytes(
            data, spec, settings.max_upload_side, settings.upload_ink, self.name
        )
        saliency = occlusion_saliency(
            lambda batch: run_onnx(session, batch), pixels, settings.saliency_patch
        )
        answer = {"label": spec.labels[saliency.target], "probability": saliency.probability}
        return Explanation(answer, saliency_png(pixels, saliency.map), saliency.map)

    def evaluate(self, frame, spec: FeatureSpec, model, params: Params, champion=None):
        """The CNN, a logistic regression on raw pixels (trained here on the same training
        rows) and the champion, on the same test images."""
        from sklearn.linear_model import LogisticRegression

        # torch: training only
        from loopline.offline.train import predict

        test_rows = labeled_set(frame, "test", spec.target_column)
        test = self.examples(frame, spec, "test")
        train = self.examples(frame, spec, "train")
        if not len(test):
            raise ValueError("the test split holds no labeled image: nothing to evaluate on")
        flat = LogisticRegression(max_iter=2000, random_state=params.seed)
        flat.fit(train.x.reshape(len(train), -1), train.y)
        baseline = np.zeros((len(test), len(spec.labels)))
        baseline[:, flat.classes_] = flat.predict_proba(test.x.reshape(len(test), -1))
        return evaluate_classifier(
            test.y,
            {"model": predict(model, test.x), "pixel_logistic_baseline": baseline},
            spec,
            champion,
            # The test rows hold this data's pixel values: scaled by this data's white.
            lambda session, own: run_onnx(session, images(test_rows, _scaled_as(own, spec))),
            params,
        )

    def evaluation_report(
        self, evaluation, frame, spec: FeatureSpec, model, params: Params, folder: Path
    ) -> list[Path]:
        """The confusion matrix of the test images, as a picture."""
        from sklearn.metrics import confusion_matrix

        # torch: training only
        from loopline.offline.train import predict

        test = self.examples(frame, spec, "test")
        predicted = predict(model, test.x).argmax(axis=1)
        labels = spec.labels
        matrix = confusion_matrix(test.y, predicted, labels=range(len(labels)))
        fig, ax = new_figure((6, 5.5))
        ax.imshow(matrix, cmap="Blues")
        for (i, j), count in np.ndenumerate(matrix):
            if count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(labels)), labels)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{self.name}: test confusion matrix")
        return [save_figure(fig, ax, folder / "confusion_matrix.png")]
