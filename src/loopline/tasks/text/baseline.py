"""The text baseline trained beside the neural model in the same run, on the same split:
character n-gram TF-IDF + logistic regression (scikit-learn).

Character n-grams within words (`char_wb`) need no Korean tokenizer and catch endings such
as `-네요`, `-ㅋㅋ`; a model that cannot beat this baseline is not worth serving.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class TextBaseline:
    pipeline: Any  # sklearn Pipeline: TfidfVectorizer → LogisticRegression

    def probabilities(self, texts: list[str]) -> np.ndarray:
        return self.pipeline.predict_proba(list(texts))

    def accuracy(self, texts: list[str], labels: np.ndarray) -> float:
        predicted = self.probabilities(texts).argmax(axis=1)
        return float((predicted == np.asarray(labels)).mean())


def train_text_baseline(
    texts: list[str],
    labels: np.ndarray,
    ngram_range: tuple[int, int] = (1, 3),
    max_features: int = 200_000,
    c: float = 4.0,
    seed: int = 0,
) -> TextBaseline:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    if len(set(np.asarray(labels).tolist())) < 2:
        raise ValueError("the baseline needs training rows of at least two labels")
    pipeline = make_pipeline(
        TfidfVectorizer(
            analyzer="char_wb",
            ngram_range=ngram_range,
            max_features=max_features,
            sublinear_tf=True,
            min_df=2,
        ),
        LogisticRegression(C=c, max_iter=1000, random_state=seed),
    )
    pipeline.fit(list(texts), np.asarray(labels))
    return TextBaseline(pipeline)
