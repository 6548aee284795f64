"""Image augmentation: seeded, shape-keeping, each switch on its own, training batches only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from loopline.config import TrainParams
from loopline.offline.labeling import Examples
from loopline.offline.train import fit
from loopline.tasks.base import Hyperparameters
from loopline.tasks.image.augment import ImageAugment
from loopline.tasks.image.model import ImageClassifier


def batch() -> torch.Tensor:
    images = torch.zeros(4, 1, 8, 8)
    images[:, :, 2:6, 3:5] = 1.0  # a vertical stroke
    return images


def test_off_is_the_identity_and_each_switch_changes_the_images():
    images = batch()
    generator = torch.Generator().manual_seed(0)
    assert ImageAugment()(images, generator) is images
    for change in ({"shift_px": 2}, {"rotate_deg": 30}, {"noise": 0.1}, {"contrast": 0.5}):
        out = ImageAugment(**change)(images, torch.Generator().manual_seed(0))
        assert out.shape == images.shape and not torch.equal(out, images), change
        assert out.min() >= 0 and out.max() <= 1


def test_same_generator_state_same_augmented_batch():
    augment = ImageAugment(shift_px=1, rotate_deg=10, noise=0.05, contrast=0.2)
    a = augment(batch(), torch.Generator().manual_seed(3))
    b = augment(batch(), torch.Generator().manual_seed(3))
    c = augment(batch(), torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_a_shift_moves_the_stroke_but_keeps_its_ink():
    out = ImageAugment(shift_px=1)(batch(), torch.Generator().manual_seed(1))
    assert torch.allclose(out.sum(dim=(1, 2, 3)), batch().sum(dim=(1, 2, 3)), atol=2.5)


def test_fit_augments_training_batches_only():
    seen: list[int] = []

    def augment(images, generator):
        seen.append(len(images))
        return images

    rng = np.random.default_rng(0)
    x = rng.random((40, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 40)
    train = Examples(x[:32], y[:32], pd.DataFrame())
    val = Examples(x[32:], y[32:], pd.DataFrame())
    hparams = Hyperparameters(learning_rate=1e-3, batch_size=16)
    model = ImageClassifier(10, 8, channels=4, hidden_size=8)
    fit(model, train, val, None, hparams, TrainParams(max_epochs=2), 0, augment=augment)
    assert seen == [16, 16, 16, 16]  # 2 epochs × 2 training batches; validation never
