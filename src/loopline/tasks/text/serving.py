"""How a text classifier is served: texts in, a label with probabilities out.

Texts are tokenized with the vocabulary inside the served model, and checked against the
limits saved with it. Each item is answered on its own: a bad one (empty, not a string,
longer than the model's `max_text_chars`) gets an `error` naming the problem while the
others are classified. `/explain` adds each token with
its attention weight; `/stream` takes NDJSON lines `{"id": ..., "text": ...}`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, RootModel

from loopline.online.adapter import Answer, Explaining, Serving, nonfinite_items, refusal
from loopline.online.predlog import text_id
from loopline.tasks.text.answers import classify, explanations, text_problem

if TYPE_CHECKING:
    import pandas as pd

    from loopline.offline.features import FeatureSpec
    from loopline.offline.validate import ServingContract
    from loopline.online.models import LoadedModel


class Text(RootModel[Any]):
    """One text: a string (anything else is answered with an error naming it)."""


class TextLine(BaseModel):
    """One NDJSON line of a text stream."""

    model_config = ConfigDict(extra="forbid")
    id: str | int | None = Field(None, description="Your id for the text, echoed back")
    text: Any = Field(description="The text")


class Classified(BaseModel):
    """The answer for one item: a label with probabilities, or an error."""

    label: str | None = None
    probabilities: dict[str, float] | None = None
    model_version: str | None = None
    tokens: list[dict[str, Any]] | None = Field(
        None, description="explain only: each token and its attention weight"
    )
    error: str | None = None


class TextServing(Serving, Explaining):
    Request: ClassVar[type[BaseModel]] = Text
    Response: ClassVar[type[BaseModel]] = Classified
    input_name: ClassVar[str] = "texts"
    StreamLine: ClassVar[type[BaseModel] | None] = TextLine

    def predict(self, model: LoadedModel, items: list[Text | TextLine]) -> list[Answer]:
        return self._classify(model, items, explain=False)

    def explain(self, model: LoadedModel, items: list[Text | TextLine]) -> list[Answer]:
        """Which syllables each prediction rests on: every token with its attention weight
        (they sum to 1 per text)."""
        return self._classify(model, items, explain=True)

    def describe(self, model: LoadedModel) -> dict[str, Any]:
        options = model.spec.options
        return {
            "labels": model.spec.labels,
            "max_length": options.max_length,
            "vocabulary_size": len(json.loads(options.vocabulary)["tokens"]),
        }

    def input_rows(self, answers: list[Answer]) -> list[dict[str, Any]]:
        """Each classified text with its id (a stream line's own, else the text's
        `text_id`, the prediction log's key); no label: it arrives later, through
        `loopline label import`."""
        key, text = self.task.key_columns[0], self.task.text_column
        return [
            {key: answer.key, text: answer.inputs["text"]}
            for answer in answers
            if isinstance(answer.inputs, dict) and isinstance(answer.inputs.get("text"), str)
        ]

    def requests(self, rows: pd.DataFrame, model: LoadedModel) -> list[Text]:
        return [Text(text) for text in rows[model.spec.options.text_column]]

    def stream_lines(self, rows: pd.DataFrame) -> list[TextLine]:
        ids, texts = rows[self.task.key_columns[0]], rows[self.task.text_column]
        return [TextLine(id=key, text=text) for key, text in zip(ids, texts, strict=True)]

    def _classify(self, model: LoadedModel, items: list, explain: bool) -> list[Answer]:
        """One answer per item; bad items get their error, the rest one model call."""
        texts = [item.text if isinstance(item, TextLine) else item.root for item in items]
        contract = self.contract([self.task.text_column])
        answers: list[Answer | None] = [
            self._refused(item, text, model, contract)
            for item, text in zip(items, texts, strict=True)
        ]
        good = [n for n, answer in enumerate(answers) if answer is None]
        if not good:
            return answers
        probabilities, attention = classify(model.session, model.spec, [texts[n] for n in good])
        # One text's non-finite output (say, a broken model) costs only that text.
        bad = nonfinite_items(probabilities)
        for n in (n for n, wrong in zip(good, bad.tolist(), strict=True) if wrong):
            message = f"the model's output is not finite (v{model.version})"
            answers[n] = Answer(_with_id(items[n], {"error": message}), error=True)
        if bad.any():
            good = [n for n, wrong in zip(good, bad.tolist(), strict=True) if not wrong]
            probabilities, attention = probabilities[~bad], attention[~bad]
        responses = _responses(model, probabilities)
        if explain:
            _add_tokens(responses, [texts[n] for n in good], model.spec, probabilities, attention)
        for n, response in zip(good, responses, strict=True):
            item, text = items[n], texts[n]
            # A stream line carries its id (echoed back, and the log's key); a /predict
            # item not.
            key = item.id if isinstance(item, TextLine) else None
            answers[n] = Answer(
                _with_id(item, response),
                key=str(key if key is not None else text_id(text)),
                inputs={"text": text},
                output={"label": response["label"], "probabilities": response["probabilities"]},
            )
        return answers

    def _refused(
        self, item: Text | TextLine, text: Any, model: LoadedModel, contract: ServingContract
    ) -> Answer | None:
        """The error answer of a text the model cannot classify (None: it can). A problem
        keeps `text_problem`'s wording (a client sends texts, not the data's columns) and
        is counted under the data-contract rules the text breaks (say, `document_not_blank`)."""
        column = self.task.text_column
        broken = contract.check_row({column: text}) if isinstance(text, str) else []
        problem = text_problem(text, model.spec)
        if problem is None and not broken:
            return None
        if problem is None:
            return refusal(broken, named=_with_id(item, {}))
        refused = tuple(dict.fromkeys(b.rule for b in broken))
        return Answer(_with_id(item, {"error": problem}), error=True, refused=refused)


def _responses(model: LoadedModel, probabilities: np.ndarray) -> list[dict[str, Any]]:
    """Each row's response: the label of its highest probability and every probability
    to 6 decimals, for the whole batch at once (a row of Python floats per text, not a
    dict of numpy scalars)."""
    labels = model.spec.labels
    names = [labels[i] for i in probabilities.argmax(axis=1).tolist()]
    return [
        {
            "label": name,
            "probabilities": dict(zip(labels, [round(v, 6) for v in row], strict=True)),
            "model_version": model.version,
        }
        for name, row in zip(names, probabilities.tolist(), strict=True)
    ]


def _add_tokens(
    responses: list[dict[str, Any]],
    texts: list[str],
    spec: FeatureSpec,
    probabilities: np.ndarray,
    attention: np.ndarray,
) -> None:
    """Each response's tokens with their attention weights (`/explain`)."""
    for response, item in zip(
        responses, explanations(texts, spec, probabilities, attention), strict=True
    ):
        response["tokens"] = [
            {"token": t["token"], "weight": round(t["weight"], 6)} for t in item["tokens"]
        ]


def _with_id(item: Text | TextLine, response: dict[str, Any]) -> dict[str, Any]:
    """A stream's answer echoes the line's id first."""
    return {"id": item.id, **response} if isinstance(item, TextLine) else response
