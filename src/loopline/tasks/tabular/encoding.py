"""Model inputs of a table's rows, from the model's feature spec alone.

Numeric features are standardised with the training split's mean and standard deviation;
each categorical feature is one-hot encoded over its vocabulary (the categories of the
training split, kept in the spec) plus one "other" slot. A category the model never saw,
or saw in fewer than `min_category_rows` training rows, lands in "other": training teaches
that slot through the rare categories, and serving answers an unseen one instead of failing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

OTHER = "<other>"  # the slot name in input names and importance pictures


def _as_text(values: pd.Series) -> pd.Series:
    text = values.astype("string")
    numeric = pd.to_numeric(values, errors="coerce")
    whole = numeric.notna() & (numeric == numeric.round())
    text[whole] = numeric[whole].astype("Int64").astype("string")
    return text


def _distinct(values: pd.Series) -> tuple[np.ndarray, pd.Series]:
    """Each row's position among the column's distinct values (-1: missing), and those
    values as text. A column of millions of rows holds few categories: each is converted
    once, and no row-sized column of strings is made."""
    codes, uniques = pd.factorize(values)
    return codes, _as_text(pd.Series(uniques, dtype=object))


def as_category(values: pd.Series) -> pd.Series:
    """Categories as text: 3, 3.0 and "3" in a CSV are one category."""
    codes, texts = _distinct(values)
    known = np.append(texts.to_numpy(dtype=object, na_value=pd.NA), pd.NA)
    return pd.Series(known[codes], index=values.index, dtype="string")


def vocabulary(values: pd.Series, min_rows: int) -> list[str]:
    """The categories seen in at least `min_rows` training rows, sorted."""
    codes, texts = _distinct(values.dropna())
    counts = pd.Series(np.bincount(codes, minlength=len(texts))).groupby(texts.to_numpy()).sum()
    return sorted(str(c) for c, n in counts.items() if n >= min_rows)


def slots(values: pd.Series, known: list[str]) -> np.ndarray:
    """Each row's slot among `known` (a missing or unknown category: `len(known)`, "other")."""
    codes, texts = _distinct(values)
    index = {c: i for i, c in enumerate(known)}
    at = texts.map(index).fillna(len(known)).to_numpy(dtype=np.int64)
    return np.append(at, len(known))[codes]  # code -1 (missing) takes the appended "other"


def input_names(numeric: list[str], vocabularies: dict[str, list[str]]) -> list[str]:
    """One name per model input, in order (`column` or `column=category`)."""
    names = list(numeric)
    for column, known in vocabularies.items():
        names += [f"{column}={c}" for c in known] + [f"{column}={OTHER}"]
    return names


def input_blocks(numeric: list[str], vocabularies: dict[str, list[str]]) -> dict[str, list[int]]:
    """Each feature column's positions among the model inputs (`encode`'s columns): a row's
    inputs for a column depend on that row's value alone."""
    blocks: dict[str, list[int]] = {}
    for column in numeric:
        blocks[column] = [len(blocks)]
    at = len(numeric)
    for column, known in vocabularies.items():
        blocks[column] = list(range(at, at + len(known) + 1))
        at += len(known) + 1
    return blocks


def encode(
    rows: pd.DataFrame,
    numeric: list[str],
    mean: dict[str, float],
    std: dict[str, float],
    vocabularies: dict[str, list[str]],
) -> np.ndarray:
    """(N, inputs) float32: standardised numbers, then each category one-hot (+ other).

    Filled in place, a column at a time: the only row-sized array is the answer (on 10^7
    rows a float64 copy per block and a concatenation held several times the answer)."""
    out = np.zeros((len(rows), len(input_names(numeric, vocabularies))), np.float32)
    for j, column in enumerate(numeric):
        values = rows[column].to_numpy(dtype=np.float64, na_value=np.nan)
        out[:, j] = (values - mean[column]) / std[column]
    at, positions = len(numeric), np.arange(len(rows))
    for column, known in vocabularies.items():
        out[positions, at + slots(rows[column], known)] = 1.0
        at += len(known) + 1
    return out


def unseen(rows: pd.DataFrame, vocabularies: dict[str, list[str]]) -> list[list[str]]:
    """Per row, `column=value` for each category the model did not learn (its "other")."""
    found: list[list[str]] = [[] for _ in range(len(rows))]
    for column, known in vocabularies.items():
        values = as_category(rows[column])
        for position in np.flatnonzero(~values.isin(known).to_numpy(dtype=bool)):
            found[position].append(f"{column}={values.iloc[position]!r}")
    return found
