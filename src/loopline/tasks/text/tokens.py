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

import numpy as np
import regex

PAD, UNK, MASK = "<pad>", "<unk>", "<mask>"
SPECIALS = (PAD, UNK, MASK)  # ids 0, 1, 2: padding is 0 so masks are `ids != 0`
SPACE = "▁"

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


def normalize(text: str, max_repeat: int = 2) -> str:
    """NFC (jamo sequences → syllables), lower case, repeats cut to `max_repeat`."""
    text = unicodedata.normalize("NFC", text).lower()
    return regex.sub(_REPEATS % max_repeat, lambda m: m.group(1) * max_repeat, text)


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

    def __post_init__(self) -> None:
        if list(self.tokens[: len(SPECIALS)]) != list(SPECIALS):
            raise ValueError(f"a vocabulary starts with {SPECIALS}, got {self.tokens[:3]}")
        self.index = {token: i for i, token in enumerate(self.tokens)}

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
        rows = [self.ids(t)[:max_length] or [self.unk_id] for t in texts]
        width = max((len(r) for r in rows), default=1)
        ids = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
        return ids, np.array([len(r) for r in rows], dtype=np.int64)

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
