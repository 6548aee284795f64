"""The review classifier service in-process, on a champion the real reviews flow published.

predict / explain / stream, each bad item answered with its own error while the others are
classified, the answers equal to the offline model's, every prediction logged, and the
logged texts offered to people as the next labeling pool.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import write_project
from tests.reviews_data import TINY_REVIEWS, reviews_frame, write_reviews
from tests.serving.conftest import service_app

TEXTS = ["친구랑 같이 재밌다", "친구랑 같이 안 재밌다 ㅋㅋ", "솔직히 지루하다"]


@pytest.fixture(scope="module")
def reviews_root(tmp_path_factory, prefect_harness):
    import os

    from pipelines.offline import offline_flow

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("LOOPLINE_HOME", None)
    root = write_project(
        tmp_path_factory.mktemp("served-reviews") / "proj",
        {
            **TINY_REVIEWS,
            "reviews": {**TINY_REVIEWS["reviews"], "max_text_chars": 60},
            # A model to serve: the held-out split decides (the flow tests cross-validate).
            "evaluate": {"cross_validate_below": 0},
        },
    )
    write_reviews(root / "reviews.tsv", reviews_frame())
    summary = offline_flow(root=str(root))
    assert summary["promoted"], summary
    return root


@pytest.fixture
def client(reviews_root, monkeypatch):
    from starlette.testclient import TestClient

    monkeypatch.setenv("LOOPLINE_PROJECT", str(reviews_root))
    monkeypatch.setenv("LOOPLINE_SERVE_LOG_FLUSH_INTERVAL_S", "0.05")
    with TestClient(service_app()) as test_client:
        yield test_client


def offline_probabilities(root, texts):
    from loopline import registry
    from loopline.paths import ProjectPaths
    from loopline.tasks.text.answers import classify

    paths = ProjectPaths.at(root)
    session, spec, _ = registry.load_champion(paths.tracking_uri(), "reviews", root / "tmp")
    return classify(session, spec, texts)[0]


def test_predict_answers_each_item_and_errors_name_the_problem(client, reviews_root):
    items = [TEXTS[0], "", 42, "가" * 61, TEXTS[1], None, "   "]
    response = client.post("/predict", json={"texts": items})
    assert response.status_code == 200, response.text
    out = response.json()
    assert len(out) == len(items)
    assert out[1]["error"] == "text is empty" and out[6]["error"] == "text is empty"
    assert out[2]["error"] == "text must be a string, got int"
    assert out[5]["error"] == "text must be a string, got NoneType"
    assert "61 characters, longer than the limit of 60 (reviews.max_text_chars)" in out[3]["error"]
    good = [out[0], out[4]]
    assert all(o["error"] is None and o["model_version"] == "1" for o in good)
    expected = offline_probabilities(reviews_root, [TEXTS[0], TEXTS[1]])
    served = np.array(
        [[o["probabilities"]["negative"], o["probabilities"]["positive"]] for o in good]
    )
    np.testing.assert_allclose(served, expected, atol=1e-5)
    assert [o["label"] for o in good] == ["positive", "negative"]


def test_a_bad_text_in_concurrent_lists_fails_alone_and_is_counted_under_its_rule(client):
    from concurrent.futures import ThreadPoolExecutor

    from tests.serving.test_isolation import refused_count

    bodies = [{"texts": [TEXTS[n % 3], TEXTS[(n + 1) % 3]]} for n in range(12)]
    bodies[5] = {"texts": [TEXTS[0], " \t ", TEXTS[2]]}
    before = refused_count("document_not_blank")
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda body: client.post("/predict", json=body), bodies))
    assert [r.status_code for r in responses] == [200] * 12
    answers = [a for r in responses for a in r.json()]
    errors = [a["error"] for a in answers if a["error"] is not None]
    assert errors == ["text is empty"]  # the client's word for it, counted under the rule
    assert sum(a["label"] is not None for a in answers) == 2 * 12
    assert refused_count("document_not_blank") == before + 1


def test_explain_gives_each_token_its_attention(client):
    out = client.post("/explain", json={"texts": [TEXTS[1], ""]}).json()
    tokens = out[0]["tokens"]
    assert "".join(t["token"] for t in tokens).replace("▁", " ") == "친구랑 같이 안 재밌다 ㅋㅋ"
    assert abs(sum(t["weight"] for t in tokens) - 1.0) < 1e-4
    assert out[1]["error"] == "text is empty" and out[1]["tokens"] is None


def test_stream_answers_every_line_in_order(client):
    lines = [
        json.dumps({"id": "a", "text": TEXTS[0]}, ensure_ascii=False),
        "{not json",
        json.dumps({"id": 7, "text": ""}),
        json.dumps({"text": TEXTS[2]}, ensure_ascii=False),
        json.dumps({"id": "b", "body": "x"}),
    ]
    response = client.post(
        "/stream",
        content=("\n".join(lines) + "\n").encode(),
        headers={"content-type": "application/x-ndjson"},
    )
    assert response.status_code == 200
    answers = [json.loads(line) for line in response.text.splitlines()]
    assert [a["line"] for a in answers] == [1, 2, 3, 4, 5]
    assert answers[0]["id"] == "a" and answers[0]["label"] == "positive"
    assert "error" in answers[1]
    assert answers[2] == {"line": 3, "id": 7, "error": "text is empty"}
    assert answers[3]["label"] == "negative"
    assert "text: Field required" in answers[4]["error"]


def test_predictions_are_logged_and_join_the_labeling_pool(client, reviews_root):
    from loopline.offline.human_labels import labeling_pool
    from loopline.online.predlog import read_predictions, text_id
    from loopline.params import load_params
    from loopline.paths import ProjectPaths
    from loopline.tasks import get_task

    unique = "어제 극장에서 안 지루하다"
    client.post("/predict", json={"texts": [unique, 3]})
    paths = ProjectPaths.at(reviews_root)
    params = load_params(paths.params_file)
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        logged = read_predictions(paths.prediction_log_url(params))
        if any(r["inputs"].get("text") == unique for r in logged):
            break
        time.sleep(0.1)
    row = next(r for r in logged if r["inputs"].get("text") == unique)
    assert row["model_name"] == "reviews" and row["output"]["label"] in ("positive", "negative")
    pool = labeling_pool(get_task("reviews"), paths, params)
    assert text_id(unique) in set(pool["id"])
    assert set(pool["origin"]) == {"data", "prediction_log"}


def test_classified_texts_are_stored_once_without_a_label(client, reviews_root):
    """`serve.store_inputs`: each accepted text once, by its id (a stream line's own, else
    the text's `text_id`), no label (it comes by `loopline label import`); refused texts
    are not stored."""
    import time

    from loopline.online.live import read_live_inputs
    from loopline.online.predlog import text_id
    from loopline.params import load_params
    from loopline.paths import ProjectPaths

    first, second = "내일 또 보고 싶다 정말로", "다시는 안 본다 진짜"
    client.post("/predict", json={"texts": [first, "   ", first]})
    client.post("/explain", json={"texts": [first]})
    lines = [
        {"id": "r-1", "text": second},
        {"id": "r-2", "text": ""},
        {"id": "r-1", "text": second},
    ]
    client.post(
        "/stream",
        content="\n".join(json.dumps(line) for line in lines) + "\n",
        headers={"content-type": "application/x-ndjson"},
    )
    params = load_params(ProjectPaths.at(reviews_root).params_file)
    url = ProjectPaths.at(reviews_root).prediction_log_url(params)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = read_live_inputs(url, "reviews", ["id", "document", "label"])
        if {"r-1", text_id(first)} <= set(rows["id"]):
            break
        time.sleep(0.1)
    mine = rows[rows["id"].isin(["r-1", "r-2", text_id(first)])]
    assert sorted(mine["id"]) == sorted(["r-1", text_id(first)])
    assert set(mine["document"]) == {first, second} and mine["label"].isna().all()


def test_metadata_describes_the_text_model(client):
    meta = client.get("/metadata").json()
    model = meta["model"]
    assert model["task"] == "reviews" and model["labels"] == ["negative", "positive"]
    assert model["max_length"] == 32 and model["vocabulary_size"] > 10
    assert "test_accuracy" in model["metrics"]


def test_the_one_service_offers_the_tasks_apis_typed(client):
    spec = client.get("/docs.json").json()
    assert {"/predict", "/explain", "/stream", "/metadata"} <= set(spec["paths"])
    assert not any(path.startswith("/predict_") for path in spec["paths"])  # takes no files
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["required"] == ["texts"]
    answers = spec["paths"]["/explain"]["post"]["responses"]["200"]["content"]
    assert answers["application/json"]["schema"]["items"]["$ref"].endswith("/Classified")


def test_loopline_serve_model_reviews_serves_the_review_champion(reviews_root, tmp_path):
    """The real command: `loopline serve --model reviews` picks the review service."""
    import sys
    from pathlib import Path

    import httpx

    from loopline.health import free_port
    from tests.serving.conftest import serve_process

    port = free_port()
    command = [
        str(Path(sys.executable).parent / "loopline"),
        "serve",
        "--project",
        str(reviews_root),
        "--model",
        "reviews",
        "--port",
        str(port),
    ]
    url = f"http://127.0.0.1:{port}"
    with serve_process(command, tmp_path, tmp_path / "serve.log", url):
        answer = httpx.post(f"{url}/predict", json={"texts": [TEXTS[0], ""]}, timeout=30).json()
        assert answer[0]["label"] == "positive" and answer[1]["error"] == "text is empty"
        assert httpx.get(f"{url}/metadata").json()["model"]["task"] == "reviews"
