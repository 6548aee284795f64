"""Saliency maps by occlusion: which pixels an image classifier's answer rests on.

Occlusion needs only the model's predictions, so it runs on the exported ONNX model the
service holds (no gradients, no PyTorch): slide a `patch` × `patch` square of background
over the image, one copy per position, all in one batch; a pixel's saliency is the mean
drop in the predicted class's log-probability over the copies that covered it. Positive:
evidence for the answer; negative: covering it made the answer more likely. Log, not
plain, probability: a confident model's 0.9999 barely moves in probability when a stroke
is covered, yet it moves by orders of magnitude in odds.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

Predict = Callable[[np.ndarray], np.ndarray]  # (N, C, H, W) float32 → (N, classes)


@dataclass(frozen=True)
class Saliency:
    target: int  # the class explained (the predicted one unless asked otherwise)
    probability: float  # its probability on the unoccluded image
    map: np.ndarray  # (H, W) mean log-probability drop (nats) when the pixel is covered


def occlusion_saliency(
    predict: Predict,
    image: np.ndarray,
    patch: int = 2,
    fill: float = 0.0,
    target: int | None = None,
    batch_size: int = 256,
) -> Saliency:
    """Occlusion saliency of one (C, H, W) image; `fill` is the background value (no ink).
    The occluded copies go through the model `batch_size` at a time (memory stays bounded
    for large images)."""
    if image.ndim != 3:
        raise ValueError(f"expected one (channels, height, width) image, got shape {image.shape}")
    _, height, width = image.shape
    if not 1 <= patch <= min(height, width):
        raise ValueError(f"patch {patch} does not fit a {height}×{width} image")
    base = predict(image[None].astype(np.float32))[0]
    target = int(base.argmax()) if target is None else int(target)
    corners = [(r, c) for r in range(height - patch + 1) for c in range(width - patch + 1)]
    scores = []
    for start in range(0, len(corners), batch_size):
        chunk = corners[start : start + batch_size]
        copies = np.repeat(image[None].astype(np.float32), len(chunk), axis=0)
        for i, (r, c) in enumerate(chunk):
            copies[i, :, r : r + patch, c : c + patch] = fill
        scores.append(predict(copies)[:, target])
    drops = _log(base[target]) - _log(np.concatenate(scores))
    total = np.zeros((height, width))
    covered = np.zeros((height, width))
    for drop, (r, c) in zip(drops, corners, strict=True):
        total[r : r + patch, c : c + patch] += drop
        covered[r : r + patch, c : c + patch] += 1
    return Saliency(target, float(base[target]), total / covered)


def _log(p):
    return np.log(np.maximum(p, 1e-12))  # an exported softmax can round to exactly 0


def saliency_png(image: np.ndarray, saliency: np.ndarray, scale: int = 24) -> bytes:
    """The image (ink dark on white, as a person reads it) under the saliency map: red where
    a pixel supports the answer, blue where it speaks against, stronger where it matters
    more (scaled to the largest absolute value); enlarged `scale` times, PNG bytes."""
    ink = np.clip(image.mean(axis=0), 0.0, 1.0)  # (H, W), 1 = ink
    paper = 1.0 - 0.6 * ink  # keep the digit visible under the colours
    peak = float(np.abs(saliency).max()) or 1.0
    strength = np.clip(saliency / peak, -1.0, 1.0)
    colour = np.where(
        strength[..., None] >= 0, np.array([0.85, 0.1, 0.1]), np.array([0.1, 0.3, 0.9])
    )
    alpha = 0.85 * np.abs(strength)[..., None]
    rgb = (1 - alpha) * paper[..., None] + alpha * colour
    rgb = (np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    height, width = ink.shape
    picture = Image.fromarray(rgb, "RGB").resize(
        (width * scale, height * scale), Image.Resampling.NEAREST
    )
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()
