"""One client's bad input never harms another's: a poisoned request among concurrent valid
ones fails alone (its own 400, naming its field and value), a bad reading in a stream chunk
costs only its own line, non-finite features or outputs cost only their own window, and
every refusal is counted under the data-contract rule it broke."""

from __future__ import annotations

import dataclasses
import json
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.serving.conftest import SITE, raw_readings, service_app
from tests.serving.test_service_api import REQUIRED, lines_of, post_stream, process_metrics, window


@pytest.fixture
def client(served_project):
    from starlette.testclient import TestClient

    with TestClient(service_app()) as test_client:
        yield test_client


@pytest.fixture
def champion(served_project):
    """The champion of the served project, loaded as the service loads it."""
    from loopline.online.models import load_version, resolve_alias
    from loopline.paths import ProjectPaths

    uri = ProjectPaths.at(served_project).tracking_uri()
    found = resolve_alias(uri, "solar", "champion")
    return load_version(uri, found, "champion", served_project / "cache", threads=1)


def refused_count(rule: str) -> float:
    pattern = rf'^loopline_refused_inputs_total\{{rule="{rule}"\}} (\S+)$'
    found = re.search(pattern, process_metrics(), re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_one_poisoned_request_among_concurrent_valid_ones_fails_alone(client):
    poisoned = window()
    poisoned["readings"][7]["ghi"] = -1e6  # finite, so it passes the API's types
    bodies = [{"windows": [window()]} for _ in range(24)]
    bodies[11] = {"windows": [poisoned]}
    before = refused_count("ghi_in_range")
    with ThreadPoolExecutor(12) as pool:  # enough at once to share adaptive batches
        responses = list(pool.map(lambda body: client.post("/predict", json=body), bodies))
    bad = responses.pop(11)
    assert bad.status_code == 400
    assert bad.json() == {
        "error": "refused by the data contract: readings[7].ghi=-1e+06 breaks ghi_in_range"
    }
    assert [r.status_code for r in responses] == [200] * 23
    assert all(len(r.json()[0]["forecast"]) == 24 for r in responses)
    assert all(r.json()[0]["site_id"] == SITE for r in responses)
    assert refused_count("ghi_in_range") == before + 1


def test_a_bad_window_in_a_request_refuses_that_request_only_naming_each_rule(client):
    poisoned = window()
    poisoned["readings"][3]["power_w"] = -1e12
    poisoned["readings"][3]["dni"] = 5000.0
    poisoned["readings"][9]["wind_speed"] = 300.0
    response = client.post("/predict", json={"windows": [window(), poisoned]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert "readings[3].dni=5000 breaks dni_in_range" in error
    assert "readings[3].power_w=-1e+12 breaks power_w_in_range" in error
    assert error.endswith("(and 1 more reading)")  # readings[9]: the first one is named
    assert client.post("/predict", json={"windows": [window()]}).status_code == 200


def test_a_stream_chunk_with_one_bad_reading_forecasts_everything_else(client):
    rows = raw_readings("2021-02-01", REQUIRED + 6)
    rows[REQUIRED + 2] = dict(rows[REQUIRED + 2], power_w=-1e12)
    before = refused_count("power_w_in_range")
    answers = lines_of(post_stream(client, [json.dumps(r) for r in rows]))
    assert refused_count("power_w_in_range") == before + 1
    forecasts = [a["line"] for a in answers if "forecast" in a]
    errors = {a["line"]: a["error"] for a in answers if "error" in a}
    bad_line = REQUIRED + 3
    assert errors == {
        bad_line: "refused by the data contract: power_w=-1e+12 breaks power_w_in_range"
    }
    # The windows before it are forecast; the reading is kept out of the site's window,
    # which restarts after the gap it leaves (a notice), so nothing after it is made up.
    assert forecasts == [REQUIRED, REQUIRED + 1, REQUIRED + 2]
    assert any("gap" in a.get("notice", "") for a in answers if a["line"] == bad_line + 1)


def two_site_model(champion):
    """The champion, told a second site (`sand_point`, at greensboro's place) is known too."""
    options = champion.spec.options
    sites = {**options.sites, "sand_point": options.sites[SITE]}
    spec = dataclasses.replace(champion.spec, options=dataclasses.replace(options, sites=sites))
    return dataclasses.replace(champion, spec=spec)


def solar_serving(sites: list[str]):
    from loopline.params import parse_params
    from loopline.tasks import get_task
    from tests.conftest import TINY

    params = parse_params({**TINY, "solar": {"sites": [SITE, *sites]}})
    task = get_task("solar")
    return task.Serving(task, params)


def test_a_bad_reading_of_one_site_leaves_the_other_sites_forecasts_of_the_chunk(champion):
    from loopline.online.adapter import answer_items

    model = two_site_model(champion)
    serving = solar_serving(["sand_point"])
    state = serving.open_stream(model)
    rows = raw_readings("2021-02-01", REQUIRED + 2)
    ready, line = [], 0
    for n, row in enumerate(rows):
        for site in (SITE, "sand_point"):
            line += 1
            reading = dict(row, site_id=site)
            if site == "sand_point" and n == REQUIRED:
                reading["ghi"] = -1e6
            item = serving.StreamLine.model_validate(reading)
            ready += [item for _, item in state.push(line, item)[0]]
    answers = answer_items(ready, serving.predict, model)
    forecasts = [a.response["site_id"] for a in answers if not a.error]
    errors = [a.response for a in answers if a.error]
    assert forecasts == [
        SITE,
        "sand_point",
        SITE,
        SITE,
    ]  # sand_point restarts after its bad reading
    assert errors == [
        {
            "site_id": "sand_point",
            "error": "refused by the data contract: ghi=-1e+06 breaks ghi_in_range",
        }
    ]


def test_non_finite_features_or_outputs_cost_only_their_own_window(champion):
    from loopline.tasks.forecast.serving import Window, typed_columns

    serving = solar_serving([])
    rows = raw_readings("2021-02-01", REQUIRED)
    schema = serving.task.schema
    columns = {c: [r[c] for r in rows] for c in schema if c != "site_id"}
    good = Window(SITE, typed_columns(columns, schema))
    # Finite but absurd (a `Window` skips the contract, as a stream's checked ones do):
    # its features overflow to infinity.
    absurd = Window(SITE, {**good.rows, "power_w": good.rows["power_w"].copy()})
    absurd.rows["power_w"][-5] = 1e300
    answers = serving.predict(champion, [good, absurd, good])
    assert [a.error for a in answers] == [False, True, False]
    error = answers[1].response["error"]
    assert "feature 'power_w' is not finite" in error and "power_w=1e+300" in error
    assert np.allclose(answers[0].output, answers[2].output)
