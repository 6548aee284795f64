"""A recurrent forecaster: a window of feature vectors → the next `horizon` target values."""

from __future__ import annotations

import torch
from torch import nn


class Forecaster(nn.Module):
    """LSTM or GRU encoder over the input window, a linear head over its last state.

    `forward` works in the scaled target space the loss is computed in; `predict` returns
    target units, clipped at zero for a target that is never negative (`nonnegative`: PV
    power, counts). The scale lives in buffers, so the exported ONNX graph outputs target
    units directly.
    """

    def __init__(
        self,
        n_features: int,
        horizon: int,
        hidden_size: int = 64,
        num_layers: int = 1,
        dropout: float = 0.0,
        cell: str = "lstm",
        target_mean: float = 0.0,
        target_std: float = 1.0,
        nonnegative: bool = True,
    ) -> None:
        super().__init__()
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = rnn(
            input_size=n_features,
            hidden_size=hidden_size,
            num_layers=num_layers,
            batch_first=True,
            # PyTorch applies recurrent dropout only between stacked layers.
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, horizon)
        self.register_buffer("target_mean", torch.tensor(float(target_mean)))
        self.register_buffer("target_std", torch.tensor(float(target_std)))
        self.nonnegative = nonnegative

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(self.dropout(out[:, -1, :]))

    def layer_groups(self) -> list[tuple[str, list[nn.Module]]]:
        """The head, then the recurrent encoder (`loopline.offline.transfer`)."""
        return [("head", [self.head]), ("rnn", [self.rnn])]

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        values = self.forward(x) * self.target_std + self.target_mean
        return torch.clamp(values, min=0.0) if self.nonnegative else values

    def exportable(self) -> tuple[nn.Module, dict[int, str], list[str]]:
        """What export writes: the module, dynamic input axes beyond the batch, outputs."""
        return Predictor(self), {}, ["forecast"]


class Predictor(nn.Module):
    """Wraps a model so its `forward` is `predict`: what gets exported and served."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.predict(x)
