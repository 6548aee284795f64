"""The service's outputs equal the offline model's outputs on a test split.

Offline: the evaluate stage's own path (`onnx_forecasts`: features of the whole split,
sliding windows, one ONNX run). Online: raw readings through `predict` and `stream`.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from tests.serving.conftest import SITE, raw_readings, service_app


def test_service_matches_the_offline_model_on_the_test_split(served_project):
    from starlette.testclient import TestClient

    from loopline.online.models import load_version
    from loopline.onnx_runtime import embedded_spec
    from loopline.params import load_params
    from loopline.paths import ProjectPaths
    from loopline.registry import champion_version
    from loopline.tasks import get_task
    from loopline.tasks.forecast.scoring import onnx_forecasts
    from loopline.tasks.solar.serving import required_readings

    paths = ProjectPaths.at(served_project)
    params = load_params(paths.params_file)
    task = get_task("solar")
    uri = paths.tracking_uri()
    model = load_version(uri, champion_version(uri, "solar"), "champion", paths.state / "t", 1)
    spec = embedded_spec(model.session)

    # A test split as evaluate sees it: a held-out stretch with its history marked "gap".
    readings = raw_readings("2021-02-10", 24 * 10)
    raw = task.load_builtin(params)
    raw = raw[(raw["site_id"] == SITE) & (raw["timestamp"] >= "2021-02-10")].head(24 * 10)
    split = np.where(np.arange(len(raw)) < required_readings(spec), "gap", "test")
    keys, offline = onnx_forecasts(task, raw.assign(split=split), spec, model.session)
    assert len(keys) > 100
    offline_by_origin = {
        pd.Timestamp(t).isoformat(): row for t, row in zip(keys["timestamp"], offline, strict=True)
    }

    with TestClient(service_app()) as client:
        # predict: one window per origin, every 5th origin, in one request
        required = required_readings(spec)
        windows = []
        for end in range(required, len(readings) + 1, 5):
            rows = [
                {k: v for k, v in r.items() if k != "site_id"}
                for r in readings[end - required : end]
            ]
            windows.append({"site_id": SITE, "readings": rows})
        predicted = client.post("/predict", json={"windows": windows})
        assert predicted.status_code == 200, predicted.text
        # stream: every reading, one forecast per origin
        streamed = client.post(
            "/stream",
            content="\n".join(json.dumps(r) for r in readings),
            headers={"content-type": "application/x-ndjson"},
        )
    stream_answers = [json.loads(line) for line in streamed.text.splitlines()]

    def compare(answers) -> set[str]:
        matched = set()
        for answer in answers:
            origin = pd.Timestamp(answer["origin"]).isoformat()
            if origin in offline_by_origin:
                np.testing.assert_allclose(
                    answer["forecast"], offline_by_origin[origin], atol=2e-3, err_msg=origin
                )
                matched.add(origin)
        return matched

    # Every origin the offline path scores is streamed, and equal; so are the sampled ones.
    assert compare(stream_answers) == set(offline_by_origin)
    sampled = compare(predicted.json())
    assert len(sampled) >= len(offline_by_origin) // 5 - 1
