"""A text model's inputs and answers, shared by the task (offline) and its serving
adapter: token ids from the spec's vocabulary, the checks a served text passes, and the
model's outputs as people read them."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from loopline.offline.features import FeatureSpec
from loopline.onnx_runtime import run_onnx_outputs
from loopline.tasks.text.tokens import Vocabulary, tokenize


def vocabulary(spec: FeatureSpec) -> Vocabulary:
    """The spec's fitted vocabulary (raises when the spec was never fitted)."""
    if spec.options.vocabulary is None:
        raise ValueError("the feature spec has no vocabulary: fit it on a training split first")
    return _parsed(spec.options.vocabulary)


@lru_cache(maxsize=8)
def _parsed(saved: str) -> Vocabulary:
    # Once per model, not per batch: parsing and indexing a vocabulary of thousands of
    # tokens costs more than tokenizing a served batch.
    return Vocabulary.from_json(saved)


def encode(texts: list[str], spec: FeatureSpec, vocab: Vocabulary | None = None) -> np.ndarray:
    """Token ids (rows padded with 0) of `texts`, as the model reads them."""
    vocab = vocab or vocabulary(spec)
    return vocab.encode(texts, spec.options.max_length)[0]


def explanations(
    texts: list[str],
    spec: FeatureSpec,
    probabilities: np.ndarray,
    weights: np.ndarray | None = None,
    vocab: Vocabulary | None = None,
) -> list[dict[str, Any]]:
    """Model outputs as people read them: label, probabilities and, with `weights`, the
    (token, weight) pairs.

    Tokens are the text's own tokens (an unknown syllable shows as itself, not `<unk>`),
    cut at the same `max_length` the model read. Without `weights` the texts are not
    tokenized again (a plain prediction needs no tokens).
    """
    labels = spec.labels
    max_repeat = (vocab or vocabulary(spec)).max_repeat if weights is not None else 0
    out = []
    for i, text in enumerate(texts):
        p = probabilities[i]
        item: dict[str, Any] = {
            "label": labels[int(p.argmax())],
            "probabilities": {name: float(v) for name, v in zip(labels, p, strict=True)},
        }
        if weights is not None:
            tokens = tokenize(text, max_repeat)[: spec.options.max_length]
            item["tokens"] = [
                {"token": t, "weight": float(w)}
                for t, w in zip(tokens, weights[i][: len(tokens)], strict=False)
            ]
        out.append(item)
    return out


def text_problem(value: Any, spec: FeatureSpec) -> str | None:
    """Why `value` cannot be classified by the model of `spec` (None when it can): the
    service answers each bad item with this, and classifies the others."""
    if not isinstance(value, str):
        return f"text must be a string, got {type(value).__name__}"
    if not value.strip():
        return "text is empty"
    limit = spec.options.max_text_chars
    if len(value) > limit:
        return (
            f"text is {len(value):,} characters, longer than the limit of {limit:,} "
            f"({spec.task}.max_text_chars)"
        )
    return None


def classify(session, spec: FeatureSpec, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(class probabilities, attention per token) of an ONNX classifier for `texts`."""

    probabilities, attention = run_onnx_outputs(session, encode(texts, spec))
    return probabilities, attention
