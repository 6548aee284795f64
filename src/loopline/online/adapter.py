"""How a task is served: the adapter the one shared service calls (KServe's `Model`).

The service (`serving/service.py`, a framework class) owns HTTP, adaptive batching, hot
swap, readiness, metrics and the prediction log; a task's `Serving` subclass says only
what one request item is, how a batch of items becomes model input and outputs become
answers, and, where the task streams, what per-key state a stream keeps. Plain Python:
no web framework here.

What each API of the service asks of the adapter:

- `POST /predict` (adaptive batching): `Request` (one item; the body is `{input_name:
  [item, ...]}`), `check` (per item, before batching), `predict`, `Response` (one answer);
- `POST /stream` (NDJSON, only with a `StreamLine`): `open_stream` → a `StreamState`; each
  item it hands on that is a `Request` (either form) or the `StreamLine` itself passes
  `check` too (a refused one is an error line);
- `POST /explain` (only with the `Explaining` ability): `explain`, `Explanation`;
- `POST /predict_<file_kind>`, `/explain_<file_kind>` (only with `FileInput`): uploads;
- `GET /metadata`: `describe`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import BaseModel

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    import pandas as pd

    from loopline.config import Params
    from loopline.offline.validate import Broken, ServingContract
    from loopline.online.models import LoadedModel


class BadInput(ValueError):
    """Input the model cannot answer; `status` is the HTTP status it gets. Raised by `check`
    (one item: the request is refused), `item_from_file` (an upload), or `predict` when a
    whole batch cannot be answered."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Answer:
    """One answered item: what the client gets, and what the prediction log keeps."""

    response: dict[str, Any]  # the `Response` (or `Explanation`) fields, JSON-ready
    key: str | None = None  # the log's key: the group the prediction is for (a site, an id)
    origin: datetime | None = None  # the log's origin, where there is one (a time series')
    inputs: Any = None  # the inputs' key fields, for the log
    output: Any = None  # the output, for the log
    error: bool = False  # `response` is an error message: the item is not logged
    picture: bytes | None = None  # explanations: a PNG a person opens
    # The data-contract rules the item broke (validation's names), counted per rule.
    refused: tuple[str, ...] = ()
    # The item as the adapter holds it (say, its arrays), for `Serving.input_rows`:
    # never sent, and converted to rows only when the service stores inputs.
    source: Any = None


@dataclass(frozen=True)
class Refused:
    """An item already known to be unanswerable (say, a stream reading that breaks the
    data contract), with its error answer: the service answers it and the adapter never
    sees it, so a `StreamState` can hand it over in line order like any ready item."""

    answer: Answer


def answer_items(items: list[Any], call: Callable, model: LoadedModel) -> list[Answer]:
    """`call`'s answers (the adapter's `predict` or `explain`) for the items, with `Refused`
    ones answered by their own error, in order."""
    if not any(isinstance(item, Refused) for item in items):
        return call(model, items)
    asked = [item for item in items if not isinstance(item, Refused)]
    answered = iter(call(model, asked) if asked else [])
    return [item.answer if isinstance(item, Refused) else next(answered) for item in items]


def describe_validation(error: Any) -> str:
    """A pydantic ValidationError as one line naming each bad field."""
    problems = []
    for item in error.errors(include_url=False):
        where = ".".join(str(p) for p in item["loc"])
        problems.append(f"{where}: {item['msg']}" if where else item["msg"])
    return "; ".join(problems)


def refusal(broken: list[Broken], where: str = "", named: dict[str, Any] | None = None) -> Answer:
    """The error answer of an item whose row(s) broke the data contract: each rule named
    with its column and value (`where` says which row of the item, say `readings[3]`)."""
    prefix = f"{where}." if where else ""
    message = "; ".join(f"{prefix}{b}" for b in broken)
    return Answer(
        {**(named or {}), "error": f"refused by the data contract: {message}"},
        key=None,
        error=True,
        refused=tuple(dict.fromkeys(b.rule for b in broken)),
    )


def nonfinite_items(values: np.ndarray) -> np.ndarray:
    """Which items (first axis) of an array hold a NaN or an infinity (none of none: an
    empty array cannot be reshaped to one row per item)."""
    if len(values) == 0:
        return np.zeros(0, dtype=bool)
    return ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)


@dataclass
class Outputs:
    """A model's outputs for a batch whose items' inputs were checked one by one."""

    values: np.ndarray  # one row per item; NaN where the model was not run
    bad_inputs: np.ndarray  # items whose inputs were not finite (the model never saw them)
    bad_outputs: np.ndarray  # items whose outputs are not finite

    def problem(self, n: int, inputs: np.ndarray, names: list[str], raw: dict) -> str | None:
        """Why item `n` has no answer (None: it has one), naming the input (`names`: the
        first inputs' columns) and its raw value."""
        if self.bad_inputs[n]:
            return input_problem(inputs[n], names, raw)
        if self.bad_outputs[n]:
            return f"the model's output is not finite: {self.values[n].tolist()}"
        return None


def run_finite(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> Outputs:
    """`run` (a model call) on the items of `x` whose inputs are all finite: one item's
    absurd value costs only that item its answer."""
    bad = nonfinite_items(x) if x.dtype.kind == "f" else np.zeros(len(x), dtype=bool)
    if not bad.any():
        values = run(x)
    elif bad.all():
        values = np.full((len(x), 1), np.nan)
    else:
        found = run(x[~bad])
        values = np.full((len(x), *found.shape[1:]), np.nan)
        values[~bad] = found
    return Outputs(values, bad, nonfinite_items(values) & ~bad)


def input_problem(inputs: np.ndarray, names: list[str], raw: dict) -> str:
    """The first non-finite model input of one item, by its column and raw value. An item
    of several rows (a sequence, a set: `names` are its last axis's columns) names the row
    too."""
    at = tuple(int(i) for i in np.argwhere(~np.isfinite(inputs))[0])
    if inputs.ndim > 1 and len(names) == inputs.shape[-1]:
        name, row = names[at[-1]], f" (row {', '.join(map(str, at[:-1]))} of the item)"
    else:
        flat = int(np.ravel_multi_index(at, inputs.shape)) if inputs.ndim else 0
        name, row = (names[flat], "") if flat < len(names) else (f"model input {at}", "")
    value = f"={raw[name]!r}" if name in raw else ""
    return f"{name}{value}{row} gives a non-finite model input (out of any plausible range)"


class Serving:
    """The serving part of a task. Subclasses set the types and override `predict`."""

    # One item of `/predict` (its JSON schema is the API's): the body is
    # `{input_name: [item, ...]}` and the answer a list of `Response`, one per item.
    Request: ClassVar[type[BaseModel]]
    Response: ClassVar[type[BaseModel]]
    input_name: ClassVar[str] = "items"
    # Another form of one `/predict` item, told apart by holding a `columns` field (rows as
    # one list per field rather than an object per row: far less to parse); `check` and
    # `predict` take either. None: `Request` only.
    ColumnarRequest: ClassVar[type[BaseModel] | None] = None
    # One NDJSON line of `/stream`; None: the task does not stream.
    StreamLine: ClassVar[type[BaseModel] | None] = None
    # What `loopline stream` calls the answers it counts ("sent 60 readings · 13 answers").
    answers_are: ClassVar[str] = "answers"

    def __init__(self, task: Any, params: Params) -> None:
        self.task, self.params = task, params
        self._contracts: dict[tuple[str, ...], ServingContract] = {}

    def contract(self, columns: Iterable[str]) -> ServingContract:
        """The task's data contract (`task.rules`, validation's rule names) as it applies to
        request rows holding `columns`: what each adapter checks its items against (none
        for an adapter made without params, as a unit test makes one)."""
        key = tuple(columns)
        if key not in self._contracts:
            from loopline.offline.validate import ServingContract

            rules = self.task.rules(self.params) if self.params is not None else []
            self._contracts[key] = ServingContract(rules, key)
        return self._contracts[key]

    def check(self, item: Any, model: LoadedModel) -> None:
        """Raise BadInput naming what is wrong with `item` for the served model. Runs per
        request item while the body is validated, before batching: a bad item refuses its
        request (400) without touching the batch it would have joined. On `/stream` it runs
        on each item the `StreamState` hands on that is of a `/predict` kind or the line
        itself (a refused one gets its error line); items a state assembles itself it
        checks as it builds them. (A NaN or infinity anywhere in a body or line is refused
        before, by the service, naming the field.)"""

    def check_items(self, items: list[Any], model: LoadedModel) -> dict[int, str]:
        """What `check` says of each item of one request body that it refuses, by position
        (one call per body: an adapter overrides it to check the items together)."""
        problems = {}
        for n, item in enumerate(items):
            try:
                self.check(item, model)
            except BadInput as error:
                problems[n] = str(error)
        return problems

    def predict(self, model: LoadedModel, items: list[Any]) -> list[Answer]:
        """Answer every item, in order (one model call for the batch where possible): the
        items are `Request`s, or what a `StreamState` made ready. An item that cannot be
        answered gets an error answer and never fails the others: one that breaks the data
        contract (`contract`, `refusal`), or whose features or outputs are not finite
        (`nonfinite_items`), each error naming the field. BadInput is only for a batch that
        cannot be answered as a whole (`/predict` answers with its status, `/stream` with
        an error line for each of the batch's lines)."""
        raise NotImplementedError

    def describe(self, model: LoadedModel) -> dict[str, Any]:
        """What a request must hold for this model (merged into `/metadata`'s model)."""
        return {}

    def route_key(self, item: Any) -> str | None:
        """What a canary routes `item` by, sticky (the same key always goes the same way):
        default its `id` field; None routes it to the champion."""
        key = getattr(item, "id", None)
        return None if key is None else str(key)

    def input_rows(self, answers: list[Answer]) -> list[dict[str, Any]]:
        """The raw rows of the task's data (column → JSON value, times as ISO text) that
        accepted `answers` stand for: what `serve.store_inputs` stores, keyed by the task's
        key columns, for `ingest.source: live`. A row stored before is skipped, so an
        answer may give rows an earlier one gave. A label the client did not send is left
        out (it arrives later, say through `loopline label import`). Default: none (a task
        whose inputs are not training rows)."""
        return []

    def summary(self, answer: dict[str, Any]) -> str:
        """One console line for an answer `loopline stream` prints (its `Response` fields)."""
        return " ".join(f"{k}={v}" for k, v in answer.items() if k != "line")

    def open_stream(self, model: LoadedModel) -> StreamState:
        """The state of one `/stream` connection (default: each line is one item)."""
        return StreamState(self, model)

    def requests(self, rows: pd.DataFrame, model: LoadedModel) -> list[Any]:
        """The `/predict` items a client would send for raw rows of the task's data (the
        contract kit's serving round trip). Default: one item per row, each field from the
        column of its name (or alias)."""
        return items_from_rows(self.Request, rows)

    def stream_lines(self, rows: pd.DataFrame) -> list[Any]:
        """The `/stream` lines a client would send for raw rows, in order. Default: one
        line per row, as `requests` makes items."""
        return items_from_rows(self.StreamLine, rows) if self.StreamLine is not None else []


class StreamState:
    """Per-connection stream state. The default answers each line as one item; a task that
    needs history (say, the latest readings per key) overrides `push` and `follow`."""

    def __init__(self, serving: Serving, model: LoadedModel) -> None:
        self.serving, self.model = serving, model

    def push(self, line: int, item: Any) -> tuple[list[tuple[int, Any]], list[dict[str, Any]]]:
        """Take one parsed `StreamLine`; return the items now ready for `predict` (with
        their line) and events to send back for this line (`{"error": ...}` counts as a
        rejected line, anything else, say `{"notice": ...}`, is told as is)."""
        return [(line, item)], []

    def push_many(
        self, lines: list[tuple[int, Any]]
    ) -> list[tuple[list[tuple[int, Any]], list[dict[str, Any]]]]:
        """`push` for the parsed lines of one chunk, in order: one result per line. A state
        overrides it to take a chunk together (say, its data contract in one pass)."""
        return [self.push(line, item) for line, item in lines]

    def follow(self, model: LoadedModel) -> None:
        """The service hot-swapped `model` in between two chunks: adapt (say, a new input
        length), keeping what the stream holds."""
        self.model = model


class Explaining:
    """A serving ability: `/explain` answers with why (attention, saliency)."""

    # The type of one `/explain` answer; None: the same as `Response`.
    Explanation: ClassVar[type[BaseModel] | None] = None

    def explain(self, model: LoadedModel, items: list[Any]) -> list[Answer]:
        raise NotImplementedError


class FileInput:
    """A serving ability: `/predict_<file_kind>` (and `/explain_<file_kind>` with
    Explaining) take one uploaded file (multipart field `file`: an image, a document)."""

    file_kind: ClassVar[str] = "file"

    def item_from_file(self, data: bytes, model: LoadedModel) -> Any:
        """The item an upload stands for (what `predict` takes); raise BadInput (415, 413,
        400) naming the problem (the service puts the file's name in front)."""
        raise NotImplementedError


def stored_row(id_column: str, answer: Answer) -> dict[str, Any]:
    """A one-row answer as `input_rows` gives it: its id (the answer's key, else one made
    from its values, so a replayed row is stored once) and its values (`answer.inputs`)."""
    from loopline.online.live import content_id

    values = dict(answer.inputs or {})
    return {id_column: answer.key if answer.key is not None else content_id(values), **values}


def items_from_rows(kind: type[BaseModel], rows: pd.DataFrame) -> list[Any]:
    """Items of type `kind` from raw rows: each field takes the row's column of its name (or
    alias); columns it does not name are left out."""
    names = [field.alias or name for name, field in kind.model_fields.items()]
    present = [name for name in names if name in rows.columns]
    return [
        kind.model_validate(dict(zip(present, map(_plain, row), strict=True)))
        for row in rows[present].itertuples(index=False, name=None)
    ]


def _plain(value: Any) -> Any:
    """A cell as a JSON value: numpy → Python, timestamps → ISO text, NaN → None."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, datetime):  # a missing time (NaT) is a datetime unequal to itself
        return value.isoformat() if value == value else None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
