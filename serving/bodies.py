"""The service's request and answer types, made from the task's adapter: `/predict`'s and
`/explain`'s JSON bodies, their answers, and one line of `/stream`'s answer."""

# No `from __future__ import annotations`: pydantic and BentoML read the annotations below,
# which name the task's types.

import json
import math
from http import HTTPStatus
from typing import Annotated, Any

import bentoml
from bentoml.validators import ContentType
from fastapi.responses import JSONResponse, Response
from pydantic import (
    BaseModel,
    Discriminator,
    Field,
    RootModel,
    Tag,
    TypeAdapter,
    ValidationError,
    create_model,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from loopline.online.adapter import Answer, Serving


class Served:
    """What the request bodies of one service class see while they are validated: the
    service (readiness before batching), and the adapter and model its worker serves (set
    at each swap; one service instance per worker process)."""

    service: Any = None
    serving: Serving | None = None
    model: Any = None


# ------------------------------------------------------------------ non-finite numbers

# JSON has no NaN nor infinity, but Python's parsers and pydantic's take `NaN`, `Infinity`
# and `-Infinity`: a number that is not one is refused as a wrong type is (a 400 naming the
# field on `/predict`, an error line on `/stream`), so every task answers it alike.


def may_hold_nonfinite(data: bytes | str) -> bool:
    """Whether a JSON text may hold a non-finite number (a scan of the text: exact when it
    says no; a string holding the word is told apart by `nonfinite_places`)."""
    if isinstance(data, str):
        return "NaN" in data or "Infinity" in data
    return b"NaN" in data or b"Infinity" in data


def nonfinite_places(value: Any, where: tuple = ()) -> list[tuple[tuple, float]]:
    """Each non-finite number in parsed JSON, with its place (keys and indices)."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [(where, value)]
    if isinstance(value, dict):
        return [p for key, v in value.items() for p in nonfinite_places(v, (*where, key))]
    if isinstance(value, list):
        return [p for n, v in enumerate(value) for p in nonfinite_places(v, (*where, n))]
    return []


def describe_nonfinite(data: bytes | str) -> str | None:
    """One line naming each non-finite number of a JSON text (None: there is none)."""
    try:
        places = nonfinite_places(json.loads(data))
    except ValueError:  # not JSON: the parser has said so already
        return None
    return "; ".join(f"{'.'.join(map(str, where))}: {FINITE}" for where, _ in places) or None


FINITE = "Input should be a finite number"


class FiniteBody(bentoml.IODescriptor):
    """A JSON body in which every number is finite (a 400 naming each one that is not)."""

    @classmethod
    def model_validate_json(cls, json_data, **kwargs):
        if may_hold_nonfinite(json_data):
            try:
                places = nonfinite_places(json.loads(json_data))
            except ValueError:  # not JSON: pydantic names the problem below
                places = []
            if places:
                errors = [
                    InitErrorDetails(type="finite_number", loc=where, input=value)
                    for where, value in places
                ]
                raise ValidationError.from_exception_data(cls.__name__, errors)
        return super().model_validate_json(json_data, **kwargs)


# ------------------------------------------------------------------ request bodies


def request_body(
    adapter: type[Serving], served: Served, max_items: int, name: str = "Input"
) -> type[BaseModel]:
    """The JSON body of `/predict` and `/explain`: `{input_name: [Request, ...]}`, each item
    checked against the served model while the body is validated (a bad one is a 400
    naming it). BentoML names body fields after an API's parameters; given as the API's
    input spec, the field takes the adapter's name (`texts`, `images`, ...)."""
    forms = [adapter.Request]
    if adapter.ColumnarRequest is not None:
        forms.append(adapter.ColumnarRequest)
    item = forms[0]
    if len(forms) == 2:  # told apart by a `columns` key, not by trying one then the other
        # A root model: BentoML re-patches the annotations of a body's fields, which a bare
        # discriminated union does not survive. `as_item` unwraps it for the adapter.
        item = RootModel[
            Annotated[
                Annotated[forms[0], Tag("readings")] | Annotated[forms[1], Tag("columns")],
                Discriminator(_item_form),
            ]
        ]
        item.__name__ = f"{forms[0].__name__}Or{forms[1].__name__}"
        _EITHER_FORM.add(item)
    # (pydantic counts the items after validating them: ~25 ms for a 0.7 MB body of 2,000
    # images, which is why /explain bodies are bounded in bytes as well, before reading.)
    field = (
        list[item],
        Field(description=f"The {adapter.input_name} to answer", max_length=max_items),
    )
    checks = {}
    if adapter.check is not Serving.check or adapter.check_items is not Serving.check_items:
        checks["served_model_check"] = model_validator(mode="after")(
            served_model_check(served, adapter.input_name)
        )
    return create_model(
        name,
        __base__=FiniteBody,
        __module__=__name__,
        __validators__=checks,
        **{adapter.input_name: field},
    )


def served_model_check(served: Served, field: str):
    """A body's check of its items against the served model (the adapter's `check_items`,
    once per body): a refused item is a 400 naming its place and the adapter's words."""

    def check(body):
        if served.serving is None:
            return body
        items = [as_item(item) for item in getattr(body, field)]
        problems = served.serving.check_items(items, served.model)
        if problems:
            # The adapter's own words as the message (a ValueError would reach the client
            # prefixed "Value error, ").
            errors = [
                InitErrorDetails(
                    type=PydanticCustomError("bad_input", "{why}", {"why": why}),
                    loc=(field, n),
                    input=None,
                )
                for n, why in sorted(problems.items())
            ]
            raise ValidationError.from_exception_data(type(body).__name__, errors)
        return body

    return check


# The wrappers of two request forms `request_body` made (a task's own Request may itself
# be a root model, as a text is: only these are unwrapped).
_EITHER_FORM: set[type] = set()


def as_item(value: Any) -> Any:
    """A body item as the adapter takes it (either form's model, not their wrapper)."""
    return value.root if type(value) in _EITHER_FORM else value


def _item_form(value: Any) -> str | None:
    """Which request form an item is; None (a 400 naming the item) for anything that is
    neither an object nor a model, say a list where an object belongs."""
    if isinstance(value, dict):
        return "columns" if "columns" in value else "readings"
    if isinstance(value, BaseModel):
        return "columns" if "columns" in type(value).model_fields else "readings"
    return None


# ------------------------------------------------------------------ answers


class Refusal:
    """An item's error that its answer type cannot carry: its request is answered 400 by
    `answers_spec`, on its own (an adaptive batch mixes many clients' requests)."""

    def __init__(self, message: str, status: int = HTTPStatus.BAD_REQUEST) -> None:
        self.message, self.status = message, status


def reply(kind: type[BaseModel], answer: Answer) -> BaseModel | Refusal:
    """One answer as the API's type; an error answer its type cannot carry refuses its
    request rather than being sent as an empty answer."""
    if answer.error and "error" not in kind.model_fields:
        return Refusal(str(answer.response.get("error", "the item cannot be answered")))
    return kind.model_construct(**answer.response)


def answers_spec(kind: type[BaseModel]) -> type[bentoml.IODescriptor]:
    """The output of `/predict` and `/explain`: a list of `kind`; a request one of whose
    items was refused (`Refusal`) gets a 400 `{"error": ...}` naming it instead, while the
    other requests of its batch get their answers. The content type is declared because
    BentoML otherwise derives it by generating the output's JSON schema on every response
    (~1.7 ms per request, measured)."""

    def answers() -> Annotated[list[kind], ContentType("application/json")]: ...

    base = bentoml.IODescriptor.from_output(answers)
    # Serialised by pydantic's core in one call: BentoML's own path validates the answers
    # again, dumps them twice and writes the JSON with the standard library (6 % of the
    # service's CPU at 32 items per request, py-spy).
    as_json = TypeAdapter(list[kind]).dump_json

    class Answers(base):
        @classmethod
        async def to_http_response(cls, obj: Any, serde: Any) -> Response:
            refused = [a for a in obj if isinstance(a, Refusal)]
            if refused:
                message = "; ".join(dict.fromkeys(a.message for a in refused))
                return JSONResponse({"error": message}, refused[0].status)
            return Response(as_json(obj), media_type="application/json")

    Answers.media_type = base.media_type
    Answers.__name__ = Answers.__qualname__ = base.__name__
    return Answers


def stream_reply(response: type[BaseModel]) -> type[BaseModel]:
    """One NDJSON line of `/stream`'s answer, for the OpenAPI spec: an answer (the
    `Response` fields), an error or a notice, with the input line it is about."""
    fields: dict[str, Any] = {"line": (int | None, Field(None, description="The input line"))}
    fields |= {name: (f.annotation | None, None) for name, f in response.model_fields.items()}
    fields |= {"error": (str | None, None), "notice": (str | None, None)}
    return create_model("StreamReply", **fields)


def picture_headers(answer: Answer) -> dict[str, str]:
    """The answer's plain fields as `X-Loopline-<Field>` headers (next to a picture)."""
    return {
        "X-Loopline-" + "-".join(p.capitalize() for p in name.split("_")): str(value)
        for name, value in answer.response.items()
        if isinstance(value, str | int | float)
    }
