"""Handwritten digits: small grey images → the digit shown (0-9).

The image family (`loopline.tasks.image`) with built-in arrays: scikit-learn's digits
(1,797 images of 8×8 pixels, values 0..16, from 43 writers). A user's source is any folder
of PNG/JPEG images with a labels CSV, read at `digits.image_size` with `digits.channels`.
Labels are digits: a label that is not one is quarantined; the model's classes are the
digits the training split holds.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import pandas as pd
from pydantic import Field

from loopline.config import Params, Section
from loopline.offline.validate import Rule
from loopline.tasks.image.images import pixel_columns
from loopline.tasks.image.task import ImageCommonSettings, ImageTask

CLASSES = tuple(str(d) for d in range(10))
BUILTIN_SIZE = 8


class DigitsParams(ImageCommonSettings):
    """The digits task: small grey images of handwritten digits → the digit (0-9)."""

    max_pixel: Annotated[float, Field(gt=0)] = 16.0  # the source's white (sklearn: 16)
    # Images are read at this square size (the built-in digits are 8): at least 4, since
    # the CNN halves it twice.
    image_size: Annotated[int, Field(ge=4, le=256)] = 8


class DigitsTask(ImageTask):
    Settings: ClassVar[type[Section]] = DigitsParams
    name: ClassVar[str] = "digits"
    schema: ClassVar[dict[str, str]] = {
        "id": "string",
        "label": "float",
        **dict.fromkeys(pixel_columns(BUILTIN_SIZE), "float"),
    }
    label_type: ClassVar[str] = "float"
    class_names: ClassVar[tuple[str, ...]] = CLASSES

    def bind(self, settings: DigitsParams) -> DigitsTask:
        return self  # the labels are digits; the pixel columns follow `schema_for`

    def load_builtin(self, params: Params) -> pd.DataFrame:
        from sklearn.datasets import load_digits

        if params is not None and (params.digits.image_size, params.digits.channels) != (
            BUILTIN_SIZE,
            1,
        ):
            raise ValueError(
                f"the built-in digits are {BUILTIN_SIZE}×{BUILTIN_SIZE} grey images; "
                f"digits.image_size is {params.digits.image_size} and digits.channels "
                f"{params.digits.channels} (set 8 and 1, or ingest an image folder)"
            )
        digits = load_digits()
        frame = pd.DataFrame(digits.data, columns=pixel_columns(BUILTIN_SIZE))
        frame.insert(0, "label", digits.target.astype(float))
        frame.insert(0, "id", [f"sklearn-{i}" for i in range(len(frame))])
        return frame

    def label_rule(self, params: Params) -> Rule:
        return Rule(
            "label_is_a_digit", "in_set", column="label", values=tuple(map(float, range(10)))
        )

    def label_names(self, values: pd.Series) -> pd.Series:
        """1.0 → "1" (the data's labels are numbers)."""
        return values.map(lambda v: str(int(v)) if pd.notna(v) else pd.NA).astype("string")
