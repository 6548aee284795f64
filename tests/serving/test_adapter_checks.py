"""One answer to one input on every path (issue 26's defects, as a team's adapter met them):
`/stream` runs the task's `check` on the items it hands on as `/predict` does (an error
line where `/predict` answers 400), and a non-finite number is refused as a wrong length
is (a 400 naming the field on `/predict`, an error line on `/stream`), whatever the task's
types. The adapter is `tests.serving.whole_windows`': solar's checks and forecasts on plain
types, a whole window per stream line, answers that carry their own `error`."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from tests.serving.test_service_api import REQUIRED, window
from tests.serving.whole_windows import WholeWindowServing


@pytest.fixture
def champion(served_project):
    """The champion of the served project, loaded as the service loads it."""
    from loopline.online.models import load_version, resolve_alias
    from loopline.paths import ProjectPaths

    uri = ProjectPaths.at(served_project).tracking_uri()
    found = resolve_alias(uri, "solar", "champion")
    return load_version(uri, found, "champion", served_project / "cache", threads=1)


@pytest.fixture
def paths(champion, served_project):
    """The `/predict` body of the adapter, checked against `champion`, and a stream's
    answers: `(body, chunk)`, `chunk` answering a list of NDJSON lines."""
    from loopline.online.adapter import answer_items
    from loopline.params import load_params
    from loopline.paths import ProjectPaths
    from loopline.tasks import get_task
    from serving.bodies import Served, request_body
    from serving.metrics import service_metrics
    from serving.streams import StreamAnswers

    params = load_params(ProjectPaths.at(served_project).params_file)
    serving = WholeWindowServing(get_task("solar"), params)
    served = Served()
    served.model, served.serving = champion, serving
    body = request_body(WholeWindowServing, served, max_items=16)

    def answer(api, model, items, call):
        return answer_items(items, call, model)

    stream = StreamAnswers(serving.open_stream(champion), answer, 1 << 20, service_metrics())

    def chunk(lines: list[str]) -> list[dict]:
        found = stream.chunk(champion, [(n, line.encode()) for n, line in enumerate(lines, 1)])
        return [json.loads(line) for line in found.splitlines()]

    return body, chunk


def refused(body, windows: list[dict]) -> str:
    """The 400's message of a `/predict` body of `windows` (as the service words it)."""
    from loopline.online.adapter import describe_validation

    with pytest.raises(ValidationError) as caught:
        body.model_validate_json(json.dumps({"windows": windows}))
    return describe_validation(caught.value)


def with_gap() -> dict:
    """A window of the right length whose readings skip an hour."""
    gap = window(hours=REQUIRED + 1)
    del gap["readings"][REQUIRED // 2]
    return gap


def test_a_window_predict_refuses_is_an_error_line_on_the_stream(paths):
    body, chunk = paths
    assert "consecutive" in refused(body, [with_gap()])
    answers = chunk([json.dumps(with_gap()), json.dumps(window())])
    assert [a["line"] for a in answers] == [1, 2], answers
    assert "consecutive" in answers[0]["error"] and "forecast" not in answers[0]
    assert len(answers[1]["forecast"]) == 24


def test_a_nan_is_refused_as_a_wrong_length_is(paths):
    body, chunk = paths
    nan, short = window(), window(hours=REQUIRED - 1)
    nan["readings"][7]["ghi"] = float("nan")  # json.dumps writes NaN, as Python clients do
    assert refused(body, [nan]) == "windows.0.readings.7.ghi: Input should be a finite number"
    assert f"needs {REQUIRED}" in refused(body, [short])
    # The adapter's words as they are, not wrapped in pydantic's "Value error, ...".
    assert refused(body, [short]).startswith(f"windows.0: readings: needs {REQUIRED}")
    infinite = json.dumps(window()).replace('"ghi": 0,', '"ghi": -Infinity,', 1)
    assert "Infinity" in infinite
    answers = chunk([json.dumps(nan), json.dumps(short), infinite])
    assert answers[0]["error"] == "readings.7.ghi: Input should be a finite number"
    assert f"needs {REQUIRED}" in answers[1]["error"]
    assert answers[2]["error"].endswith("ghi: Input should be a finite number"), answers[2]


def test_a_word_that_spells_nan_is_no_number(paths):
    body, _ = paths
    named = {**window(), "site_id": "NaN-Infinity"}  # unknown: refused for that, not as a number
    message = refused(body, [named])
    assert "NaN-Infinity" in message and "finite" not in message, message


def test_endpoints_come_from_the_adapters_abilities(tmp_path, monkeypatch):
    """Each task's service class is `LooplineService` with the abilities its adapter has,
    composed once: its routes are theirs, and no class is swapped afterwards."""
    from serving.abilities import Streams, Uploads
    from serving.boot import boot_params
    from serving.framework import LooplineService
    from serving.openapi import PublishedService
    from serving.service import service_for

    monkeypatch.setenv("LOOPLINE_PROJECT", str(tmp_path))
    found = {}
    for task in ("solar", "reviews", "digits"):
        service = service_for(boot_params({"LOOPLINE_TASK": task, "LOOPLINE_PROJECT": "."}))
        assert type(service) is PublishedService
        (app, _, _), *_ = service.mount_apps
        found[task] = (sorted(service.apis), sorted(app.openapi()["paths"]))
        assert issubclass(service.inner, LooplineService)
        assert issubclass(service.inner, Streams) == (task != "digits")
        assert issubclass(service.inner, Uploads) == (task == "digits")
    assert found["solar"] == (["predict"], ["/metadata", "/stream"])
    assert found["reviews"] == (["explain", "predict"], ["/metadata", "/stream"])
    assert found["digits"] == (
        ["explain", "predict"],
        ["/explain_image", "/metadata", "/predict_image"],
    )
