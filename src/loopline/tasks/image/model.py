"""A small image classifier: two conv → pool blocks and a classifier head (notes, ch. 3).

Convolutions find local strokes wherever they are; pooling halves the image so the second
block sees larger shapes; the head maps what remains to the classes. Images come in as
(batch, channels, height, width) floats in 0..1: 1 channel for grey, 3 for RGB.
"""

from __future__ import annotations

import torch
from torch import nn


class ImageClassifier(nn.Module):
    def __init__(
        self,
        n_classes: int,
        image_size: int,
        in_channels: int = 1,
        channels: int = 16,
        hidden_size: int = 64,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, kernel_size=3, padding=1),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
                nn.MaxPool2d(2),
            )

        self.features = nn.Sequential(block(in_channels, channels), block(channels, 2 * channels))
        side = image_size // 4  # two 2x2 poolings
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(2 * channels * side * side, hidden_size),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_size, n_classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    def layer_groups(self) -> list[tuple[str, list[nn.Module]]]:
        """The head, then the conv blocks from the last down to the first: the order in
        which transfer learning unfreezes them (`loopline.offline.transfer`)."""
        count = len(self.features)
        blocks = [(f"features.{i}", [self.features[i]]) for i in reversed(range(count))]
        return [("head", [self.head]), *blocks]

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, labels, reduction="sum")

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.forward(images), dim=-1)

    def exportable(self) -> tuple[nn.Module, dict[int, str], list[str]]:
        return _Probabilities(self), {}, ["probabilities"]


class _Probabilities(nn.Module):
    def __init__(self, model: ImageClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.predict(images)
