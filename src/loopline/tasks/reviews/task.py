"""Review sentiment: Korean movie reviews → negative (0) / positive (1).

The text family (`loopline.tasks.text`) configured for the NSMC columns: rows follow the
reviews data contract (`id, document, label, date, movie_id, rating`), read from any
TSV/CSV/Parquet file or SQL table (`ingest.source`); there is no built-in source. Labels are
0 (negative) and 1 (positive); a rating, where given, is 1-10. A row without a label joins
the unlabeled pool that active learning picks the next batch for people to label from.

Sets are split by movie (`grouped`): reviews of one movie share names and words, and a
movie in both training and test sets would overstate accuracy. Everything else (syllable
tokens, the vocabulary in the feature spec, the attention classifier, the TF-IDF baseline,
pretraining, serving) is the text family's.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import pandas as pd

from loopline.config import Params, Section
from loopline.offline.validate import Rule
from loopline.tasks.text.task import TextModelSettings, TextTask

LABELS = ("negative", "positive")  # class 0, class 1


class ReviewsParams(TextModelSettings):
    """The review-sentiment task: texts → syllable tokens → positive (1) / negative (0).
    Its columns and labels are fixed (the NSMC contract): the section holds the text
    family's model knobs only."""


class ReviewsTask(TextTask):
    Settings: ClassVar[type[Section]] = ReviewsParams
    name: ClassVar[str] = "reviews"
    schema: ClassVar[dict[str, str]] = {
        "id": "string",
        "document": "string",
        "label": "float",
        "date": "string",
        "movie_id": "string",
        "rating": "float",
    }
    key_columns: ClassVar[list[str]] = ["id"]
    target_column: ClassVar[str] = "label"
    text_column: ClassVar[str] = "document"
    group_column: ClassVar[str | None] = "movie_id"
    fixed_labels: ClassVar[tuple[str, ...] | None] = LABELS
    class_names: ClassVar[tuple[str, ...]] = LABELS
    split_kind: ClassVar[Literal["chronological", "stratified", "grouped"]] = "grouped"

    def bind(self, settings: ReviewsParams) -> ReviewsTask:
        return self  # fixed columns

    def load_builtin(self, params: Params) -> pd.DataFrame:
        raise ValueError(
            "task reviews has no built-in data: point ingest.source at a reviews file or "
            "table (columns id, document, label, date, movie_id, rating), e.g. "
            "-P ingest.source=../shared/data/reviews_dev.tsv"
        )

    def rules(self, params: Params) -> list[Rule]:
        return [
            Rule("id_not_null", "not_null", column="id"),
            Rule("review_not_duplicated", "unique", columns=("id",)),
            Rule("document_not_null", "not_null", column="document"),
            Rule("document_not_blank", "not_blank", column="document"),
            Rule("movie_id_not_null", "not_null", column="movie_id"),
            # No label is fine (the unlabeled pool); a label must be 0 or 1.
            Rule("label_is_0_or_1", "in_set", column="label", values=(0.0, 1.0)),
            Rule("rating_in_range", "between", column="rating", min=1, max=10),
        ]

    def label_names(self, values: pd.Series) -> pd.Series:
        """0 → negative, 1 → positive (the data's labels are the class ids)."""
        return values.map(lambda v: LABELS[int(v)] if pd.notna(v) else pd.NA).astype("string")

    def label_values(self, names: list[str]) -> list[Any]:
        return [float(LABELS.index(name)) for name in names]
