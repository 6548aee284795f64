"""Pretrain: self-supervised masked-syllable pretraining of the text encoder, and fine-tuning.

Labels are scarce, review text is not. The classifier's encoder (syllable embeddings and
convolutions, `TextClassifier.encode`) is first trained on unlabeled texts to predict
hidden syllables, BERT's masked-LM task: about 15% of the real syllables are picked; of
those 80% become `<mask>`, 10% a random syllable and 10% stay, and the model must name the
original at each picked position. A convolution sees both sides of a position, so without
masking the answer would be in its input. The pretrained encoder is then copied into a
fresh classifier (`load_pretrained`) and fine-tuned on the labeled texts with one of
ULMFiT's strategies (`make_fine_tuning`), which `train.fit` takes as `fine_tuning`.

The encoder is saved with its hyperparameters and its vocabulary (`save_encoder`): ids mean
nothing without the vocabulary, so a fine-tune checks it reads texts with the very same one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from loopline.offline.split import grouped_split, hash_split
from loopline.offline.train import batches, seed_everything
from loopline.offline.transfer import (  # noqa: F401 - re-exported: fine-tuning a pretrained encoder
    TRANSFER_MODES,
    DiscriminativeLR,
    Freeze,
    GradualUnfreeze,
    TrainAll,
    TransferMode,
    layer_groups,
    make_strategy,
)
from loopline.tasks.text.model import TextClassifier
from loopline.tasks.text.tokens import MASK, SPECIALS, Vocabulary

IGNORE = -100  # the label of a position that is not predicted (cross_entropy's ignore_index)
N_SPECIAL = len(SPECIALS)  # <pad>, <unk>, <mask>: never picked, never predicted
ENCODER_KEYS = ("embed_size", "hidden_size", "kernel_size", "layers", "dropout")
ENCODER_PREFIXES = ("embed.", "convs.")  # the classifier's parameters that are pretrained
FORMAT = 1  # the saved encoder file's layout

FineTuningMode = TransferMode
FINE_TUNING_MODES = TRANSFER_MODES


# --- masking -------------------------------------------------------------------------------


def mask_tokens(
    ids: torch.Tensor,
    mask_id: int,
    vocab_size: int,
    rate: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption of a batch of ids: (corrupted ids, labels).

    Each real syllable (id >= 3: never padding, `<unk>` or `<mask>`) is picked with
    probability `rate`; a picked one becomes `mask_id` (80%), a random syllable (10%) or
    stays (10%). Labels hold the original id at picked positions and -100 elsewhere. The
    random and unchanged cases keep the model from learning that only `<mask>` needs an
    answer (at fine-tuning there is none). Draws come from `generator`, on its device."""
    if not 0.0 < rate < 1.0:
        raise ValueError(f"mask rate must be in (0, 1), got {rate}")
    if vocab_size <= N_SPECIAL:
        raise ValueError(f"a vocabulary of {vocab_size} ids has no syllable to predict")
    device = generator.device if generator is not None else ids.device
    shape = ids.shape
    picked = (torch.rand(shape, generator=generator, device=device) < rate).to(ids.device)
    picked &= ids >= N_SPECIAL
    action = torch.rand(shape, generator=generator, device=device).to(ids.device)
    random_ids = torch.randint(
        N_SPECIAL, vocab_size, shape, generator=generator, device=device, dtype=ids.dtype
    ).to(ids.device)
    corrupted = ids.clone()
    corrupted[picked & (action < 0.8)] = mask_id
    swap = picked & (action >= 0.8) & (action < 0.9)
    corrupted[swap] = random_ids[swap]
    labels = torch.where(picked, ids, torch.full_like(ids, IGNORE))
    return corrupted, labels


# --- the model ----------------------------------------------------------------------------


class MaskedSyllableModel(nn.Module):
    """A classifier's encoder with a masked-LM head: ids → a syllable guess per position.

    The head is BERT's: a projection of each state to the embedding size (GELU, LayerNorm),
    then, with `tie_weights`, a product with the embedding matrix itself, so a syllable's
    input and output vectors are one (fewer parameters, and the embedding learns from both
    ends). Special ids are never scored: their rows get no gradient from the head, so the
    padding embedding stays exactly zero, as the classifier's masking assumes."""

    def __init__(self, classifier: TextClassifier, tie_weights: bool = True) -> None:
        super().__init__()
        # The whole classifier is held so that `encode` is the classifier's own code; its
        # pooling and head take no part here, get no gradient, and AdamW skips them.
        self.classifier = classifier
        vocab_size, embed_size = classifier.embed.weight.shape
        hidden_size = classifier.convs[-1].out_channels if len(classifier.convs) else embed_size
        self.transform = nn.Sequential(
            nn.Linear(hidden_size, embed_size), nn.GELU(), nn.LayerNorm(embed_size)
        )
        self.tie_weights = tie_weights
        self.decoder = None if tie_weights else nn.Linear(embed_size, vocab_size - N_SPECIAL)
        self.bias = nn.Parameter(torch.zeros(vocab_size - N_SPECIAL)) if tie_weights else None

    @property
    def embed(self) -> nn.Embedding:
        return self.classifier.embed

    @property
    def vocab_size(self) -> int:
        return int(self.embed.num_embeddings)

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        """Per-token states (batch, tokens, hidden): `TextClassifier.encode`."""
        return self.classifier.encode(ids)

    def syllable_logits(self, states: torch.Tensor) -> torch.Tensor:
        """Scores over the syllables (ids >= 3, shifted down by 3) for states (..., hidden)."""
        hidden = self.transform(states)
        if self.decoder is not None:
            return self.decoder(hidden)
        # Scaled by 1/sqrt(embed size): the classifier's embeddings start N(0, 1), so the
        # plain product with unit-variance states would start with logits of std ~8 and a
        # loss far above chance, which the first steps would spend undoing.
        scale = self.embed.embedding_dim**-0.5
        return (hidden @ self.embed.weight[N_SPECIAL:].T) * scale + self.bias

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits (batch, tokens, vocab_size) at every position; special ids score -inf-ish."""
        scores = self.syllable_logits(self.encode(ids))
        specials = scores.new_full((*scores.shape[:-1], N_SPECIAL), torch.finfo(scores.dtype).min)
        return torch.cat([specials, scores], dim=-1)

    def masked_loss(
        self, ids: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(summed cross-entropy, correct guesses, picked positions) over the picked
        positions only: scoring the whole vocabulary at every position would cost ~7x more
        for the 85% of positions that have no label."""
        picked = labels != IGNORE
        states = self.encode(ids)[picked]
        targets = labels[picked] - N_SPECIAL
        logits = self.syllable_logits(states)
        loss = nn.functional.cross_entropy(logits, targets, reduction="sum")
        correct = (logits.argmax(-1) == targets).sum()
        return loss, correct, picked.sum()

    def encoder_state(self) -> dict[str, torch.Tensor]:
        """The pretrained part, keyed as in a `TextClassifier`'s state dict, on the CPU."""
        return {
            key: value.detach().cpu().clone()
            for key, value in self.classifier.state_dict().items()
            if key.startswith(ENCODER_PREFIXES)
        }


# --- pretraining --------------------------------------------------------------------------


@dataclass
class PretrainEpoch:
    epoch: int
    train_loss: float  # mean cross-entropy per picked syllable
    train_accuracy: float  # share of picked syllables guessed exactly
    val_loss: float  # the same on the held-out texts, with a fixed masking
    val_accuracy: float
    learning_rate: float  # at the epoch's last step


@dataclass
class PretrainResult:
    encoder_state: dict[str, torch.Tensor]  # `embed.*`, `convs.*` of a TextClassifier
    hparams: dict[str, Any]  # the encoder's shape, and how it was pretrained
    history: list[PretrainEpoch]
    best_epoch: int  # whose weights `encoder_state` holds (lowest validation loss)
    vocab_size: int
    n_train: int  # texts trained on
    n_val: int  # texts held out for the validation loss


def encoder_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """The hyperparameters that fix the encoder's shape, checked and typed."""
    missing = [k for k in ENCODER_KEYS if k not in hparams]
    if missing:
        raise ValueError(f"encoder hyperparameters missing: {missing} (need {ENCODER_KEYS})")
    return {
        "embed_size": int(hparams["embed_size"]),
        "hidden_size": int(hparams["hidden_size"]),
        "kernel_size": int(hparams["kernel_size"]),
        "layers": int(hparams["layers"]),
        "dropout": float(hparams["dropout"]),
    }


def build_classifier(
    vocab_size: int, hparams: dict[str, Any], n_classes: int = 2
) -> TextClassifier:
    """A fresh classifier with the encoder shape of `hparams` (as the text task builds
    it, n-gram bag included when `ngram_buckets` is given: that part is never pretrained)."""
    return TextClassifier(
        vocab_size,
        n_classes,
        **encoder_hparams(hparams),
        ngram_buckets=int(hparams.get("ngram_buckets", 0)),
    )


def holdout(n: int, val_share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) row positions: a seeded random `val_share` of n rows (at least one)."""
    if n < 2:
        raise ValueError(f"pretraining needs at least 2 texts (one held out), got {n}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(max(1, round(n * val_share)), n - 1)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def learning_rate_at(step: int, total: int, peak: float, warmup_share: float = 0.05) -> float:
    """Linear warm-up to `peak` over the first steps, then cosine decay to a tenth of it:
    a masked-LM's early gradients are large and noisy (every guess is wrong), and full-size
    Adam steps on them would knock the freshly initialised layers about."""
    warmup = max(1, int(total * warmup_share))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def pretrain_epoch(
    model: MaskedSyllableModel,
    ids: torch.Tensor,
    lengths: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    generator: torch.Generator,
    mask_rate: float,
    schedule: Callable[[], float],
    grad_clip: float,
    device: torch.device,
) -> tuple[float, float]:
    """One pass over `ids`: (mean loss, accuracy) per picked syllable."""
    model.train()
    mask_id = SPECIALS.index(MASK)
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss, correct, picked
    # Texts of similar length batched together (train's bucket iterator): reviews run from
    # 2 to 128 syllables, and a random batch would be mostly padding.
    for index in batches(len(ids), batch_size, generator, lengths):
        rows = TextClassifier.trim(ids[index])
        # Masked on the CPU with the CPU generator: the same seed picks the same positions
        # on any device, and the batch then crosses to the device once.
        corrupted, labels = mask_tokens(rows, mask_id, model.vocab_size, mask_rate, generator)
        for group in optimizer.param_groups:
            group["lr"] = schedule()
        if not bool((labels != IGNORE).any()):  # a batch of short texts may pick nothing
            continue
        corrupted, labels = corrupted.to(device), labels.to(device)
        optimizer.zero_grad(set_to_none=True)
        loss, correct, picked = model.masked_loss(corrupted, labels)
        (loss / picked).backward()
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        # Summed on the device and read once an epoch, not with `.item()` per batch: no
        # extra CPU-GPU sync (the emptiness check above reads CPU tensors; selecting the
        # picked positions in `masked_loss` is the one sync per step on a GPU).
        totals += torch.stack([loss.detach().double(), correct.double(), picked.double()])
    loss_sum, correct_sum, picked_sum = totals.tolist()
    return _ratio(loss_sum, picked_sum), _ratio(correct_sum, picked_sum)


@torch.no_grad()
def evaluate_masked_lm(
    model: MaskedSyllableModel,
    ids: torch.Tensor,
    mask_rate: float,
    seed: int,
    device: torch.device,
    batch_size: int = 512,
) -> tuple[float, float]:
    """(mean loss, accuracy) per picked syllable of held-out texts. The masking is drawn
    from `seed` afresh on every call, so epochs are compared on the very same positions."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    mask_id = SPECIALS.index(MASK)
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    for index in batches(len(ids), batch_size, None):
        rows = TextClassifier.trim(ids[index])
        corrupted, labels = mask_tokens(rows, mask_id, model.vocab_size, mask_rate, generator)
        loss, correct, picked = model.masked_loss(corrupted.to(device), labels.to(device))
        totals += torch.stack([loss.double(), correct.double(), picked.double()])
    loss_sum, correct_sum, picked_sum = totals.tolist()
    return _ratio(loss_sum, picked_sum), _ratio(correct_sum, picked_sum)


def _ratio(total: float, count: float) -> float:
    return total / count if count else float("nan")


def pretrain_encoder(
    texts: list[str],
    vocab: Vocabulary,
    hparams: dict[str, Any],
    max_length: int,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    on_epoch: Callable[[PretrainEpoch], None] | None = None,
    device: str = "cpu",
    mask_rate: float = 0.15,
    val_share: float = 0.05,
    weight_decay: float = 0.01,
    grad_clip: float = 1.0,
    tie_weights: bool = True,
) -> PretrainResult:
    """Pretrain a classifier's encoder on unlabeled `texts` by masked-syllable prediction.

    A seeded share `val_share` of the texts is held out for the validation loss; the
    returned encoder is the epoch's with the lowest one. `hparams` gives the encoder's shape
    (embed_size, hidden_size, kernel_size, layers, dropout), the one the classifier that
    will be fine-tuned must have. Same seed, texts and device → the same weights. `on_epoch`
    may raise to stop. Runs on `device` ("cpu", "cuda", "cuda:1", ...)."""
    if epochs < 1 or batch_size < 1 or learning_rate <= 0:
        raise ValueError(
            f"need epochs >= 1, batch_size >= 1, learning_rate > 0; got {epochs}, "
            f"{batch_size}, {learning_rate}"
        )
    shape = encoder_hparams(hparams)
    target = torch.device(device)
    seed_everything(seed)  # the initial weights are drawn next
    model = MaskedSyllableModel(build_classifier(len(vocab), shape), tie_weights).to(target)
    ids_np, lengths_np = vocab.encode(texts, max_length)
    ids, lengths = torch.from_numpy(ids_np), torch.from_numpy(lengths_np)
    train_rows, val_rows = holdout(len(texts), val_share, seed)
    train_ids, train_lengths = ids[train_rows], lengths[train_rows]
    val_ids = ids[val_rows]
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(train_rows) / batch_size)
    total_steps = steps_per_epoch * epochs
    step = 0

    def schedule() -> float:
        nonlocal step
        rate = learning_rate_at(step, total_steps, learning_rate)
        step += 1
        return rate

    history: list[PretrainEpoch] = []
    best_loss, best_epoch, best_state = float("inf"), 0, None
    for epoch in range(1, epochs + 1):
        train_loss, train_accuracy = pretrain_epoch(
            model,
            train_ids,
            train_lengths,
            optimizer,
            batch_size,
            generator,
            mask_rate,
            schedule,
            grad_clip,
            target,
        )
        val_loss, val_accuracy = evaluate_masked_lm(model, val_ids, mask_rate, seed + 1, target)
        record = PretrainEpoch(
            epoch,
            train_loss,
            train_accuracy,
            val_loss,
            val_accuracy,
            optimizer.param_groups[0]["lr"],
        )
        history.append(record)
        # A held-out slice too short to pick any syllable gives NaN: keep the last epoch.
        if best_state is None or val_loss < best_loss or math.isnan(best_loss):
            best_loss, best_epoch = val_loss, epoch
            best_state = model.encoder_state()
        if on_epoch is not None:
            on_epoch(record)
    assert best_state is not None  # epochs >= 1
    return PretrainResult(
        encoder_state=best_state,
        hparams={
            **shape,
            "max_length": int(max_length),
            "mask_rate": float(mask_rate),
            "epochs": int(epochs),
            "batch_size": int(batch_size),
            "learning_rate": float(learning_rate),
            "weight_decay": float(weight_decay),
            "tie_weights": bool(tie_weights),
            "seed": int(seed),
        },
        history=history,
        best_epoch=best_epoch,
        vocab_size=len(vocab),
        n_train=len(train_rows),
        n_val=len(val_rows),
    )


# --- from a pretrained encoder to a classifier --------------------------------------------


def load_pretrained(
    classifier: TextClassifier, encoder_state: dict[str, torch.Tensor]
) -> TextClassifier:
    """Copy a pretrained encoder (`embed.*`, `convs.*`) into `classifier`, in place.

    The classifier must have the encoder's shape (same embedding and hidden sizes, kernel
    and layers) and a vocabulary of the same size; its pooling and head are left as they
    are (freshly initialised, to be fine-tuned)."""
    own = classifier.state_dict()
    vocab_key = "embed.weight"
    if vocab_key not in encoder_state:
        raise ValueError(f"not an encoder state: no {vocab_key!r} among {sorted(encoder_state)}")
    theirs, ours = encoder_state[vocab_key].shape[0], own[vocab_key].shape[0]
    if theirs != ours:
        raise ValueError(
            f"vocabulary size mismatch: the pretrained encoder has {theirs} ids, the "
            f"classifier {ours}; fine-tune with the encoder's own vocabulary"
        )
    unknown = [k for k in encoder_state if not k.startswith(ENCODER_PREFIXES) or k not in own]
    missing = [k for k in own if k.startswith(ENCODER_PREFIXES) and k not in encoder_state]
    if unknown or missing:
        raise ValueError(
            f"encoder and classifier differ in layers: the encoder's {unknown} are not in "
            f"the classifier, the classifier's {missing} are not in the encoder"
        )
    for key, value in encoder_state.items():
        if value.shape != own[key].shape:
            raise ValueError(
                f"encoder and classifier differ in shape at {key}: "
                f"{tuple(value.shape)} vs {tuple(own[key].shape)}"
            )
    with torch.no_grad():
        for key, value in encoder_state.items():
            own[key].copy_(value)  # state_dict tensors share storage with the parameters
    return classifier


# The fine-tuning strategies are transfer learning's, shared by every task (`train.transfer`);
# their names stay importable from here.
make_fine_tuning = make_strategy


# --- saving -------------------------------------------------------------------------------


def save_encoder(result: PretrainResult, vocab: Vocabulary, path: Path) -> Path:
    """Weights, hyperparameters, history and vocabulary in one torch file (the artifact a
    pipeline registers as a model of its own)."""
    if len(vocab) != result.vocab_size:
        raise ValueError(
            f"vocabulary size mismatch: the encoder was pretrained on {result.vocab_size} ids, "
            f"the vocabulary given has {len(vocab)}"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "format": FORMAT,
            "encoder_state": result.encoder_state,
            "hparams": result.hparams,
            "history": [asdict(e) for e in result.history],
            "best_epoch": result.best_epoch,
            "vocab_size": result.vocab_size,
            "n_train": result.n_train,
            "n_val": result.n_val,
            "vocabulary": vocab.to_json(),
        },
        path,
    )
    return path


def load_encoder(path: Path) -> tuple[PretrainResult, Vocabulary]:
    """A saved encoder and the vocabulary it was pretrained with."""
    saved = torch.load(path, weights_only=True, map_location="cpu")
    if saved.get("format") != FORMAT:
        raise ValueError(f"{path}: not a pretrained encoder of format {FORMAT}")
    vocab = Vocabulary.from_json(saved["vocabulary"])
    result = PretrainResult(
        encoder_state=saved["encoder_state"],
        hparams=saved["hparams"],
        history=[PretrainEpoch(**e) for e in saved["history"]],
        best_epoch=int(saved["best_epoch"]),
        vocab_size=int(saved["vocab_size"]),
        n_train=int(saved["n_train"]),
        n_val=int(saved["n_val"]),
    )
    return result, vocab


def check_vocabulary(encoder_vocab: Vocabulary, vocab: Vocabulary) -> None:
    """Raise unless `vocab` is the encoder's own (same tokens, same ids, same repeat cut):
    a different vocabulary of the same size would load silently and mean nonsense."""
    if encoder_vocab.max_repeat != vocab.max_repeat:
        raise ValueError(
            f"vocabulary mismatch: max_repeat {encoder_vocab.max_repeat} (encoder) vs "
            f"{vocab.max_repeat}"
        )
    if encoder_vocab.tokens != vocab.tokens:
        if len(encoder_vocab) != len(vocab):
            raise ValueError(
                f"vocabulary mismatch: the encoder's has {len(encoder_vocab)} tokens, "
                f"this one {len(vocab)}"
            )
        first = next(
            i
            for i, (a, b) in enumerate(zip(encoder_vocab.tokens, vocab.tokens, strict=True))
            if a != b
        )
        raise ValueError(
            f"vocabulary mismatch at id {first}: {encoder_vocab.tokens[first]!r} (encoder) vs "
            f"{vocab.tokens[first]!r}"
        )


# --- the task's unlabeled text ---------------------------------------------------------------


def pretraining_texts(rows, params) -> list[str]:
    """The texts pretraining may read: every row but the test split's.

    Labels are not used, so unlabeled rows count too; test texts are left out so that the
    encoder never saw the texts the fine-tuned model is scored on (with the same data and
    seed, the split here equals the pipeline's: the running text task's own columns and
    split kind).
    """

    task = params.plugin
    text, target, key = task.text_column, task.target_column, task.key_columns[0]
    labeled = rows[rows[target].notna()]
    test_ids = set()
    if len(labeled):
        salt = params.split.salt
        if task.split_kind == "grouped":
            split = grouped_split(labeled, params.split, task.group_column, salt)
        else:
            split = hash_split(labeled, params.split, [key], salt)
        test_ids = set(split.loc[split["split"] == "test", key].astype(str))
    keep = ~rows[key].astype(str).isin(test_ids)
    return rows.loc[keep, text].astype(str).tolist()


def pretrain_for_task(
    rows, params, on_epoch: Callable[[PretrainEpoch], None] | None = None, device: str = "cpu"
) -> tuple[PretrainResult, Vocabulary]:
    """Pretrain the text encoder on the snapshot's text with the task's own section's
    settings; the encoder's shape is the search space's first choice of each encoder axis."""
    section = params.task_params
    texts = pretraining_texts(rows, params)
    if not texts:
        raise ValueError("no text to pretrain on: run the pipeline first to snapshot the data")
    vocab = Vocabulary.build(texts, section.min_count, section.max_vocab, section.max_repeat)

    def first(axis: str):
        dimension = params.tune.search_space[axis]
        return dimension.choices[0] if dimension.choices is not None else dimension.low

    hparams = {k: first(k) for k in ENCODER_KEYS}
    result = pretrain_encoder(
        texts,
        vocab,
        hparams,
        section.max_length,
        section.pretrain_epochs,
        section.pretrain_batch_size,
        section.pretrain_learning_rate,
        params.seed,
        on_epoch=on_epoch,
        device=device,
        mask_rate=section.pretrain_mask_rate,
    )
    return result, vocab
