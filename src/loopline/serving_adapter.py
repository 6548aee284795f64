"""How a task is served: the adapter the one shared service calls (KServe's `Model`).

The service (`serving/service.py`) owns HTTP, adaptive batching, hot swap, readiness,
metrics and the prediction log; a task's `Serving` subclass says only what one request item
is, how a batch of items becomes model input and outputs become answers, and, where the
task streams, what per-key state a stream keeps. Plain Python: no web framework here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

if TYPE_CHECKING:
    from loopline.config import Params
    from loopline.online import LoadedModel


class BadInput(ValueError):
    """One item (or upload) the model cannot answer; `status` is the HTTP status it gets."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Answer:
    """One answered item: what the client gets, and what the prediction log keeps."""

    response: dict[str, Any]
    key: str | None = None
    origin: datetime | None = None
    inputs: Any = None
    output: Any = None
    error: bool = False  # the response is an error message: nothing to log


class Serving:
    """The serving part of a task. Subclasses set the types and override `predict`."""

    # One item of `/predict` (its JSON schema is the API's): the body is
    # `{input_name: [item, ...]}` and the answer a list of `Response`, one per item.
    Request: ClassVar[type[BaseModel]]
    Response: ClassVar[type[BaseModel]]
    input_name: ClassVar[str] = "items"
    # One NDJSON line of `/stream`; None: the task does not stream.
    StreamLine: ClassVar[type[BaseModel] | None] = None

    def __init__(self, task: Any, params: Params) -> None:
        self.task, self.params = task, params

    def check(self, item: BaseModel, model: LoadedModel) -> None:
        """Raise BadInput naming what is wrong with `item` for the served model (runs per
        request, before batching)."""

    def predict(self, model: LoadedModel, items: list[BaseModel]) -> list[Answer]:
        """Answer every item (one model call for the batch where possible); a bad item gets
        an error answer and never fails the others."""
        raise NotImplementedError

    def describe(self, model: LoadedModel) -> dict[str, Any]:
        """What a request must hold for this model (`/metadata`)."""
        return {}

    def open_stream(self, model: LoadedModel) -> StreamState:
        """The state of one `/stream` connection (default: each line is one item)."""
        return StreamState(self)


class StreamState:
    """Per-connection stream state. The default answers each line as one item; a task that
    needs history (say, a window of readings per key) overrides `push` and `follow`."""

    def __init__(self, serving: Serving) -> None:
        self.serving = serving

    def push(self, line: int, item: BaseModel) -> tuple[list[tuple[int, BaseModel]], list[dict]]:
        """Take one parsed line; return the items now ready to answer (with their line) and
        any events to send back at once (errors, notices)."""
        return [(line, item)], []

    def follow(self, model: LoadedModel) -> None:
        """The service hot-swapped `model` in: adapt (say, a new window length)."""


class Explaining:
    """A serving ability: `/explain` answers with why (attention, saliency)."""

    def explain(self, model: LoadedModel, items: list[BaseModel]) -> list[Answer]:
        raise NotImplementedError


class FileInput:
    """A serving ability: `/predict_file` (and `/explain_file` with Explaining) take one
    uploaded file (an image, a document)."""

    def item_from_file(self, data: bytes, filename: str, model: LoadedModel) -> BaseModel:
        """The request item an upload stands for; raise BadInput (415, 413, 400) naming
        the problem."""
        raise NotImplementedError
