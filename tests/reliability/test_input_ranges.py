"""Issue 25 (6): times and numbers are checked against what the model can hold before they
are converted: a time or number out of range is a 400 naming the field and item, never an
answer from a wrapped-around value nor a 500.

Most cases go through the request types and adapters (fast); the solar service answers
the times through its real API once (its fixtures' registry, shared with the serving
tests).
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import BaseModel, ValidationError, create_model

from loopline.online.adapter import BadInput, describe_validation
from tests.serving.conftest import SITE, raw_readings, service_app

pytestmark = pytest.mark.reliability

REQUIRED = 48  # the serving fixtures' models: window 24 + lag 24
HUGE = "1" + "0" * 400  # an integer no float holds, as a client can write it in JSON


def body_error(kind: type[BaseModel], name: str, item: str) -> str:
    """The one-line 400 message of a body `{name: [item]}` (JSON text) of `kind` items, as
    the service words a ValidationError; fails if the body is accepted."""
    body = create_model("Body", **{name: (list[kind], ...)})
    with pytest.raises(ValidationError) as caught:
        body.model_validate_json(f'{{"{name}": [{item}]}}')
    return describe_validation(caught.value)


def readings_at(times: list[str]) -> list[dict]:
    """Solar readings (builtin values) stamped with `times`, oldest first."""
    rows = raw_readings("2021-02-01", len(times))
    for row, time in zip(rows, times, strict=True):
        row.pop("site_id")
        row["timestamp"] = time
    return rows


def hourly(last: datetime, n: int = REQUIRED) -> list[str]:
    """`n` consecutive hourly ISO times ending at `last` (its offset kept)."""
    return [(last - timedelta(hours=n - 1 - k)).isoformat() for k in range(n)]


# ------------------------------------------------------------------ forecast times: types

EAST, WEST = timezone(timedelta(hours=5)), timezone(timedelta(hours=-5))
OUT_OF_RANGE = {
    "year 2300": datetime(2300, 6, 15, 12, tzinfo=UTC),
    "past 9999 once in UTC": datetime(9999, 12, 31, 23, tzinfo=WEST),
    "before year 1 once in UTC": datetime(1, 1, 3, 2, tzinfo=EAST),
    "1600, naive": datetime(1600, 1, 3),
    "2200 once in UTC": datetime(2199, 12, 31, 22, tzinfo=WEST),
}


@pytest.mark.parametrize("last", OUT_OF_RANGE.values(), ids=OUT_OF_RANGE)
def test_a_window_stamped_out_of_range_is_refused_naming_the_reading(last):
    from loopline.tasks.solar.serving import ForecastColumns, ForecastWindow

    times = hourly(last)
    window = {"site_id": SITE, "readings": readings_at(times)}
    message = body_error(ForecastWindow, "windows", json.dumps(window))
    assert f"windows.0.readings.{REQUIRED - 1}.timestamp: " in message, message
    assert "from 1700-01-01 to before 2200-01-01, UTC" in message
    columns = {"timestamp": times} | {
        c: [r[c] for r in window["readings"]] for c in window["readings"][0] if c != "timestamp"
    }
    message = body_error(
        ForecastColumns, "windows", json.dumps({"site_id": SITE, "columns": columns})
    )
    assert f"windows.0.columns.timestamp.{REQUIRED - 1}: " in message, message


@pytest.mark.parametrize(
    "last",
    [
        datetime(1700, 1, 3, tzinfo=UTC),
        datetime(2199, 12, 31, 18, tzinfo=WEST),
        datetime(2199, 6, 1),
    ],
)
def test_a_window_stamped_at_the_edges_of_the_range_is_taken(last):
    from loopline.tasks.forecast.serving import utc_datetime64
    from loopline.tasks.solar.serving import ForecastWindow

    window = ForecastWindow.model_validate({"site_id": SITE, "readings": readings_at(hourly(last))})
    stamps = utc_datetime64([r.timestamp for r in window.readings])
    expected = last.astimezone(UTC).replace(tzinfo=None) if last.tzinfo else last
    assert stamps[-1].item() // 1000 == int(
        (expected - datetime(1970, 1, 1)) // timedelta(microseconds=1)
    )


def test_a_stream_line_out_of_range_is_refused_naming_the_field():
    from loopline.tasks.solar.serving import SiteReading

    (reading,) = readings_at(["2300-01-01T00:00:00+00:00"])
    with pytest.raises(ValidationError) as caught:
        SiteReading.model_validate_json(json.dumps({**reading, "site_id": SITE}))
    assert describe_validation(caught.value).startswith("timestamp: ")


def test_a_forecast_familys_own_types_check_their_times_too():
    from loopline.params import parse_params

    params = parse_params(
        {"task": "forecast", "forecast": {"entity": "meter", "target": "kw", "lags": [2]}}
    )
    serving = params.plugin.Serving
    line = {"meter": "a", "timestamp": "2300-01-01T00:00:00Z", "kw": 1.0}
    with pytest.raises(ValidationError, match="1700-01-01 to before 2200-01-01"):
        serving.StreamLine.model_validate(line)
    message = body_error(serving.Request, "windows", json.dumps({"meter": "a", "readings": [line]}))
    assert message.startswith("windows.0.readings.0.timestamp: "), message
    columns = {"meter": "a", "columns": {"timestamp": [line["timestamp"]], "kw": [1.0]}}
    message = body_error(serving.ColumnarRequest, "windows", json.dumps(columns))
    assert message.startswith("windows.0.columns.timestamp.0: "), message


def test_times_never_wrap_around_when_converted():
    from loopline.tasks.forecast.serving import utc_datetime64

    for value in (datetime(2300, 1, 1, tzinfo=UTC), datetime(2300, 1, 1), datetime(1600, 1, 1)):
        with pytest.raises(ValueError, match="nanoseconds"):
            utc_datetime64([value])


# ------------------------------------------------------------------ numbers


def test_a_pixel_no_float_holds_is_refused_naming_the_image_and_pixel():
    from loopline.tasks.image.serving import Image

    grey = [[0.5] * 8 for _ in range(8)]
    text = json.dumps(grey).replace("0.5", HUGE, 1)
    message = body_error(Image, "images", text)
    assert message == "images.0.grey.0.0: Input should be a finite number", message
    rgb = json.dumps([grey, grey, [*grey[:7], [0.5] * 7 + [0.25]]]).replace("0.25", "1e39")
    message = body_error(Image, "images", rgb)
    assert message.startswith("images.0.rgb.2.7.7: Input should be less than or equal to 3402")
    assert body_error(Image, "images", '"an image"').startswith("images.0: an image is rows")


def test_an_image_within_float32_keeps_its_check_of_the_shape():
    from loopline.tasks.image.serving import Image, ImageServing

    grey = Image.model_validate_json(json.dumps([[0.5] * 7] * 8))
    rgb = Image.model_validate_json(json.dumps([[[1] * 8] * 8] * 3))
    spec = type("Spec", (), {"options": type("Options", (), {"image_size": 8, "channels": 1})})
    serving = ImageServing.__new__(ImageServing)
    with pytest.raises(BadInput, match="image is 8×7; the model reads 8×8"):
        serving._array(grey, spec)
    with pytest.raises(BadInput, match="image is 3×8×8; the model reads 8×8"):
        serving._array(rgb, spec)


def test_a_tabular_number_no_float_holds_is_refused_naming_the_column():
    from loopline.tasks.tabular.serving import TabularRow, row_values
    from tests.unit.test_tabular import served_model

    serving, model = served_model()
    row = {"customer_id": "c1", "tenure": 3, "spend": 40.5, "plan": "basic"}
    huge = TabularRow.model_validate_json(json.dumps(row).replace("40.5", HUGE))
    with pytest.raises(BadInput, match="feature 'spend' is a number; got an integer of 401 digits"):
        row_values(huge, model.spec)
    # A stream's line is answered by `predict`: the item's own error, the others answered.
    answers = serving.predict(model, [TabularRow.model_validate(row), huge])
    assert not answers[0].error and answers[1].error, answers
    assert "'spend'" in answers[1].response["error"]


def test_a_row_tasks_and_a_forecasts_numbers_no_float_holds_are_refused_naming_the_field():
    from loopline.tasks.solar.serving import ForecastWindow, SiteReading
    from tests.unit.test_rows import Machines

    row = f'{{"id": "m1", "temperature": 40, "oil pressure": {HUGE}}}'
    message = body_error(Machines.Serving.Request, "items", row)
    assert message == "items.0.oil pressure: Input should be a finite number", message
    (reading,) = readings_at(["2021-02-01T00:00:00+00:00"])
    line = json.dumps({**reading, "site_id": SITE, "ghi": 12345.5}).replace("12345.5", HUGE)
    with pytest.raises(ValidationError, match="ghi"):
        SiteReading.model_validate_json(line)
    window = json.dumps({"site_id": SITE, "readings": [{**reading, "ghi": 12345.5}]})
    message = body_error(ForecastWindow, "windows", window.replace("12345.5", HUGE))
    assert message == "windows.0.readings.0.ghi: Input should be a finite number", message


# ------------------------------------------------------------------ through the solar service


@pytest.fixture(scope="module")
def solar_client(registry_template, tmp_path_factory):
    from starlette.testclient import TestClient

    root = tmp_path_factory.mktemp("input-ranges") / "proj"
    shutil.copytree(registry_template, root)
    with pytest.MonkeyPatch.context() as patch:
        for var in ("MLFLOW_TRACKING_URI", "LOOPLINE_HOME"):
            patch.delenv(var, raising=False)
        patch.setenv("LOOPLINE_PROJECT", str(root))
        with TestClient(service_app()) as client:
            yield client


@pytest.mark.parametrize("last", list(OUT_OF_RANGE.values())[:2], ids=list(OUT_OF_RANGE)[:2])
def test_the_service_refuses_a_window_out_of_range_with_a_400_naming_it(solar_client, last):
    window = {"site_id": SITE, "readings": readings_at(hourly(last))}
    response = solar_client.post("/predict", json={"windows": [window]})
    assert response.status_code == 400, response.text
    last_reading = response.json()["detail"][-1]
    assert last_reading["loc"][-2:] == [REQUIRED - 1, "timestamp"], last_reading
    assert "from 1700-01-01 to before 2200-01-01, UTC" in last_reading["msg"]
    lines = [json.dumps({**r, "site_id": SITE}) for r in window["readings"][-2:]]
    stream = solar_client.post(
        "/stream",
        content="\n".join(lines) + "\n",
        headers={"content-type": "application/x-ndjson"},
    )
    assert stream.status_code == 200, stream.text
    answers = [json.loads(line) for line in stream.text.splitlines()]
    assert [a["line"] for a in answers] == [1, 2], answers
    assert all(a["error"].startswith("timestamp: ") for a in answers), answers
