"""The syllable tokenizer and vocabulary of the reviews task (fixtures written here)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import regex

from loopline.tasks.text.token_arrays import COMMON_RANGES
from loopline.tasks.text.tokens import (
    ARRAYS_FROM,
    MASK,
    PAD,
    SPACE,
    UNK,
    Vocabulary,
    normalize,
    tokenize,
)


def test_each_hangul_syllable_is_a_token_and_spaces_are_one_boundary():
    assert tokenize("정말  재밌어요") == ["정", "말", SPACE, "재", "밌", "어", "요"]
    assert tokenize("  앞뒤 공백\t\n") == ["앞", "뒤", SPACE, "공", "백"]


def test_latin_words_stay_whole_and_lower_case_digits_split():
    assert tokenize("CGV에서 Marvel 10점") == [
        "cgv", "에", "서", SPACE, "marvel", SPACE, "1", "0", "점",
    ]  # fmt: skip


def test_words_of_any_alphabet_stay_whole_and_cjk_characters_are_tokens():
    assert tokenize("Café crème, très bon!") == [
        "café", SPACE, "crème", ",", SPACE, "très", SPACE, "bon", "!",
    ]  # fmt: skip
    assert tokenize("Привет, МИР") == ["привет", ",", SPACE, "мир"]
    assert tokenize("Ελληνικά") == ["ελληνικά"]
    assert tokenize("e\u0301tude") == ["étude"]  # a combining accent joins its letter
    assert tokenize("中文很好 日本語です") == [
        "中", "文", "很", "好", SPACE, "日", "本", "語", "で", "す",
    ]  # fmt: skip


def test_repeated_characters_are_cut_to_the_limit():
    assert tokenize("ㅋㅋㅋㅋㅋㅋ 최고!!!!!") == ["ㅋ", "ㅋ", SPACE, "최", "고", "!", "!"]
    assert tokenize("ㅠㅠㅠㅠ", max_repeat=3) == ["ㅠ", "ㅠ", "ㅠ"]
    assert normalize("와아아아아") == "와아아"


def test_jamo_sequences_compose_and_lone_jamo_are_kept():
    decomposed = "\u1100\u1161\u11a8"  # ᄀ + ᅡ + ᆨ: the syllable 각 written as jamo
    assert tokenize(decomposed) == ["각"]
    assert tokenize("ㅡㅡ 별로") == ["ㅡ", "ㅡ", SPACE, "별", "로"]


def test_an_emoji_is_one_token_even_as_a_sequence():
    family = "👨\u200d👩\u200d👧"  # one grapheme of three emoji joined by ZWJ
    thumbs = "👍🏽"  # with a skin tone
    assert tokenize(f"좋아요{thumbs}{family}") == ["좋", "아", "요", thumbs, family]


def test_vocabulary_comes_from_the_given_texts_only_with_stable_ids():
    train = ["재밌다 재밌어", "재미없다", "최고 최고"]
    vocab = Vocabulary.build(train, min_count=2)
    assert vocab.tokens[:3] == [PAD, UNK, MASK]
    assert {"재", "밌", "최", "고", SPACE} <= set(vocab.tokens)
    assert "없" not in vocab.tokens  # seen once: below min_count
    assert Vocabulary.build(list(reversed(train)), min_count=2).tokens == vocab.tokens
    assert vocab.ids("짱") == [vocab.unk_id]  # never seen in training


def test_encode_pads_truncates_and_never_leaves_a_row_empty():
    vocab = Vocabulary.build(["가나다라마바사"], min_count=1)
    ids, lengths = vocab.encode(["가나다라마바사", "가", ""], max_length=4)
    assert ids.shape == (3, 4) and ids.dtype == np.int64
    assert lengths.tolist() == [4, 1, 1]
    assert vocab.decode(ids[0]) == ["가", "나", "다", "라"]
    assert ids[1].tolist()[1:] == [0, 0, 0] and ids[2, 0] == vocab.unk_id


def test_vocabulary_round_trips_through_json():
    vocab = Vocabulary.build(["한글 text 👍 ㅋㅋ"], min_count=1, max_repeat=3)
    again = Vocabulary.from_json(vocab.to_json())
    assert again.tokens == vocab.tokens and again.max_repeat == 3
    assert again.ids("한글 ㅋㅋㅋㅋ") == vocab.ids("한글 ㅋㅋㅋㅋ")


def test_a_vocabulary_without_its_special_tokens_is_refused():
    with pytest.raises(ValueError, match="starts with"):
        Vocabulary(["가", "나"])


# ---------------------------------------------------------------- the array passes

# A grapheme that no following character can extend (Unicode's grapheme break classes).
ALONE = regex.compile(r"[\p{GCB=Other}\p{GCB=LV}\p{GCB=LVT}\t\n]")


def test_every_common_character_follows_the_rules_the_array_passes_assume():
    for first, last in COMMON_RANGES:
        for point in range(ord(first), ord(last) + 1):
            c = chr(point)
            # One grapheme whatever follows; white space only if tab, newline or space; a
            # letter of a word only if a-z (or A-Z, lower-cased first); else one token.
            assert ALONE.fullmatch(c) and not regex.fullmatch(r"\p{M}", c), hex(point)
            if c in "\t\n ":
                expected = ["a", SPACE, "a"]
            elif c.isascii() and c.isalpha():
                expected = [f"a{c.lower()}a"]
            else:
                expected = ["a", c, "a"]
            assert tokenize(f"a{c}a", max_repeat=3) == expected, hex(point)


# Characters the array passes read, and ones that send a text to `tokenize`: white space
# of other kinds, the boundary token itself, NUL (the passes' separator), marks, joined
# jamo, Greek and accented words, Arabic-Indic digits, a flag, a skin tone, joined emoji, a
# prepended mark, the Kelvin sign (K once folded).
COMMON = list("abcxyzABCXYZ0123456789  \t\n.,!?~^'\"-_가나다안돼재밌ㅋㅠㅡ中文👍❤…※→")
OTHER = ["\r", "\u3000", "\xa0", SPACE, "\x00", "\u0301", "e\u0301", "\u1100\u1161", "ΣΑΣ",
         "é", "İ", "\u0660", "🇰🇷", "👍🏻", "👨\u200d👩", "❤\ufe0f", "\u0600", "\u212a"]  # fmt: skip


def random_texts(rng: random.Random, n: int, others: bool) -> list[str]:
    pool = COMMON + (OTHER if others else ["", " ", "  "])
    texts = []
    for _ in range(n):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(0, 20)))
        texts.append(text + rng.choice(pool) * rng.randint(0, 5))  # a repeat, maybe
    return texts


@pytest.mark.parametrize("others", [False, True], ids=["common", "mixed"])
def test_encoding_a_batch_gives_each_text_the_ids_it_has_alone(others):
    rng = random.Random(7)
    vocab = Vocabulary.build([*random_texts(rng, 200, others), "cgv abc ab"], min_count=1)
    for _ in range(200):
        texts = random_texts(rng, rng.randint(ARRAYS_FROM, 40), others)
        repeat = rng.choice([0, 1, 2, 3])
        cut = Vocabulary(vocab.tokens, max_repeat=repeat)
        for max_length in (0, 3, 32):
            ids, lengths = cut.encode(texts, max_length)
            rows = [cut.ids(t)[:max_length] or [cut.unk_id] for t in texts]
            assert lengths.tolist() == [len(r) for r in rows]
            assert ids.shape == (len(texts), max(map(len, rows))) and ids.dtype == np.int64
            assert [row[:n].tolist() for row, n in zip(ids, lengths, strict=True)] == rows
            assert not any(row[n:].any() for row, n in zip(ids, lengths, strict=True))
