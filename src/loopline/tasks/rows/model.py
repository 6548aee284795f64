"""A small multilayer perceptron for one-row-one-example tasks.

Standardised feature values in; class logits (a classifier) or the scaled target (a
regressor) out. `predict` gives what is served: class probabilities, or the target in its
own units.
"""

from __future__ import annotations

import torch
from torch import nn


class RowMLP(nn.Module):
    def __init__(
        self,
        n_features: int,
        n_outputs: int,
        hidden_size: int,
        layers: int,
        dropout: float,
        classify: bool,
        target_mean: float = 0.0,
        target_std: float = 1.0,
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        width = n_features
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden_size), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden_size
        self.hidden = nn.Sequential(*blocks)
        self.head = nn.Linear(width, n_outputs)
        self.classify = classify
        self.target_mean, self.target_std = float(target_mean), float(target_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(x))

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.classify:
            return nn.functional.cross_entropy(output, target, reduction="sum")
        return nn.functional.mse_loss(output, target, reduction="sum")

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        output = self.forward(x)
        if self.classify:
            return torch.softmax(output, dim=-1)
        return output * self.target_std + self.target_mean

    def layer_groups(self) -> list[tuple[str, list[nn.Module]]]:
        """The head, then the hidden layers from the last down (transfer learning unfreezes
        them in this order)."""
        linear = [i for i, m in enumerate(self.hidden) if isinstance(m, nn.Linear)]
        groups = [(f"hidden.{i}", [self.hidden[i]]) for i in reversed(linear)]
        return [("head", [self.head]), *groups]

    def exportable(self) -> tuple[nn.Module, dict[int, str], list[str]]:
        return _Served(self), {}, ["probabilities" if self.classify else "value"]


class _Served(nn.Module):
    def __init__(self, model: RowMLP) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.predict(x)
