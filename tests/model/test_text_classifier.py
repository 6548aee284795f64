"""The reviews task's classifier: it learns from examples, its attention ignores padding and
finds the deciding syllable, and its ONNX export keeps batch and length dynamic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from loopline.offline.export import export_onnx
from loopline.onnx_runtime import onnx_session
from loopline.tasks.text.model import ClassifierPredictor, TextClassifier
from loopline.tasks.text.tokens import Vocabulary

POSITIVE, NEGATIVE = ["최고", "좋아", "재밌어"], ["별로", "지루해", "최악"]
FILLER = ["영화", "배우", "오늘", "극장", "그냥", "정말"]


def toy_reviews(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Filler words around one sentiment word that decides the label."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(n):
        label = int(rng.integers(2))
        words = list(rng.choice(FILLER, size=int(rng.integers(1, 5))))
        words.insert(int(rng.integers(len(words) + 1)), rng.choice([NEGATIVE, POSITIVE][label]))
        texts.append(" ".join(words))
        labels.append(label)
    return texts, np.array(labels)


@pytest.fixture(scope="module")
def trained():
    texts, labels = toy_reviews(400, 0)
    vocab = Vocabulary.build(texts, min_count=1)
    torch.manual_seed(0)
    model = TextClassifier(len(vocab), embed_size=16, hidden_size=32, dropout=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    ids, _ = vocab.encode(texts, max_length=64)
    x, y = torch.from_numpy(ids), torch.from_numpy(labels)
    for _ in range(60):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval(), vocab


def test_it_learns_the_sentiment_words_from_examples(trained):
    model, vocab = trained
    texts, labels = toy_reviews(200, 1)
    ids, _ = vocab.encode(texts, max_length=64)
    with torch.no_grad():
        predicted = model(torch.from_numpy(ids)).argmax(-1).numpy()
    assert (predicted == labels).mean() >= 0.95


def test_attention_is_a_distribution_over_real_tokens_only(trained):
    model, vocab = trained
    ids, lengths = vocab.encode(["영화 최고", "그냥 배우 오늘 극장 정말 지루해"], max_length=64)
    with torch.no_grad():
        _, weights = model.forward_with_attention(torch.from_numpy(ids))
    for row, length in zip(weights.numpy(), lengths, strict=True):
        assert row[:length].sum() == pytest.approx(1.0, abs=1e-5)
        assert (row[length:] == 0).all()


def test_attention_points_at_the_deciding_word(trained):
    model, vocab = trained
    text = "그냥 배우 영화 지루해 오늘"
    ids, _ = vocab.encode([text], max_length=64)
    with torch.no_grad():
        _, weights = model.forward_with_attention(torch.from_numpy(ids))
    tokens = vocab.decode(ids[0])
    top = tokens[int(weights[0].argmax())]
    assert top in "지루해", (tokens, weights[0].tolist())


def test_padding_does_not_change_a_prediction(trained):
    model, vocab = trained
    alone, _ = vocab.encode(["영화 최고"], max_length=64)
    padded = np.zeros((1, 20), dtype=np.int64)
    padded[0, : alone.shape[1]] = alone[0]
    with torch.no_grad():
        a = torch.softmax(model(torch.from_numpy(alone)), -1)
        b = torch.softmax(model(torch.from_numpy(padded)), -1)
    assert torch.allclose(a, b, atol=1e-5)


def test_onnx_export_keeps_batch_and_length_dynamic_with_parity(trained, tmp_path):
    model, vocab = trained
    example, _ = vocab.encode(["영화 최고", "그냥 배우 지루해"], max_length=64)
    path = export_onnx(
        ClassifierPredictor(model),
        example,
        tmp_path / "reviews.onnx",
        {"vocabulary": vocab.to_json()},
        dynamic_axes={1: "tokens"},
        output_names=["probabilities", "attention"],
    )
    session = onnx_session(path)
    for texts in (["최고"], ["영화 최고", "정말 최악 배우 극장 오늘 그냥 영화 배우"] * 5):
        ids, _ = vocab.encode(texts, max_length=64)
        probabilities, attention = session.run(None, {session.get_inputs()[0].name: ids})
        with torch.no_grad():
            expected_p, expected_a = ClassifierPredictor(model)(torch.from_numpy(ids))
        assert probabilities.shape == (len(texts), 2) and attention.shape == ids.shape
        np.testing.assert_allclose(probabilities, expected_p.numpy(), atol=1e-5)
        np.testing.assert_allclose(attention, expected_a.numpy(), atol=1e-5)
    metadata = session.get_modelmeta().custom_metadata_map
    assert Vocabulary.from_json(metadata["vocabulary"]).tokens == vocab.tokens


def test_an_even_kernel_is_refused_by_name():
    with pytest.raises(ValueError, match="kernel_size"):
        TextClassifier(10, kernel_size=4)


def test_the_ngram_bag_learns_phrases_and_exports_with_parity(tmp_path):
    """Hashed n-grams in the graph: a word only its bigram decides, and ONNX agrees."""
    from loopline.offline.export import check_parity, export_and_check
    from loopline.tasks.text.model import NgramBag

    # Same syllables, different pairs: "재미" vs "미재" (the bag needs bigrams to tell).
    texts = ["영화 재미 그냥", "배우 미재 그냥", "재미 오늘", "미재 오늘"] * 50
    labels = np.array([1, 0, 1, 0] * 50)
    vocab = Vocabulary.build(texts, min_count=1)
    torch.manual_seed(0)
    model = TextClassifier(len(vocab), embed_size=8, hidden_size=8, dropout=0.0, ngram_buckets=512)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    ids, _ = vocab.encode(texts, max_length=16)
    x, y = torch.from_numpy(ids), torch.from_numpy(labels)
    for _ in range(40):
        optimizer.zero_grad()
        model.loss(model(x), y).backward()
        optimizer.step()
    assert (model.predict(x).argmax(1).numpy() == labels).mean() == 1.0
    parity = export_and_check(model.eval(), ids[:4], tmp_path / "bag.onnx", {}, 1e-5, 1e-4)
    assert parity.passed
    long_ids, _ = vocab.encode(["영화 재미 그냥 배우 미재 오늘 " * 3], max_length=64)
    module = model.exportable()[0]
    assert check_parity(module, tmp_path / "bag.onnx", long_ids, 1e-5, 1e-4).passed
    # Hash codes stay in range for ids far beyond any vocabulary (no int64 overflow).
    bag = NgramBag(1000, 2)
    huge = torch.full((2, 6), 10**12, dtype=torch.int64)
    assert torch.isfinite(bag(huge)).all()
