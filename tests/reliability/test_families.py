"""Issue 15's acceptance cases on the text (reviews) and image (digits) services, in-process:
schemathesis over each one's OpenAPI, and the image uploads' bounded work.

One champion per task for the module, published by the real offline flow (the serving
tests' fixtures, imported).
"""

from __future__ import annotations

import pytest

from tests.reliability.conftest import fuzz, png_declaring, summary
from tests.serving.conftest import service_app
from tests.serving.test_digits_service import digits_root, scanned  # noqa: F401 - fixture
from tests.serving.test_reviews_service import reviews_root  # noqa: F401 - fixture

pytestmark = pytest.mark.reliability


def served(root):
    """An app of the service serving `root`'s champion (env set for the app's lifetime)."""
    patch = pytest.MonkeyPatch()
    patch.setenv("LOOPLINE_PROJECT", str(root))
    patch.setenv("LOOPLINE_SERVE_LOG_FLUSH_INTERVAL_S", "0.05")
    return patch


def fuzzed(root):
    """The findings of the fuzz over the service serving `root`'s champion."""
    patch = served(root)
    try:
        return fuzz(service_app())
    finally:
        patch.undo()


@pytest.fixture(scope="module")
def reviews_fuzzed(reviews_root):  # noqa: F811 - the imported fixture
    return fuzzed(reviews_root)


@pytest.fixture(scope="module")
def digits_fuzzed(digits_root):  # noqa: F811 - the imported fixture
    return fuzzed(digits_root)


@pytest.fixture
def digits(digits_root):  # noqa: F811 - the imported fixture
    from starlette.testclient import TestClient

    patch = served(digits_root)
    try:
        with TestClient(service_app()) as client:
            yield client
    finally:
        patch.undo()


# ------------------------------------------------------------------ the published contract


def test_reviews_generated_requests_never_get_a_5xx(reviews_fuzzed):
    assert len(reviews_fuzzed) > 100
    assert not summary(reviews_fuzzed, "5xx"), summary(reviews_fuzzed, "5xx")


def test_reviews_every_4xx_is_documented_and_matches_its_schema(reviews_fuzzed):
    assert not summary(reviews_fuzzed, "4xx"), summary(reviews_fuzzed, "4xx")


def test_digits_generated_requests_never_get_a_5xx(digits_fuzzed):
    assert len(digits_fuzzed) > 100
    assert not summary(digits_fuzzed, "5xx"), summary(digits_fuzzed, "5xx")


def test_digits_every_4xx_is_documented_and_matches_its_schema(digits_fuzzed):
    assert not summary(digits_fuzzed, "4xx"), summary(digits_fuzzed, "4xx")


# ------------------------------------------------------------------ uploads: bounded work


def upload(client, data: bytes, name: str = "big.png"):
    return client.post("/predict_image", files={"file": (name, data, "image/png")})


def test_an_image_declaring_9000x9000_is_413_before_it_is_decoded(digits):
    from PIL import Image

    # Pillow counts the memory blocks it allocates for pixels: a check of the declared size
    # (the header) refuses the upload before any are (decoding it takes ~81 MB).
    before = Image.core.get_stats()["allocated_blocks"]
    response = upload(digits, png_declaring(9000, 9000))
    assert response.status_code == 413, response.text
    assert "9000×9000" in response.json()["error"]
    assert Image.core.get_stats()["allocated_blocks"] == before, "the upload was decoded"


def test_an_image_above_pillows_bomb_limit_is_413_not_500(digits):
    response = upload(digits, png_declaring(20000, 20000, rows=2))
    assert response.status_code == 413, response.text
    assert "20000×20000" in response.json()["error"]


def test_a_real_oversized_image_is_still_413_and_a_small_one_answers(digits):
    response = upload(digits, png_declaring(1500, 1500))
    assert response.status_code == 413 and "1500×1500" in response.json()["error"]
    data, label = scanned(2)
    answer = upload(digits, data, "two.png")
    assert answer.status_code == 200 and answer.json()["label"] == str(label)


@pytest.mark.parametrize("path", ["/predict_image", "/explain_image"])
def test_multipart_without_a_boundary_is_400(digits, path):
    response = digits.post(
        path, content=b"--x\r\n\r\n", headers={"content-type": "multipart/form-data"}
    )
    assert response.status_code == 400, response.text


@pytest.mark.parametrize("path", ["/predict_image", "/explain_image", "/predict"])
@pytest.mark.parametrize(
    "body", [b"not multipart at all", b"--b\r\nno headers\r\n", b"--b\r\n\r\n--b--"]
)
def test_a_body_that_is_not_the_multipart_it_declares_is_a_4xx(digits, path, body):
    kind = "multipart/form-data; boundary=b"
    response = digits.post(path, content=body, headers={"content-type": kind})
    # /predict takes JSON only (415); an upload path reads the form and says what is wrong
    assert response.status_code == (415 if path == "/predict" else 400), response.text
    assert response.json()["error"]


def test_an_explain_of_thousands_of_items_is_refused_before_any_work(digits):
    blank = [[0.0] * 8 for _ in range(8)]
    flood = digits.post("/explain", json={"images": [blank] * 2000})  # 0.7 MB of JSON
    assert flood.status_code == 413, flood.text  # by its length, before a byte is parsed
    assert "serve.max_explain_bytes" in flood.json()["error"]
    over = digits.post("/explain", json={"images": [blank] * 17})
    assert over.status_code == 400 and "at most 16 items" in over.text, over.text
    bounded = digits.post("/explain", json={"images": [blank] * 16})
    assert bounded.status_code == 200 and len(bounded.json()) == 16
