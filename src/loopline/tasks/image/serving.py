"""How an image classifier is served: images in, class probabilities out.

- `POST /predict` {"images": [[[...]]]}: images as arrays (size × size for a grey model,
  channels × size × size for an RGB one; values 0..1, ink high); an image of the wrong shape,
  or a pixel that is no finite float32, is a 400 naming it.
- `POST /predict_image`: one PNG or JPEG upload (multipart field `file`); not an image, too
  large or of an unsupported channel count is a 4xx naming the problem.
- `POST /explain_image` (and `/explain` for arrays): the answer with its occlusion saliency
  map (`loopline.tasks.image.saliency`, on the ONNX model): red pixels support the answer,
  blue ones speak against it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import numpy as np
from pydantic import BaseModel, Discriminator, Field, RootModel, Tag

from loopline.online.adapter import (
    Answer,
    BadInput,
    Explaining,
    FileInput,
    Serving,
    refusal,
    run_finite,
)
from loopline.onnx_runtime import run_onnx
from loopline.tasks.image.images import BadImage, image_from_bytes, images
from loopline.tasks.image.saliency import occlusion_saliency, saliency_png

if TYPE_CHECKING:
    import pandas as pd

    from loopline.offline.features import FeatureSpec
    from loopline.online.models import LoadedModel


# The model reads pixels as float32: a larger number (or one no float holds, as an
# integer of 400 digits) is refused by the request's type, naming the pixel, before any
# conversion. Bounds rather than a validator function: they run in pydantic's core, which
# matters at thousands of pixels an image.
FLOAT32_MAX = float(np.finfo(np.float32).max)
Pixel = Annotated[float, Field(allow_inf_nan=False, ge=-FLOAT32_MAX, le=FLOAT32_MAX)]


def image_kind(value: Any) -> str | None:
    """'rgb' for channels of rows, 'grey' for rows of pixels; None for no list at all.
    Chosen once per image, so an error names the pixel only once (not for each kind)."""
    if not isinstance(value, list):
        return None
    first = value[0] if value else None
    return "rgb" if isinstance(first, list) and first and isinstance(first[0], list) else "grey"


class Image(
    RootModel[
        Annotated[
            Annotated[list[list[Pixel]], Tag("grey")]
            | Annotated[list[list[list[Pixel]]], Tag("rgb")],
            Discriminator(
                image_kind,
                custom_error_type="image_type",
                custom_error_message="an image is rows of pixel values, or channels of rows",
            ),
        ]
    ]
):
    """One image (0..1, ink high): rows of pixel values for a grey model, or channels of
    rows for an RGB one."""


class ImageAnswer(BaseModel):
    label: str
    probabilities: dict[str, float]
    model_version: str


class ImageExplanation(ImageAnswer):
    probability: float  # of the label, on the whole image
    saliency: list[list[float]]  # per pixel: how much covering it lowers the answer (nats)


def image_shape(spec: FeatureSpec) -> tuple[int, ...]:
    """The shape an image array must have for the model."""
    size, channels = spec.options.image_size, spec.options.channels
    return (size, size) if channels == 1 else (channels, size, size)


def _shown(shape: tuple[int, ...]) -> str:
    return "×".join(map(str, shape))


class ImageServing(Serving, Explaining, FileInput):
    Request: ClassVar[type[BaseModel]] = Image
    Response: ClassVar[type[BaseModel]] = ImageAnswer
    input_name: ClassVar[str] = "images"
    Explanation: ClassVar[type[BaseModel] | None] = ImageExplanation
    file_kind: ClassVar[str] = "image"

    def check(self, item: Image, model: LoadedModel) -> None:
        self._array(item, model.spec)

    def predict(self, model: LoadedModel, items: list[Image | np.ndarray]) -> list[Answer]:
        """Each image's answer; an image of the wrong shape (the model swapped since
        `check`), breaking the data contract, or whose inputs or outputs are not finite
        gets its own error and the others are answered."""
        answers: dict[int, Answer] = {}
        arrays = {}
        for n, item in enumerate(items):
            try:
                arrays[n] = self._array(item, model.spec)
            except BadInput as error:
                answers[n] = Answer({"error": str(error)}, error=True)
        if arrays:
            positions = list(arrays)
            stacked = np.stack(list(arrays.values()))  # (images, channels, size, size)
            answers |= self._refusals(positions, stacked, model.spec)
            kept = [k for k, n in enumerate(positions) if n not in answers]
            if kept:
                images = stacked if len(kept) == len(stacked) else stacked[kept]
                answers |= self._run(model, [positions[k] for k in kept], images)
        return [answers[n] for n in range(len(items))]

    def _run(self, model: LoadedModel, positions: list[int], images: np.ndarray):
        """The answers of `images` (by their items' `positions`) from one model call; an
        image whose inputs or outputs are not finite gets its own error."""
        outputs = run_finite(lambda b: run_onnx(model.session, b), images)
        wrong = outputs.bad_inputs | outputs.bad_outputs
        answers = {
            positions[k]: Answer(
                {"error": f"image: {outputs.problem(k, images, [], {})}"}, error=True
            )
            for k in np.flatnonzero(wrong).tolist()
        }
        values = outputs.values[~wrong] if answers else outputs.values
        made = self._answers(model, values, list(images.shape[1:]))
        fine = [n for n in positions if n not in answers]
        return answers | dict(zip(fine, made, strict=True))

    def _refusals(
        self, positions: list[int], images: np.ndarray, spec: FeatureSpec
    ) -> dict[int, Answer]:
        """Error answers of the images breaking the data contract (by the items'
        `positions`), checked on the raw pixel columns the rules name (an image is sent
        scaled to 0..1)."""
        contract = self.contract(spec.feature_columns)
        if not contract.rules:
            return {}
        # Columns run row by row, then column, then channel (`images.pixel_columns`).
        raw = images.transpose(0, 2, 3, 1).reshape(len(images), -1)
        # Column arrays, not a DataFrame: a frame of one image costs more than its answer.
        scaled = raw * spec.options.max_pixel
        rows = dict(zip(spec.feature_columns, scaled.T, strict=True))
        scale = f" (pixels are sent as raw / {spec.options.max_pixel:g})"
        out = {}
        for row, broken in contract.check(rows).items():
            answer = refusal(broken)
            answer.response["error"] += scale
            out[positions[row]] = answer
        return out

    def explain(self, model: LoadedModel, items: list[Image | np.ndarray]) -> list[Answer]:
        """Each answer with its occlusion saliency map, as numbers and as a PNG."""
        patch = self.task.settings(self.params).saliency_patch
        answers = []
        for answer, item in zip(self.predict(model, items), items, strict=True):
            answers.append(answer)
            if answer.error:
                continue
            image = self._array(item, model.spec)
            saliency = occlusion_saliency(lambda b: run_onnx(model.session, b), image, patch)
            answer.response["probability"] = round(saliency.probability, 6)
            answer.response["saliency"] = np.round(saliency.map, 6).tolist()
            answer.picture = saliency_png(image, saliency.map)
        return answers

    def item_from_file(self, data: bytes, model: LoadedModel) -> np.ndarray:
        settings = self.task.settings(self.params)
        try:
            return image_from_bytes(
                data, model.spec, settings.max_upload_side, settings.upload_ink, self.task.name
            )
        except BadImage as error:
            raise BadInput(str(error), error.status) from None

    def requests(self, rows: pd.DataFrame, model: LoadedModel) -> list[Image]:
        arrays = images(rows, model.spec)  # (N, channels, size, size)
        if model.spec.options.channels == 1:
            arrays = arrays[:, 0]  # a grey image is sent as its rows
        return [Image(array.tolist()) for array in arrays]

    def input_rows(self, answers: list[Answer]) -> list[dict[str, Any]]:
        """None: an image's raw form is its file (an upload, a folder's image with a
        labels CSV), not a row. What the service holds is the image already resized to
        the served model's size, which is not the source's data, and a photo's pixels are
        no row for a database table; the labels would arrive later anyway. Storing uploads
        as files for `ingest.source: <folder>` is a later step."""
        return []

    def describe(self, model: LoadedModel) -> dict[str, Any]:
        return {
            "labels": model.spec.labels,
            "image_size": model.spec.options.image_size,
            "channels": model.spec.options.channels,
        }

    def _array(self, item: Image | np.ndarray, spec: FeatureSpec) -> np.ndarray:
        """The (channels, size, size) float32 array of one image; BadInput naming a wrong
        shape."""
        expected = image_shape(spec)
        size, channels = spec.options.image_size, spec.options.channels
        if isinstance(item, np.ndarray):  # an upload, read at the shape of the model then
            array = item
            if array.shape != (channels, size, size):
                raise BadInput("the served model changed while the upload was read: send again")
        else:
            try:
                array = np.asarray(item.root, dtype=np.float32)
            except (ValueError, TypeError):
                array = None  # ragged rows or non-numbers
            if array is None or array.shape != expected:
                shape = "ragged" if array is None else _shown(array.shape)
                raise BadInput(f"image is {shape}; the model reads {_shown(expected)}")
        return array.astype(np.float32, copy=False).reshape(channels, size, size)

    def _answers(self, model: LoadedModel, probabilities: np.ndarray, shape: list[int]):
        """The answers of a batch's outputs, at once: each row's label and probabilities
        to 6 decimals (a row of Python floats, not a dict of numpy scalars)."""
        labels = model.spec.labels
        names = [labels[i] for i in probabilities.argmax(axis=1).tolist()]
        return [
            Answer(
                {
                    "label": name,
                    "probabilities": dict(zip(labels, [round(v, 6) for v in row], strict=True)),
                    "model_version": model.version,
                },
                inputs={"shape": shape},
                output={"label": name},
            )
            for name, row in zip(names, probabilities.tolist(), strict=True)
        ]
