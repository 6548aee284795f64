"""The digit service in-process, on a champion the real digits flow published: arrays and
PNG/JPEG uploads in, probabilities out; each kind of bad image a 4xx naming the problem."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.conftest import write_project
from tests.pipelines.test_digits_flow import TINY_DIGITS
from tests.serving.conftest import service_app


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory, prefect_harness):
    import os

    from pipelines.offline import offline_flow

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("LOOPLINE_HOME", None)
    root = write_project(tmp_path_factory.mktemp("served-digits") / "proj", TINY_DIGITS)
    assert offline_flow(root=str(root))["promoted"]
    return root


@pytest.fixture
def client(digits_root, monkeypatch):
    from starlette.testclient import TestClient

    from serving.digits import DigitClassifier

    monkeypatch.setenv("LOOPLINE_PROJECT", str(digits_root))
    with TestClient(service_app(DigitClassifier)) as test_client:
        yield test_client


def scanned(index: int, side: int = 32, mode: str = "L") -> tuple[bytes, int]:
    """A training digit as a person would upload it: dark ink on white, enlarged."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    ink = digits.images[index] / 16.0
    grey = Image.fromarray((255 * (1 - ink)).astype(np.uint8), "L").resize((side, side))
    out = io.BytesIO()
    grey.convert(mode).save(out, format="JPEG" if mode == "RGB" else "PNG")
    return out.getvalue(), int(digits.target[index])


def upload(client, data: bytes, name: str = "digit.png"):
    return client.post("/predict_image", files={"file": (name, data, "image/png")})


def test_png_upload_round_trip(client):
    right = 0
    for index in range(20):
        data, label = scanned(index)
        response = upload(client, data)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert abs(sum(answer["probabilities"].values()) - 1) < 1e-4
        right += answer["label"] == str(label)
    assert right >= 18


def test_rgb_jpeg_is_read_as_grey(client):
    data, label = scanned(3, side=64, mode="RGB")
    response = upload(client, data, "digit.jpg")
    assert response.status_code == 200 and response.json()["label"] == str(label)


def test_bad_images_get_a_4xx_naming_the_problem(client):
    response = upload(client, b"this is not an image", "notes.txt")
    assert response.status_code == 415 and "notes.txt: not a PNG or JPEG image" in response.text
    big = io.BytesIO()
    Image.new("L", (2000, 10)).save(big, format="PNG")
    response = upload(client, big.getvalue(), "wide.png")
    assert response.status_code == 413
    assert "2000×10 pixels; the limit is 1024 per side" in response.json()["error"]
    rgba = io.BytesIO()
    Image.new("RGBA", (16, 16)).save(rgba, format="PNG")
    response = upload(client, rgba.getvalue(), "alpha.png")
    assert response.status_code == 400
    assert "4 channel(s) (RGBA); send grey (1 channel) or RGB (3)" in response.json()["error"]
    gif = io.BytesIO()
    Image.new("L", (8, 8)).save(gif, format="GIF")
    response = upload(client, gif.getvalue(), "anim.gif")
    assert response.status_code == 415 and "GIF is not accepted" in response.text


def test_predict_takes_arrays_and_names_a_wrong_shape(client):
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images[:5] / 16.0).tolist()
    out = client.post("/predict", json={"images": images})
    assert out.status_code == 200, out.text
    assert [a["label"] for a in out.json()] == [str(t) for t in digits.target[:5]]
    bad = client.post("/predict", json={"images": [images[0], [[0.0] * 7] * 8]})
    assert bad.status_code == 400 and "images[1] is 8×7; the model reads 8×8" in bad.text
