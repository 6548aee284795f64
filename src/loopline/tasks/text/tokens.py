"""Text tokenization for any script: one token per Hangul syllable or CJK character, one per
word of an alphabet (Latin, Cyrillic, Greek, ...), one per emoji.

Syllables (가, 나, …) are the unit of Korean: words inflect by attaching syllables, so a
syllable vocabulary of a few thousand covers almost any text with no morphological
analyser, and a typo or a new word still maps to known syllables. Han characters and kana
(中, 文, か) are each a token for the same reason: they are written without spaces and a
character carries meaning. Around them:

- spaces become one boundary token (`▁`): Korean spacing carries meaning (`안 돼` / `안돼`);
- words of an alphabet are one token each, lower-cased, accents kept (`cgv`, `marvel`,
  `café`, `привет`, `λόγος`): a split into letters would say little;
- digits are one token each (`10점` → `1 0 점`): a handful of tokens covers every number;
- an emoji (a whole grapheme cluster, skin tones and ZWJ sequences included) is one token,
  as is each punctuation mark or symbol;
- a character repeated more than `max_repeat` times is cut to `max_repeat` (`ㅋㅋㅋㅋㅋ`,
  `!!!!!`, `ㅠㅠㅠㅠ`): the length of the laugh is noise, its presence is signal;
- conjoining jamo are composed into syllables (Unicode NFC) and lone compatibility jamo
  (`ㅋ`, `ㅠ`, `ㅡ`) are kept as tokens of their own: they are the notes' emoticons.

The vocabulary is built from the training split only and saved with the model (JSON); the
service encodes requests with the same object, so training and serving cannot drift.
"""

from __future__ import annotations

import json
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
import regex

from loopline.tasks.text.token_arrays import CharIds, Known, all_common, common_token_ids

PAD, UNK, MASK = "<pad>", "<unk>", "<mask>"
SPECIALS = (PAD, UNK, MASK)  # ids 0, 1, 2: padding is 0 so masks are `ids != 0`
SPACE = "▁"
# Batches from this many texts are encoded by array passes (`Vocabulary.token_ids`): their
# fixed cost (~0.05 ms) is more than a few texts' own, one by one.
ARRAYS_FROM = 8

# One alternative per token kind, tried in order at each position.
_TOKEN = regex.compile(
    r"""
    (?P<space>\s+)
  | (?P<word>(?:[\p{Latin}\p{Cyrillic}\p{Greek}\p{Armenian}\p{Georgian}]\p{M}*)+)
  | (?P<digit>\d)
  | (?P<hangul>[\p{Script=Hangul}])
  | (?P<other>\X)
    """,
    regex.VERBOSE,
)
# A run of more than n of the same grapheme (filled in with max_repeat at use).
_REPEATS = r"(\X)\1{%d,}"


@cache
def _repeats(max_repeat: int) -> regex.Pattern:
    # Compiled once: `regex.sub` with a pattern's text looks it up in a cache each call,
    # which cost as much as the substitution on a review.
    return regex.compile(_REPEATS % max_repeat)


def fold(text: str) -> str:
    """NFC (jamo sequences → syllables) and lower case: `normalize` before its repeats."""
    return unicodedata.normalize("NFC", text).lower()


def normalize(text: str, max_repeat: int = 2) -> str:
    """NFC (jamo sequences → syllables), lower case, repeats cut to `max_repeat`."""
    return _repeats(max_repeat).sub(lambda m: m.group(1) * max_repeat, fold(text))


def tokenize(text: str, max_repeat: int = 2) -> list[str]:
    """Tokens of one text, in order (see the module's docstring for the rules)."""
    tokens: list[str] = []
    for match in _TOKEN.finditer(normalize(text, max_repeat)):
        if match.lastgroup == "space":
            if tokens and tokens[-1] != SPACE:
                tokens.append(SPACE)
        else:
            tokens.append(match.group())
    if tokens and tokens[-1] == SPACE:
        tokens.pop()
    return tokens


@dataclass
class Vocabulary:
    """Token ↔ id, built on training texts; unknown tokens map to `<unk>`."""

    tokens: list[str]
    max_repeat: int = 2
    index: dict[str, int] = field(init=False, repr=False)
    known: Known = field(init=False, repr=False)  # for `encode`'s array passes

    def __post_init__(self) -> None:
        if list(self.tokens[: len(SPECIALS)]) != list(SPECIALS):
            raise ValueError(f"a vocabulary starts with {SPECIALS}, got {self.tokens[:3]}")
        self.index = {token: i for i, token in enumerate(self.tokens)}
        boundary = self.index.get(SPACE, self.unk_id)
        chars = CharIds.of(self.index)
        self.known = Known(self.index, chars, self.unk_id, boundary, self.max_repeat)

    @classmethod
    def build(
        cls,
        texts: Iterable[str],
        min_count: int = 2,
        max_size: int = 8000,
        max_repeat: int = 2,
    ) -> Vocabulary:
        """The `max_size` most frequent tokens seen at least `min_count` times.

        Ties are broken by the token itself so the same texts always give the same ids."""
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(tokenize(text, max_repeat))
        kept = sorted(
            (t for t, n in counts.items() if n >= min_count and t not in SPECIALS),
            key=lambda t: (-counts[t], t),
        )
        return cls([*SPECIALS, *kept[: max(0, max_size - len(SPECIALS))]], max_repeat)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def unk_id(self) -> int:
        return 1

    @property
    def mask_id(self) -> int:
        return 2

    def ids(self, text: str) -> list[int]:
        return [self.index.get(t, 1) for t in tokenize(text, self.max_repeat)]

    def encode(self, texts: Iterable[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, lengths): int64 ids padded with 0 to the longest text (at most
        `max_length`, longer texts keep their beginning), and each text's length (≥ 1: an
        empty text is one `<unk>`, so every row has something to attend to)."""
        texts = list(texts)
        if len(texts) < ARRAYS_FROM:
            return _padded([self.ids(t)[:max_length] or [self.unk_id] for t in texts])
        flat, counts = self.token_ids(texts)
        keep = np.minimum(counts, max_length)
        empty = keep == 0
        lengths = np.where(empty, 1, keep)
        ids = np.zeros((len(keep), int(lengths.max(initial=1))), dtype=np.int64)
        # Row by row, each text's first `keep` ids from where its ids start in `flat`.
        rows = np.repeat(np.arange(len(keep)), keep)
        columns = np.arange(len(rows)) - np.repeat(np.cumsum(keep) - keep, keep)
        ids[rows, columns] = flat[np.repeat(np.cumsum(counts) - counts, keep) + columns]
        ids[empty, 0] = self.unk_id
        return ids, lengths

    def token_ids(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(every token id of every text, in order; each text's number of tokens), as
        `ids` gives each: texts of common characters by array passes all at once
        (`token_arrays`), any other text by `ids`."""
        folded = [fold(t) for t in texts]
        if all_common("".join(folded)):
            return common_token_ids(folded, self.known)
        common = [n for n, t in enumerate(folded) if all_common(t)]
        pieces: list[Any] = [None] * len(texts)
        if common:
            flat, counts = common_token_ids([folded[n] for n in common], self.known)
            for n, piece in zip(common, np.split(flat, np.cumsum(counts)[:-1]), strict=True):
                pieces[n] = piece
        for n in (n for n, piece in enumerate(pieces) if piece is None):
            pieces[n] = self.ids(texts[n])
        counts = np.array([len(p) for p in pieces], dtype=np.int64)
        return np.concatenate([np.zeros(0, dtype=np.int64), *pieces]).astype(np.int64), counts

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.tokens[i] for i in ids if i != self.pad_id]

    def to_json(self) -> str:
        return json.dumps(
            {"tokens": self.tokens, "max_repeat": self.max_repeat}, ensure_ascii=False
        )

    @classmethod
    def from_json(cls, text: str) -> Vocabulary:
        data = json.loads(text)
        return cls(list(data["tokens"]), int(data["max_repeat"]))


def _padded(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(ids, lengths) of rows of ids, padded with 0 to the longest."""
    ids = np.zeros((len(rows), max((len(r) for r in rows), default=1)), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
    return ids, np.array([len(r) for r in rows], dtype=np.int64)
