"""How a tabular model is served: one request item is one row, `{"<column>": value, ...}`
with the served model's feature columns (and, optionally, its id column); the answer is
the label with each class's probability, or the predicted value.

The columns differ per project and per model, so an item's fields are checked against the
served model's feature spec (`check`), never against today's params: a missing feature or
a number given text is a 400 naming the column and value; other fields are ignored. A category
the model never saw is answered (through its column's "other" input) and named in the
answer's `unseen`.
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from loopline.online.adapter import (
    Answer,
    BadInput,
    Serving,
    _plain,
    refusal,
    run_finite,
    stored_row,
)
from loopline.onnx_runtime import run_onnx
from loopline.tasks.tabular.encoding import unseen

if TYPE_CHECKING:
    from loopline.online.models import LoadedModel

REFUSED = "Why this item was not answered (the others are)."
_FLOAT_MAX = sys.float_info.max


class TabularRow(BaseModel):
    """One row: each feature column of the served model by its name (see `/metadata`),
    and optionally the row's id column."""

    model_config = ConfigDict(extra="allow")


class TabularAnswer(BaseModel):
    """The class of one row and each class's probability (a classifier), or its predicted
    value (a regression)."""

    id: str | None = Field(None, description="The row's id, echoed.")
    label: str | None = None
    probabilities: dict[str, float] | None = None
    value: float | None = None
    unseen: list[str] | None = Field(
        None, description="`column='value'` categories the model never learned (answered)."
    )
    error: str | None = Field(None, description=REFUSED)


class TabularServing(Serving):
    Request = TabularRow
    Response = TabularAnswer
    StreamLine = TabularRow

    def check(self, item: BaseModel, model: LoadedModel) -> None:
        row_values(item, model.spec)

    def predict(self, model: LoadedModel, items: list[BaseModel]) -> list[Answer]:
        """One model call for every item that passes `check` and the data contract; the
        others, and those whose inputs or outputs are not finite, get an error."""

        spec = model.spec
        answers: list[Answer | None] = [None] * len(items)
        good, rows = [], []
        contract = self.contract(spec.feature_columns)
        for position, item in enumerate(items):
            key = _key(item, spec)
            try:
                row = row_values(item, spec)
            except BadInput as error:
                answers[position] = Answer({"id": key, "error": str(error)}, key=key, error=True)
                continue
            broken = contract.check_row(row)
            if broken:
                answers[position] = refusal(broken, named={"id": key})
            else:
                rows.append(row)
                good.append(position)
        if good:
            frame = pd.DataFrame(rows, columns=spec.feature_columns)
            with np.errstate(over="ignore", invalid="ignore"):  # told per item below
                x = self.task.inputs(frame, spec)
            outputs = run_finite(lambda b: run_onnx(model.session, b), x)
            novel = unseen(frame, spec.options.vocabulary)
            numeric = list(spec.options.numeric)  # the first inputs, in this order
            for n, (position, row, new) in enumerate(zip(good, rows, novel, strict=True)):
                key = _key(items[position], spec)
                problem = outputs.problem(n, x, numeric, row)
                answers[position] = (
                    Answer({"id": key, "error": problem}, key=key, error=True)
                    if problem
                    else _answer(key, row, outputs.values[n], new, spec)
                )
        return [a for a in answers if a is not None]

    def input_rows(self, answers: list[Answer]) -> list[dict[str, Any]]:
        """Each answered row's feature values with its id (one made from its values when
        the client sent none); no target: it is what was asked."""
        return [stored_row(self.task.key_columns[0], answer) for answer in answers]

    def describe(self, model: LoadedModel) -> dict[str, Any]:
        spec, options = model.spec, model.spec.options
        return {
            "id": options.id_column,
            "numeric": list(options.numeric),
            "categorical": {c: options.vocabulary.get(c, []) for c in options.categorical},
            "labels": spec.labels,
            "answer": "label and probabilities" if spec.labels is not None else "value",
        }

    def requests(self, rows: pd.DataFrame, model: LoadedModel) -> list[Any]:
        return self.stream_lines(rows)

    def stream_lines(self, rows: pd.DataFrame) -> list[Any]:
        """One item per raw row, every column by its name (those the model does not read
        are ignored)."""
        return [
            TabularRow.model_validate(dict(zip(rows.columns, map(_plain, row), strict=True)))
            for row in rows.itertuples(index=False, name=None)
        ]


def row_values(item: BaseModel, spec) -> dict[str, Any]:
    """The item's feature values, checked against the model's spec; BadInput names the
    column and value of the first problem of each kind."""
    options = spec.options
    # Other fields (a whole row sent as it is, target included) are ignored; a misspelt
    # feature is still caught, as missing.
    values = dict(item.model_extra or {})
    missing = [c for c in spec.feature_columns if values.get(c) is None]
    if missing:
        raise BadInput(f"feature(s) {missing} missing: the served model reads each of them")
    row: dict[str, Any] = {}
    for column in options.numeric:
        value = values[column]
        number = finite_float(value)
        if number is None:
            raise BadInput(f"feature {column!r} is a number; got {shown(value)}")
        row[column] = number
    for column in options.categorical:
        value = values[column]
        if not isinstance(value, str | int | float | bool):
            raise BadInput(f"feature {column!r} is a category (text); got {value!r}")
        row[column] = str(value)
    return row


def finite_float(value: Any) -> float | None:
    """`value` as a finite float, or None: not a number, or not finite, or an integer no
    float holds (JSON writes any number of digits; `float` would raise OverflowError)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def shown(value: Any) -> str:
    """A value for a message; an integer no float holds by its length, not its digits."""
    if isinstance(value, int) and abs(value) > _FLOAT_MAX:
        return f"an integer of {len(str(abs(value)))} digits, which no float holds"
    return repr(value)


def _key(item: BaseModel, spec) -> str | None:
    key = (item.model_extra or {}).get(spec.options.id_column)
    return None if key is None else str(key)


def _answer(key: str | None, row: dict, output, new: list[str], spec) -> Answer:
    extra = {"unseen": new} if new else {}
    if spec.labels is None:
        value = float(output[0])
        response = TabularAnswer(id=key, value=value, **extra)
        return Answer(response.model_dump(), key=key, inputs=row, output=value)
    probabilities = {label: float(p) for label, p in zip(spec.labels, output, strict=True)}
    best = max(probabilities, key=probabilities.__getitem__)
    response = TabularAnswer(id=key, label=best, probabilities=probabilities, **extra)
    return Answer(
        response.model_dump(),
        key=key,
        inputs=row,
        output=[float(p) for p in output],
    )
