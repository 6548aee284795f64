"""Occlusion saliency (`loopline.tasks.image.saliency`): a pixel the answer rests on lights up."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from loopline.tasks.image.saliency import occlusion_saliency, saliency_png


def pixel_detector(batch: np.ndarray) -> np.ndarray:
    """A two-class 'model': class 1 has e times the odds of class 0 when pixel (2, 5) is
    inked, even odds when it is not."""
    on = batch[:, 0, 2, 5]
    odds = np.exp(on)
    return np.stack([1 / (1 + odds), odds / (1 + odds)], axis=1)


def test_the_deciding_pixel_is_the_most_salient():
    image = np.zeros((1, 8, 8), np.float32)
    image[0, 2, 5] = 1.0
    image[0, 6, 1] = 1.0  # ink the model ignores
    result = occlusion_saliency(pixel_detector, image, patch=1)
    assert result.target == 1 and result.probability == pytest.approx(np.e / (1 + np.e))
    assert np.unravel_index(result.map.argmax(), result.map.shape) == (2, 5)
    # Covering it: log p(1) falls from log(e / (1 + e)) to log(1/2).
    drop = np.log(np.e / (1 + np.e)) - np.log(0.5)
    assert result.map[2, 5] == pytest.approx(drop)
    assert result.map[6, 1] == 0.0


def test_patches_spread_the_credit_over_their_neighbours():
    image = np.zeros((1, 8, 8), np.float32)
    image[0, 2, 5] = 1.0
    result = occlusion_saliency(pixel_detector, image, patch=2)
    assert result.map[2, 5] == pytest.approx(result.map.max())  # every patch covering it
    assert result.map[2, 5] > 0
    assert result.map[1, 4] > 0 and result.map[7, 0] == 0.0


def test_explaining_another_class_and_bad_shapes():
    image = np.zeros((1, 8, 8), np.float32)
    image[0, 2, 5] = 1.0
    against = occlusion_saliency(pixel_detector, image, patch=1, target=0)
    assert against.map[2, 5] < 0  # covering it helps class 0
    with pytest.raises(ValueError, match="patch 9 does not fit a 8×8 image"):
        occlusion_saliency(pixel_detector, image, patch=9)
    with pytest.raises(ValueError, match="one \\(channels, height, width\\) image"):
        occlusion_saliency(pixel_detector, image[0], patch=1)


def test_the_map_is_a_picture_a_person_can_open():
    image = np.zeros((1, 8, 8), np.float32)
    image[0, 2, 5] = 1.0
    saliency = occlusion_saliency(pixel_detector, image, patch=1)
    picture = Image.open(io.BytesIO(saliency_png(image, saliency.map, scale=10)))
    assert picture.format == "PNG" and picture.size == (80, 80) and picture.mode == "RGB"
    red, green, blue = picture.getpixel((55, 25))  # the salient pixel, enlarged
    assert red > 150 and green < 80 and blue < 80
    assert picture.getpixel((5, 75)) == (255, 255, 255)  # blank paper stays white
