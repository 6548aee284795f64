"""How a row task is served: one request item is one row's feature values (and, optionally,
its id); the answer is the label with each class's probability (a classifier) or the
predicted value (a regression). Each NDJSON line of `/stream` is one item.

The request and answer types are made per task from its declared columns
(`serving_for`), so the service's OpenAPI names every feature.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, create_model

from loopline.online.adapter import (
    Answer,
    BadInput,
    Serving,
    refusal,
    run_finite,
    stored_row,
)
from loopline.onnx_runtime import run_onnx

if TYPE_CHECKING:
    from loopline.online.models import LoadedModel
    from loopline.tasks.rows.task import RowTask


class RowServing(Serving):
    """The serving adapter of a `RowTask`; `serving_for` makes one per task class."""

    id_field: ClassVar[str] = "id"
    # Feature column → the request's field for it (its JSON key is the column's name).
    feature_fields: ClassVar[dict[str, str]] = {}

    def check(self, item: BaseModel, model: LoadedModel) -> None:
        missing = [c for c in model.spec.feature_columns if c not in self.feature_fields]
        if missing:
            raise BadInput(
                f"the served model reads feature(s) {missing}, which a request item of this "
                f"task does not hold (it holds {list(self.feature_fields)})"
            )

    def predict(self, model: LoadedModel, items: list[BaseModel]) -> list[Answer]:
        """One model call for every item that passes `check` and the data contract; the
        others, and those whose inputs or outputs are not finite, get an error."""

        answers: list[Answer | None] = [None] * len(items)
        good = []
        contract = self.contract(self.feature_fields)
        for position, item in enumerate(items):
            try:
                self.check(item, model)
            except BadInput as error:
                answers[position] = self._error(item, str(error))
                continue
            broken = contract.check_row(self._values(item))
            if broken:
                answers[position] = refusal(broken, named={self.id_field: self._key(item)})
            else:
                good.append(position)
        if good:
            values = [self._values(items[p]) for p in good]
            # The task's own input code, as in training (a subclass may override it).
            with np.errstate(over="ignore", invalid="ignore"):  # told per item below
                rows = self.task.add_features(pd.DataFrame(values), model.spec)
                x = self.task.inputs(rows, model.spec)
            outputs = run_finite(lambda b: run_onnx(model.session, b), x)
            labels, names = model.spec.labels, list(model.spec.feature_columns)
            for n, position in enumerate(good):
                problem = outputs.problem(n, x, names, values[n])
                answers[position] = (
                    self._error(items[position], problem)
                    if problem
                    else self._answer(items[position], outputs.values[n], labels)
                )
        return [a for a in answers if a is not None]

    def input_rows(self, answers: list[Answer]) -> list[dict[str, Any]]:
        """Each answered row's feature values with its id (one made from its values when
        the client sent none); no target: it is what was asked."""
        return [stored_row(self.id_field, answer) for answer in answers]

    def _error(self, item: BaseModel, message: str) -> Answer:
        key = self._key(item)
        return Answer({self.id_field: key, "error": message}, key=key, error=True)

    def describe(self, model: LoadedModel) -> dict[str, Any]:
        labels = model.spec.labels
        return {
            "id": self.id_field,
            "features": list(model.spec.feature_columns),
            "labels": labels,
            "answer": "label and probabilities" if labels is not None else "value",
        }

    # ------------------------------------------------------------------ helpers

    def _key(self, item: BaseModel) -> str | None:
        return getattr(item, self.id_field)

    def _values(self, item: BaseModel) -> dict[str, float]:
        return {column: getattr(item, field) for column, field in self.feature_fields.items()}

    def _answer(self, item: BaseModel, output, labels: list[str] | None) -> Answer:
        key = self._key(item)
        if labels is None:
            value = float(output[0])
            response = self.Response(**{self.id_field: key, "value": value})
            return Answer(response.model_dump(), key=key, inputs=self._values(item), output=value)
        probabilities = {label: float(p) for label, p in zip(labels, output, strict=True)}
        best = max(probabilities, key=probabilities.__getitem__)
        response = self.Response(
            **{self.id_field: key, "label": best, "probabilities": probabilities}
        )
        return Answer(
            response.model_dump(),
            key=key,
            inputs=self._values(item),
            output=[float(p) for p in output],
        )


def _field_names(columns: list[str], taken: set[str]) -> dict[str, str]:
    """A Python field name per column (the JSON key stays the column's name)."""
    names: dict[str, str] = {}
    for column in columns:
        name = re.sub(r"\W", "_", column)
        if not name.isidentifier() or name.startswith("_"):
            name = f"f_{name}"
        while name in taken:
            name += "_"
        taken.add(name)
        names[column] = name
    return names


REFUSED = "Why this item was not answered (the others are)."


def serving_for(task: type[RowTask]) -> type[RowServing]:
    """The serving adapter of one RowTask class, with its typed request and answer."""
    key = task.id_column
    fields = _field_names(list(task.features), {key})
    config = ConfigDict(extra="forbid", allow_inf_nan=False, populate_by_name=True)
    request = create_model(
        f"{task.__name__}Request",
        __config__=config,
        __doc__=f"One row of {task.name}: its feature values and, optionally, its id.",
        **{key: (str | None, Field(None, description="The row's id, echoed in the answer."))},
        **{name: (float, Field(alias=column)) for column, name in fields.items()},
    )
    if task.classes is not None:
        response = create_model(
            f"{task.__name__}Response",
            __doc__=f"The class of one {task.name} row and each class's probability.",
            **{key: (str | None, None)},
            label=(str | None, Field(None, description=f"One of {list(task.classes)}.")),
            probabilities=(dict[str, float] | None, None),
            error=(str | None, Field(None, description=REFUSED)),
        )
    else:
        response = create_model(
            f"{task.__name__}Response",
            __doc__=f"The predicted {task.target} of one {task.name} row.",
            **{key: (str | None, None)},
            value=(float | None, None),
            error=(str | None, Field(None, description=REFUSED)),
        )
    return type(
        f"{task.__name__}Serving",
        (RowServing,),
        {
            "Request": request,
            "Response": response,
            "StreamLine": request,
            "id_field": key,
            "feature_fields": fields,
            "__doc__": f"Serves {task.name}: {RowServing.__doc__}",
        },
    )
