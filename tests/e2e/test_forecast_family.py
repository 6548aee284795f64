"""Acceptance: the forecast family on data of one's own, end to end (no mocks).

(a) `loopline init plant --template forecast` (a synthetic hourly load of three meters with
daily and weekly seasonality, a temperature and noise; no physics): the real offline flow
publishes a model that beats persistence and seasonal naive on the same test windows, and
the real service (its ASGI app in-process, as the serving tests run it) answers a stream.

(b) solar at a site given only by coordinates, with its own weather file (a shifted copy of
the built-in Greensboro weather, stamped in local time): published, then forecast through
the service; a site that model does not know is refused.

One module-scoped fixture per project runs the expensive part once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_harness")]

FAST = [
    "train.threads=1",
    "train.patience=3",
    "tune.n_trials=1",
    "tune.max_epochs=1",
    "export.golden_batch=8",
]
SMALL_SPACE = (
    "tune.search_space={hidden_size: {choices: [32]}, num_layers: {choices: [1]}, "
    "dropout: {choices: [0.0]}, learning_rate: {choices: [0.005]}, batch_size: {choices: [64]}, "
    "window: {choices: [%d]}, cell: {choices: [gru]}}"
)


def offline(root: Path, *overrides: str) -> dict:
    from pipelines.offline import offline_flow

    return offline_flow(root=str(root), overrides=list(overrides))


def client_for(root: Path):
    """The one service's ASGI app serving the project at `root` (read at start, as a
    service process reads it)."""
    from starlette.testclient import TestClient

    from tests.serving.conftest import service_app

    os.environ["LOOPLINE_PROJECT"] = str(root)
    return TestClient(service_app())


def ndjson(rows: list[dict]) -> str:
    return "".join(json.dumps(r, default=str) + "\n" for r in rows)


@pytest.fixture(scope="module")
def plant(tmp_path_factory):
    """A `forecast` project from the template, after one offline run."""
    from loopline.app.scaffold import init_project

    for var in ("MLFLOW_TRACKING_URI", "LOOPLINE_HOME"):
        os.environ.pop(var, None)
    project = init_project("plant", "forecast", tmp_path_factory.mktemp("forecast") / "plant")
    summary = offline(project.root, *FAST, "train.max_epochs=10", SMALL_SPACE % 48)
    return project.root, summary


def test_the_template_makes_a_forecast_project(plant):
    root, _ = plant
    params = yaml.safe_load((root / "params.yaml").read_text())
    assert params["task"] == "forecast" and params["publish"]["model_name"] == "plant"
    assert params["forecast"]["entity"] == "meter_id"
    assert (root / "sample" / "load.csv").is_file()


def test_the_load_model_beats_persistence_and_seasonal_naive(plant):
    _, summary = plant
    assert summary["status"] == "published" and summary["promoted"], summary
    metrics = summary["metrics"]
    for baseline in ("persistence", "seasonal_naive", "seasonal_naive_168"):
        assert metrics["test_rmse"] < metrics[f"{baseline}_rmse"], (baseline, metrics)
    assert metrics["test_rows"] > 100


def test_the_service_answers_a_stream_of_load_readings(plant):
    root, _ = plant
    rows = pd.read_csv(root / "sample" / "load.csv")
    with client_for(root) as client:
        meta = client.get("/metadata").json()["model"]
        assert meta["name"] == "plant" and meta["entity"] == "meter_id"
        required = meta["required_readings"]  # window 48 + lag 168
        assert required == 48 + 168
        lines = rows[rows.meter_id.isin(["m-north", "m-east"])].sort_values("timestamp")
        lines = lines.groupby("meter_id").head(required + 2).to_dict("records")
        answers = [
            json.loads(line)
            for line in client.post(
                "/stream", content=ndjson(lines), headers={"content-type": "application/x-ndjson"}
            ).text.splitlines()
        ]
        forecasts = [a for a in answers if "forecast" in a]
        assert not [a for a in answers if "error" in a], answers[:3]
        assert sorted({a["meter_id"] for a in forecasts}) == ["m-east", "m-north"]
        assert len(forecasts) == 2 * 3 and all(len(a["forecast"]) == 24 for a in forecasts)
        assert all(min(a["forecast"]) >= 0 for a in forecasts)  # nonnegative: clipped at 0
        # A reading without the covariate the model reads is refused, naming it.
        bad = {k: v for k, v in lines[0].items() if k != "temperature_c"}
        refused = client.post(
            "/predict", json={"windows": [{"meter_id": "m-x", "readings": [bad]}]}
        )
        assert refused.status_code in (400, 422) and "temperature_c" in refused.text


# ---------------------------------------------------------------------- solar, own site

SITE = {
    "name": "my_roof",
    "latitude": 36.4,
    "longitude": -79.4,
    "altitude": 250,
    "timezone": "America/New_York",
    "weather": "weather/my_roof.csv",
    "system": {"pdc0_w": 8000, "surface_tilt": 25},
}


def write_weather(path: Path) -> None:
    """Greensboro's built-in weather for January-February, a day later and in local time
    (naive stamps: the site's time zone)."""
    from loopline.tasks.solar.task import read_builtin_site

    weather, _ = read_builtin_site("greensboro", 2021)
    weather = weather[(weather.index >= "2021-01-01") & (weather.index < "2021-03-01")]
    shifted = pd.DataFrame(np.roll(weather.to_numpy(), 24, axis=0), columns=weather.columns)
    local = weather.index.tz_convert(SITE["timezone"]).tz_localize(None)
    shifted.insert(0, "timestamp", local.strftime("%Y-%m-%d %H:%M:%S"))
    path.parent.mkdir(parents=True, exist_ok=True)
    shifted.to_csv(path, index=False)


@pytest.fixture(scope="module")
def roof(tmp_path_factory):
    """A solar project whose only site is given by coordinates and a weather file."""
    from tests.conftest import TINY, write_project

    root = tmp_path_factory.mktemp("solar-site") / "roof"
    params = {
        **TINY,
        "ingest": {"source": "builtin"},
        "solar": {"sites": [SITE]},
    }
    write_project(root, params)
    write_weather(root / SITE["weather"])
    summary = offline(root, *FAST, "train.max_epochs=8")
    if not summary["promoted"]:  # the gate held it: serve it anyway (the test is the path)
        from loopline import registry
        from loopline.paths import ProjectPaths

        uri = ProjectPaths.at(root).tracking_uri()
        registry.move_champion(uri, "solar", summary["version"], reason="e2e")
    return root, summary


def test_solar_publishes_a_site_given_by_coordinates(roof):
    root, summary = roof
    assert summary["status"] == "published", summary
    assert summary["promoted"], summary["decision"]  # beats persistence and smart persistence
    weather = pd.read_csv(root / SITE["weather"])
    local = pd.to_datetime(weather["timestamp"]).dt.tz_localize(SITE["timezone"])
    # Every row of its own weather file, its naive times read in the site's zone.
    assert summary["new_rows"] == len(local) and local.is_monotonic_increasing
    metrics = summary["metrics"]
    print("solar own site:", {k: round(v, 1) for k, v in metrics.items() if "rmse" in k})


def test_solar_forecasts_the_site_through_the_service(roof):
    from loopline.params import load_params
    from loopline.tasks.solar.task import ac_power, site_weather

    root, _ = roof
    params = load_params(root / "params.yaml")
    site = params.solar.sites[0]
    weather = site_weather(site, 2021, str(root))
    rows = weather.assign(power_w=ac_power(weather, site.location(), site.system))
    rows = rows[rows.index >= "2021-02-24"].head(48)  # test-set readings
    readings = [
        {"timestamp": t.isoformat(), **{k: float(v) for k, v in r.items()}}
        for t, r in rows.iterrows()
    ]
    with client_for(root) as client:
        meta = client.get("/metadata").json()["model"]
        assert meta["sites"] == ["my_roof"]
        answer = client.post(
            "/predict", json={"windows": [{"site_id": "my_roof", "readings": readings}]}
        )
        assert answer.status_code == 200, answer.text
        (forecast,) = answer.json()
        assert len(forecast["forecast"]) == 24 and min(forecast["forecast"]) >= 0
        assert max(forecast["forecast"]) <= 8000 * 1.2
        refused = client.post(
            "/predict", json={"windows": [{"site_id": "greensboro", "readings": readings}]}
        )
        assert refused.status_code == 400 and "greensboro" in refused.text
