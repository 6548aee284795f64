"""`tokens.tokenize`'s rules for a whole batch of texts in a few array passes, for texts of
common characters (ASCII, Hangul, CJK ideographs, common punctuation, symbols and emoji).

Over those characters the rules reduce to what arrays do at once: each character is a
grapheme of its own whatever follows it (no mark, joiner, conjoining jamo, skin tone or
flag half among them), so a repeat is a run of one code point; white space is tab, newline
and space only; the only letters of an alphabet are a-z (texts are lower-cased first); and
every other character is a token by itself. A batch is then numpy passes over its code
points rather than two regular-expression scans and a Python loop per text (~15 µs a
review: most of a served review's own cost). A text holding any other character goes
through `tokenize`. `tests/unit/test_text.py` checks every character listed here against
`tokens`' own expressions, and the ids of both ways on mixed texts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

COMMON_RANGES = (
    ("\t", "\n"),
    (" ", "~"),  # the rest of ASCII
    ("\u2010", "\u2027"),  # dashes, quotes, bullets, the ellipsis
    ("\u2030", "\u205e"),  # per mille, primes, ※, ‼
    ("\u2190", "\u21ff"),  # arrows
    ("\u2600", "\u27bf"),  # symbols and dingbats: ♥ ★ ✔
    ("\u3131", "\u318e"),  # Hangul compatibility jamo: ㅋ ㅠ (not the conjoining ones)
    ("\u4e00", "\u9fff"),  # CJK ideographs
    ("\uac00", "\ud7a3"),  # Hangul syllables
    ("\U0001f300", "\U0001f3fa"),  # pictographs (the skin tones after them join the one before)
    ("\U0001f400", "\U0001f64f"),  # pictographs, emoticons
    ("\U0001f680", "\U0001f6ff"),  # transport and map symbols
    ("\U0001f900", "\U0001f9ff"),  # supplemental pictographs
)
_COMMON = re.compile(
    "[" + "".join(f"{re.escape(a)}-{re.escape(b)}" for a, b in COMMON_RANGES) + "]*"
)
_SEPARATOR = 0  # between texts in a batch's code points (NUL is no common character)


def all_common(text: str) -> bool:
    """Whether `text` (NFC, lower case) holds only common characters."""
    return _COMMON.fullmatch(text) is not None


@dataclass(frozen=True)
class CharIds:
    """A vocabulary's one-character tokens by code point (sorted, for a search)."""

    points: np.ndarray
    ids: np.ndarray

    @classmethod
    def of(cls, index: dict[str, int]) -> CharIds:
        singles = sorted((ord(token), i) for token, i in index.items() if len(token) == 1)
        points, ids = zip(*singles, strict=True) if singles else ((), ())
        return cls(np.array(points, dtype=np.uint32), np.array(ids, dtype=np.int64))

    def lookup(self, points: np.ndarray, unknown: int) -> np.ndarray:
        if len(self.points) == 0:
            return np.full(len(points), unknown, dtype=np.int64)
        at = np.searchsorted(self.points, points).clip(max=len(self.points) - 1)
        return np.where(self.points[at] == points, self.ids[at], unknown)


@dataclass(frozen=True)
class Known:
    """What the array passes need of a vocabulary."""

    index: dict[str, int]  # token → id
    chars: CharIds
    unknown: int
    boundary: int  # the id of the space boundary token
    max_repeat: int


def common_token_ids(texts: list[str], known: Known) -> tuple[np.ndarray, np.ndarray]:
    """(every token id of every text, in order; each text's number of tokens) for texts
    of common characters already NFC and lower case: what `Vocabulary.ids` gives each."""
    joined = chr(_SEPARATOR).join(texts).encode("utf-32-le")
    points = np.frombuffer(joined, dtype=np.uint32)
    points = points[~_past_repeat(points, known.max_repeat)]
    owner = np.cumsum(points == _SEPARATOR)  # each code point's text
    letter = (points >= ord("a")) & (points <= ord("z"))
    inside_word = np.zeros(len(points), dtype=bool)  # a letter after a letter
    inside_word[1:] = letter[1:] & letter[:-1]
    starts, boundary = _token_starts(points, owner, inside_word)
    ids = known.chars.lookup(points[starts], known.unknown)
    _look_up_words(points, starts, ids, inside_word, known)
    # Each token with its boundary before it: a token's place moves by the boundaries so far.
    out = np.full(len(starts) + int(boundary.sum()), known.boundary, dtype=np.int64)
    out[np.arange(len(starts)) + np.cumsum(boundary)] = ids
    counts = np.bincount(owner[starts], weights=1 + boundary, minlength=len(texts))
    return out, counts.astype(np.int64)


def _past_repeat(points: np.ndarray, n: int) -> np.ndarray:
    """Code points past the `n`-th of a run of the same one (`normalize` cuts them); never
    a separator, so texts stay apart."""
    position = np.arange(len(points))
    new_run = np.ones(len(points), dtype=bool)
    new_run[1:] = points[1:] != points[:-1]
    run_start = np.maximum.accumulate(np.where(new_run, position, 0))
    return (position - run_start >= n) & (points != _SEPARATOR)


def _token_starts(
    points: np.ndarray, owner: np.ndarray, inside_word: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Where each token starts (every character but white space, separators and the
    letters inside a word), and whether white space comes before it within its text (a
    boundary; none before a text's first token, and white space after its last makes
    none)."""
    space = (points == ord(" ")) | (points == ord("\n")) | (points == ord("\t"))
    starts = np.flatnonzero(~(space | inside_word) & (points != _SEPARATOR))
    after_space = space[starts - 1] & (starts > 0)  # (index -1: the last point, masked)
    first = np.ones(len(starts), dtype=bool)
    first[1:] = owner[starts[1:]] != owner[starts[:-1]]
    return starts, after_space & ~first


def _look_up_words(
    points: np.ndarray,
    starts: np.ndarray,
    ids: np.ndarray,
    inside_word: np.ndarray,
    known: Known,
) -> None:
    """Set the ids of the tokens that are words of two letters or more (few: one lookup
    each by its text); a one-letter word was looked up as a character."""
    second = np.flatnonzero(inside_word & ~np.roll(inside_word, 1))  # a word's 2nd letter
    if not len(second):
        return
    last = np.flatnonzero(inside_word & ~np.roll(inside_word, -1))
    places = np.searchsorted(starts, second - 1)
    for place, a, b in zip(
        places.tolist(), (second - 1).tolist(), (last + 1).tolist(), strict=True
    ):
        ids[place] = known.index.get(points[a:b].tobytes().decode("utf-32-le"), known.unknown)
