"""A text classifier: syllable embeddings → convolutional encoder → attention pooling → head.

Attention pooling (the notes' chapter 10) gives each token a weight that sums to one over
the text's real tokens (padding is masked out); the pooled vector is the weighted sum of the
encoder's states. The weights are part of the output, so the service can say which syllables
a prediction rests on. A convolutional encoder rather than a recurrent one: padded batches
need no packing (a reverse RNN would read the padding first), and it exports to ONNX with
dynamic batch and sequence axes and runs fast on CPU.
"""

from __future__ import annotations

import torch
from torch import nn


class AttentionPooling(nn.Module):
    """Additive attention over time: score_t = v·tanh(W h_t), softmax over real tokens."""

    def __init__(self, size: int, attention_size: int = 64) -> None:
        super().__init__()
        self.project = nn.Linear(size, attention_size)
        self.score = nn.Linear(attention_size, 1, bias=False)

    def forward(
        self, states: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.score(torch.tanh(self.project(states))).squeeze(-1)
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1) * mask  # exact zeros on padding
        pooled = torch.bmm(weights.unsqueeze(1), states).squeeze(1)
        return pooled, weights


class NgramBag(nn.Module):
    """A linear model over hashed syllable n-grams (fastText-style), computed in the graph.

    N-gram ids are hashed from the token ids with tensor arithmetic, so the exported ONNX
    model still takes token ids alone; each n-gram has one weight per class, averaged over
    the text (scaled by 1/sqrt(count)). This is the "wide" memory of exact phrases a
    character n-gram TF-IDF model has and a small convolutional encoder lacks.
    """

    PRIME = 1_000_003

    def __init__(self, buckets: int, n_classes: int, orders: tuple[int, ...] = (1, 2, 3, 4)):
        super().__init__()
        self.buckets, self.orders = buckets, tuple(orders)
        self.weights = nn.Embedding(buckets, n_classes)
        nn.init.zeros_(self.weights.weight)  # starts as "no opinion": the encoder leads

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        grams, masks = [], []
        length = ids.shape[1]
        for n in self.orders:
            span = length - n + 1
            # Hashed step by step, reduced each time: no int64 overflow for any vocabulary.
            code = ids[:, :span] % self.buckets
            mask = ids[:, :span] != 0
            for k in range(1, n):
                code = (code * self.PRIME + ids[:, k : k + span]) % self.buckets
                mask = mask & (ids[:, k : k + span] != 0)
            grams.append(code)
            masks.append(mask)
        grams, mask = torch.cat(grams, dim=1), torch.cat(masks, dim=1)
        summed = (self.weights(grams) * mask.unsqueeze(-1)).sum(dim=1)
        return summed / mask.sum(dim=1, keepdim=True).clamp(min=1).sqrt()


class TextClassifier(nn.Module):
    """Token ids (batch, tokens; 0 = padding) → class logits, with attention weights.

    With `ngram_buckets`, a hashed n-gram bag (`NgramBag`) adds its logits to the attention
    encoder's: the attention weights still say which syllables the encoder read, the bag
    adds what exact phrases are worth.
    """

    def __init__(
        self,
        vocab_size: int,
        n_classes: int = 2,
        embed_size: int = 64,
        hidden_size: int = 128,
        kernel_size: int = 3,
        layers: int = 2,
        dropout: float = 0.2,
        ngram_buckets: int = 0,
    ) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd to keep token positions, got {kernel_size}")
        self.embed = nn.Embedding(vocab_size, embed_size, padding_idx=0)
        convs = []
        size = embed_size
        for _ in range(layers):
            convs.append(nn.Conv1d(size, hidden_size, kernel_size, padding=kernel_size // 2))
            size = hidden_size
        self.convs = nn.ModuleList(convs)
        self.dropout = nn.Dropout(dropout)
        self.pool = AttentionPooling(hidden_size)
        self.head = nn.Linear(hidden_size, n_classes)
        self.ngrams = NgramBag(ngram_buckets, n_classes) if ngram_buckets else None

    def layer_groups(self) -> list[tuple[str, list[nn.Module]]]:
        """Layers from the top down to the embeddings, the order in which fine-tuning
        unfreezes them (`loopline.offline.transfer`). The top group ("head") is everything a
        pretrained encoder does not hold: the attention pooling, the head and the n-gram
        bag (it reads token ids directly, beside the encoder)."""
        top: list[nn.Module] = [self.pool, self.head]
        if self.ngrams is not None:
            top.append(self.ngrams)
        convs = [(f"convs.{i}", [self.convs[i]]) for i in reversed(range(len(self.convs)))]
        return [("head", top), *convs, ("embed", [self.embed])]

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        """Per-token states (batch, tokens, hidden); padded positions are zeroed."""
        mask = (ids != 0).unsqueeze(1)
        x = self.dropout(self.embed(ids)).transpose(1, 2)
        for conv in self.convs:
            x = torch.relu(conv(x)) * mask  # padding never leaks into the next layer
        return x.transpose(1, 2)

    def forward_with_attention(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled, weights = self.pool(self.encode(ids), ids != 0)
        logits = self.head(self.dropout(pooled))
        if self.ngrams is not None:
            logits = logits + self.ngrams(ids)
        return logits, weights

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.forward_with_attention(ids)[0]

    @staticmethod
    def lengths(ids: torch.Tensor) -> torch.Tensor:
        """Tokens per row: training batches texts of similar length together."""
        return (ids != 0).sum(dim=1)

    @staticmethod
    def trim(ids: torch.Tensor) -> torch.Tensor:
        """Drop trailing padding columns no row uses (outputs are unchanged: padding is
        masked everywhere)."""
        width = int((ids != 0).sum(dim=1).max()) if len(ids) else 1
        return ids[:, : max(width, 1)]

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy summed over the batch (the training loop averages)."""
        return nn.functional.cross_entropy(logits, labels, reduction="sum")

    def predict(self, ids: torch.Tensor) -> torch.Tensor:
        """Class probabilities."""
        return torch.softmax(self.forward(ids), dim=-1)

    def exportable(self) -> tuple[nn.Module, dict[int, str], list[str]]:
        """What export writes: the module, its dynamic input axes beyond the batch, and its
        output names (probabilities first: the output parity and signatures look at)."""
        return ClassifierPredictor(self), {1: "tokens"}, ["probabilities", "attention"]


class ClassifierPredictor(nn.Module):
    """What is exported and served: class probabilities and each token's attention weight."""

    def __init__(self, model: TextClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, weights = self.model.forward_with_attention(ids)
        return torch.softmax(logits, dim=-1), weights
