"""Masked-syllable pretraining and fine-tuning strategies, on tiny made-up Korean texts:
masking follows BERT's recipe and never touches padding, pretraining learns a learnable
pattern and is reproducible, a pretrained encoder moves into a classifier only when the
shapes agree, and each fine-tuning mode trains the layers it says it does."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from loopline.config import TrainParams
from loopline.offline.features import FeatureSpec
from loopline.offline.labeling import Examples
from loopline.offline.train import fit
from loopline.tasks.base import Hyperparameters
from loopline.tasks.text.model import TextClassifier
from loopline.tasks.text.pretrain import (
    IGNORE,
    DiscriminativeLR,
    MaskedSyllableModel,
    check_vocabulary,
    layer_groups,
    load_encoder,
    load_pretrained,
    make_fine_tuning,
    mask_tokens,
    pretrain_encoder,
    save_encoder,
)
from loopline.tasks.text.tokens import Vocabulary

# Made-up words of 2-4 syllables: inside a word each syllable is fixed by its neighbours,
# so a masked one can be guessed from context, and only from context.
WORDS = ["가나다라", "마바사", "아자차카", "타파하", "고노도", "로모보소", "오조초", "코토포호"]
POSITIVE, NEGATIVE = ["좋구나", "최고다"], ["별로다", "싫구나"]
HPARAMS = {"embed_size": 16, "hidden_size": 32, "kernel_size": 3, "layers": 2, "dropout": 0.0}
SPEC = FeatureSpec("reviews", [], "label")


def toy_texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 6)))) for _ in range(n)]


def toy_reviews(n: int, seed: int, vocab: Vocabulary) -> Examples:
    """Filler words around one word that decides the label."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(n):
        label = int(rng.integers(2))
        words = list(rng.choice(WORDS, size=int(rng.integers(1, 4))))
        words.insert(int(rng.integers(len(words) + 1)), rng.choice([NEGATIVE, POSITIVE][label]))
        texts.append(" ".join(words))
        labels.append(label)
    ids, _ = vocab.encode(texts, max_length=32)
    return Examples(ids, np.array(labels, np.int64), pd.DataFrame({"id": range(n)}))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: a second thread only adds hand-offs, and on a busy 2-core machine
    threads waiting for each other made these tests ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    sentiment = [" ".join(POSITIVE + NEGATIVE)]
    return Vocabulary.build(toy_texts(200, 0) + sentiment, min_count=1)


@pytest.fixture(scope="module")
def pretrained(vocab):
    return pretrain_encoder(
        toy_texts(400, 1),
        vocab,
        HPARAMS,
        max_length=32,
        epochs=6,
        batch_size=32,
        learning_rate=1e-2,
        seed=3,
        mask_rate=0.3,
    )


def test_masking_picks_15_percent_of_real_syllables_split_80_10_10():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 500, (400, 120), generator=generator)
    ids[:, 100:] = 0  # padding
    ids[:, :5] = torch.tensor([1, 2, 1, 2, 1])  # <unk>, <mask>: never picked either
    corrupted, labels = mask_tokens(ids, 2, 500, rate=0.15, generator=generator)
    picked = labels != IGNORE
    real = ids >= 3
    assert not picked[~real].any()
    assert torch.equal(corrupted[~picked], ids[~picked])  # only picked positions change
    assert torch.equal(labels[picked], ids[picked])
    assert picked.sum() / real.sum() == pytest.approx(0.15, abs=0.005)
    masked = (corrupted[picked] == 2).float().mean()
    kept = (corrupted[picked] == ids[picked]).float().mean()
    swapped = ((corrupted[picked] != 2) & (corrupted[picked] != ids[picked])).float().mean()
    assert masked == pytest.approx(0.8, abs=0.01)
    assert kept == pytest.approx(0.1 + 0.1 / 497, abs=0.01)  # a random id may be the same
    assert swapped == pytest.approx(0.1, abs=0.01)
    assert corrupted[picked & (corrupted != 2)].min() >= 3  # random ids are real syllables


def test_masking_is_seeded_and_checks_its_rate():
    ids = torch.randint(3, 50, (8, 20), generator=torch.Generator().manual_seed(1))
    a = mask_tokens(ids, 2, 50, generator=torch.Generator().manual_seed(5))
    b = mask_tokens(ids, 2, 50, generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    with pytest.raises(ValueError, match="rate"):
        mask_tokens(ids, 2, 50, rate=0.0)


def test_pretraining_learns_to_guess_masked_syllables(pretrained, vocab):
    first, last = pretrained.history[0], pretrained.history[-1]
    assert len(pretrained.history) == 6
    assert first.val_loss < math.log(len(vocab))  # sanity: finite, below chance after 1 epoch
    assert last.val_loss < 0.6 * first.val_loss
    assert last.val_accuracy > 0.6  # within-word syllables are predictable from neighbours
    assert set(pretrained.encoder_state) == {
        "embed.weight",
        "convs.0.weight",
        "convs.0.bias",
        "convs.1.weight",
        "convs.1.bias",
    }
    # The head scores no special id, so the padding embedding stays exactly zero.
    assert not pretrained.encoder_state["embed.weight"][0].any()


def test_same_seed_same_encoder_other_seed_other_encoder(vocab):
    def run(seed: int):
        return pretrain_encoder(toy_texts(60, 2), vocab, HPARAMS, 32, 2, 16, 1e-2, seed)

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(a.encoder_state[k], b.encoder_state[k]) for k in a.encoder_state)
    assert [e.val_loss for e in a.history] == [e.val_loss for e in b.history]
    assert not torch.equal(a.encoder_state["convs.0.weight"], c.encoder_state["convs.0.weight"])


def test_masked_model_ties_the_head_to_the_embeddings(vocab):
    model = MaskedSyllableModel(TextClassifier(len(vocab), embed_size=16, hidden_size=32))
    logits = model(torch.tensor([[5, 6, 7, 0]]))
    assert logits.shape == (1, 4, len(vocab))
    assert (logits[..., :3] < -1e30).all()  # specials are never guessed
    untied = MaskedSyllableModel(TextClassifier(len(vocab), embed_size=16), tie_weights=False)
    assert untied.decoder is not None and model.decoder is None


def test_load_pretrained_copies_the_encoder_and_refuses_another_vocabulary(pretrained, vocab):
    torch.manual_seed(0)
    classifier = TextClassifier(len(vocab), **HPARAMS)
    head_before = classifier.head.weight.clone()
    load_pretrained(classifier, pretrained.encoder_state)
    for key, value in pretrained.encoder_state.items():
        assert torch.equal(classifier.state_dict()[key], value)
    assert torch.equal(classifier.head.weight, head_before)  # the head stays fresh
    with pytest.raises(ValueError, match=rf"{len(vocab)} ids, the classifier {len(vocab) + 5}"):
        load_pretrained(TextClassifier(len(vocab) + 5, **HPARAMS), pretrained.encoder_state)
    with pytest.raises(ValueError, match=r"shape at convs\.0\.weight"):
        load_pretrained(
            TextClassifier(len(vocab), **{**HPARAMS, "hidden_size": 8}), pretrained.encoder_state
        )


def test_save_and_load_encoder_keep_weights_and_vocabulary(pretrained, vocab, tmp_path):
    path = save_encoder(pretrained, vocab, tmp_path / "encoder.pt")
    loaded, loaded_vocab = load_encoder(path)
    assert loaded_vocab.tokens == vocab.tokens
    check_vocabulary(loaded_vocab, vocab)
    assert loaded.hparams == pretrained.hparams and loaded.history == pretrained.history
    assert all(torch.equal(loaded.encoder_state[k], v) for k, v in pretrained.encoder_state.items())
    other = Vocabulary([*vocab.tokens[:3], *reversed(vocab.tokens[3:])])
    with pytest.raises(ValueError, match="vocabulary mismatch at id 3"):
        check_vocabulary(loaded_vocab, other)


def _fine_tune(pretrained, vocab, mode: str, epochs: int, on_epoch=None):
    torch.manual_seed(0)
    model = load_pretrained(TextClassifier(len(vocab), **HPARAMS), pretrained.encoder_state)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = TrainParams(max_epochs=epochs, patience=epochs, threads=1)
    hparams = Hyperparameters(learning_rate=1e-2, batch_size=32)
    result = fit(
        model,
        toy_reviews(200, 4, vocab),
        toy_reviews(60, 5, vocab),
        SPEC,
        hparams,
        params,
        seed=0,
        on_epoch=on_epoch,
        fine_tuning=make_fine_tuning(mode),
    )
    return before, result


def test_freeze_trains_the_head_only(pretrained, vocab):
    before, result = _fine_tune(pretrained, vocab, "freeze", epochs=2)
    after = result.model.state_dict()
    for key in pretrained.encoder_state:
        assert torch.equal(after[key], before[key]), key
    assert not torch.equal(after["head.weight"], before["head.weight"])
    assert not torch.equal(after["pool.project.weight"], before["pool.project.weight"])


def test_gradual_unfreeze_thaws_one_layer_per_epoch_from_the_top(pretrained, vocab):
    trainable: list[list[str]] = []
    snapshots = []

    def record(epoch) -> None:
        groups = layer_groups(model_ref[0])
        trainable.append([n for n, ps in groups if all(p.requires_grad for p in ps)])
        snapshots.append({k: v.clone() for k, v in model_ref[0].state_dict().items()})

    model_ref: list[TextClassifier] = []
    torch.manual_seed(0)
    model = load_pretrained(TextClassifier(len(vocab), **HPARAMS), pretrained.encoder_state)
    model_ref.append(model)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    fit(
        model,
        toy_reviews(200, 4, vocab),
        toy_reviews(60, 5, vocab),
        SPEC,
        Hyperparameters(learning_rate=1e-2, batch_size=32),
        TrainParams(max_epochs=5, patience=5, threads=1),
        seed=0,
        on_epoch=record,
        fine_tuning=make_fine_tuning("gradual_unfreeze"),
    )
    assert trainable == [
        ["head"],
        ["head", "convs.1"],
        ["head", "convs.1", "convs.0"],
        ["head", "convs.1", "convs.0", "embed"],
        ["head", "convs.1", "convs.0", "embed"],
    ]
    # Frozen means unchanged: after epoch 1 only the top moved, after epoch 2 conv 1 too.
    assert torch.equal(snapshots[0]["convs.1.weight"], initial["convs.1.weight"])
    assert not torch.equal(snapshots[0]["head.weight"], initial["head.weight"])
    assert not torch.equal(snapshots[1]["convs.1.weight"], snapshots[0]["convs.1.weight"])
    assert torch.equal(snapshots[1]["convs.0.weight"], initial["convs.0.weight"])
    assert torch.equal(snapshots[2]["embed.weight"], initial["embed.weight"])
    assert not torch.equal(snapshots[3]["embed.weight"], initial["embed.weight"])


def test_discriminative_lr_lowers_the_rate_layer_by_layer_going_down(pretrained, vocab):
    model = TextClassifier(len(vocab), **HPARAMS)
    groups = DiscriminativeLR(decay=2.6).param_groups(model, 1e-2)
    assert [g["name"] for g in groups] == ["head", "convs.1", "convs.0", "embed"]
    assert [g["lr"] for g in groups] == pytest.approx([1e-2 / 2.6**d for d in range(4)])
    n_params = sum(len(g["params"]) for g in groups)
    assert n_params == len(list(model.parameters()))  # every parameter, once
    before, result = _fine_tune(pretrained, vocab, "discriminative_lr", epochs=1)
    after = result.model.state_dict()
    assert all(not torch.equal(after[k], before[k]) for k in pretrained.encoder_state)


def test_an_ngram_bag_is_fine_tuned_with_the_head_never_frozen(pretrained, vocab):
    model = load_pretrained(
        TextClassifier(len(vocab), **HPARAMS, ngram_buckets=64), pretrained.encoder_state
    )
    groups = dict(layer_groups(model))
    assert any(p is model.ngrams.weights.weight for p in groups["head"])
    make_fine_tuning("freeze").before_epoch(model, 1)
    assert model.ngrams.weights.weight.requires_grad
    assert not model.embed.weight.requires_grad


def test_unknown_mode_is_refused_naming_the_modes():
    with pytest.raises(ValueError, match="gradual_unfreeze"):
        make_fine_tuning("ulmfit")
