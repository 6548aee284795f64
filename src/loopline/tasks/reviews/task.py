"""Review sentiment: Korean movie reviews → negative (0) / positive (1).

Rows follow the reviews data contract (`id, document, label, date, movie_id, rating`), read
from any TSV/CSV/Parquet file or SQL table (`ingest.source`); there is no built-in source.
A row without a label is not an error: it joins the unlabeled pool that active learning
picks the next batch for people to label from (`loopline label export`).

Texts become syllable tokens (`loopline.tasks.reviews.text`); the vocabulary is fitted on the
training
split only and travels inside the model's feature spec, so the service encodes requests
with the very same vocabulary. Sets are split by movie (`grouped`): reviews of one movie
share names and words, and a movie in both training and test sets would overstate accuracy.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from loopline.config import Dimension, Params, Positive, Section
from loopline.evaluate import evaluate_classifier
from loopline.features import FeatureSpec
from loopline.labeling import Examples
from loopline.split import labeled_set
from loopline.tasks.base import FeatureOptions, Hyperparameters, PretrainResult, Task
from loopline.tasks.reviews.serving import ReviewsServing
from loopline.tasks.reviews.text import Vocabulary, tokenize
from loopline.validate import Rule

LABELS = ("negative", "positive")  # class 0, class 1


def vocabulary(spec: FeatureSpec) -> Vocabulary:
    """The spec's fitted vocabulary (raises when the spec was never fitted)."""
    if spec.options.vocabulary is None:
        raise ValueError("the feature spec has no vocabulary: fit it on a training split first")
    return Vocabulary.from_json(spec.options.vocabulary)


def encode(texts: list[str], spec: FeatureSpec, vocab: Vocabulary | None = None) -> np.ndarray:
    """Token ids (rows padded with 0) of `texts`, as the model reads them."""
    vocab = vocab or vocabulary(spec)
    return vocab.encode(texts, spec.options.max_length)[0]


class ReviewsParams(Section):
    """The review-sentiment task: texts → syllable tokens → positive (1) / negative (0)."""

    max_length: Positive = 128  # syllable tokens read per review (longer: the beginning)
    max_repeat: Positive = 2  # ㅋㅋㅋㅋㅋ → ㅋㅋ
    min_count: Positive = 2  # a syllable seen fewer times in training is <unk>
    max_vocab: Annotated[int, Field(ge=10)] = 6000
    max_text_chars: Positive = 2000  # longer texts are refused by the service, per item
    baseline_c: Annotated[float, Field(gt=0)] = 4.0  # the TF-IDF baseline's inverse penalty
    explain_examples: Annotated[int, Field(ge=0)] = 40  # test reviews in the attention report
    # Fine-tune from an encoder `loopline pretrain` saved (its path; None: from scratch). The
    # encoder fixes the vocabulary and the encoder's shape (embed, hidden, kernel, layers).
    pretrained_encoder: str | None = None
    # How (see `train.transfer`, whose unfreeze_every / lr_decay / freeze it uses).
    fine_tuning: Literal["none", "freeze", "gradual_unfreeze", "discriminative_lr"] = "none"
    # `loopline pretrain`: masked-syllable pretraining on the task's unlabeled text.
    pretrain_epochs: Positive = 4
    pretrain_batch_size: Positive = 64
    pretrain_learning_rate: Annotated[float, Field(gt=0)] = 2e-3
    pretrain_mask_rate: Annotated[float, Field(gt=0, lt=1)] = 0.15


@dataclass(frozen=True)
class ReviewsOptions(FeatureOptions):
    """How texts become tokens, saved with the model: the text column, the token limits,
    the vocabulary fitted on the training split (JSON), and the pretrained encoder."""

    text_column: str
    key_column: str
    max_length: int
    max_repeat: int
    min_count: int
    max_vocab: int
    pretrained_encoder: str | None = None
    fine_tuning: str = "none"
    vocabulary: str | None = None  # fitted on the training split only


@dataclass(frozen=True, kw_only=True)
class ReviewsHyperparameters(Hyperparameters):
    """The text classifier's encoder shape, its n-gram bag and its regularisation."""

    embed_size: int
    hidden_size: int
    layers: int
    kernel_size: int
    dropout: float
    ngram_buckets: int


class ReviewsTask(Task):
    Settings: ClassVar[type[Section]] = ReviewsParams
    Hyperparameters: ClassVar[type[Hyperparameters]] = ReviewsHyperparameters
    Options: ClassVar[type[FeatureOptions]] = ReviewsOptions
    Serving: ClassVar[type] = ReviewsServing
    architecture: ClassVar[tuple[str, ...]] = (
        "embed_size",
        "hidden_size",
        "layers",
        "kernel_size",
        "ngram_buckets",
    )
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
    time_column: ClassVar[str | None] = None
    target_column: ClassVar[str] = "label"
    text_column: ClassVar[str] = "document"
    class_names: ClassVar[tuple[str, ...]] = LABELS
    split_kind: ClassVar[Literal["chronological", "stratified", "grouped"]] = "grouped"
    transferred_features: ClassVar[tuple[str, ...]] = ("vocabulary",)

    def default_space(self) -> dict[str, Dimension]:
        return {
            "embed_size": Dimension(choices=[64]),
            "hidden_size": Dimension(choices=[128]),
            "layers": Dimension(choices=[2]),
            "kernel_size": Dimension(choices=[3, 5]),
            "dropout": Dimension(low=0.1, high=0.3),
            "learning_rate": Dimension(low=1e-3, high=4e-3, log=True),
            "batch_size": Dimension(choices=[64]),
            "ngram_buckets": Dimension(choices=[1048576]),
        }

    def schema_for(self, params: Params) -> dict[str, str]:
        return self.schema  # fixed columns

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

    def new_feature_spec(self, params: Params) -> FeatureSpec:
        section = params.reviews
        return FeatureSpec(
            task=self.name,
            feature_columns=[],
            target_column=self.target_column,
            horizon=1,
            freq="",
            group_column="movie_id",
            time_column="",
            labels=list(LABELS),
            options=ReviewsOptions(
                text_column=self.text_column,
                key_column="id",
                max_length=section.max_length,
                max_repeat=section.max_repeat,
                min_count=section.min_count,
                max_vocab=section.max_vocab,
                pretrained_encoder=section.pretrained_encoder,
                fine_tuning=section.fine_tuning,
            ),
        )

    def add_features(self, frame: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
        # Tokens are computed from the text when examples are built (the vocabulary is only
        # known after the split); nothing is added per row.
        return frame

    def add_labels(
        self, frame: pd.DataFrame, spec: FeatureSpec, human: pd.DataFrame | None = None
    ) -> pd.DataFrame:
        """The data's own labels, with people's labels (`loopline label import`) filled
        in; labeled texts from the prediction log join as rows of their own."""
        if human is None or human.empty:
            return frame
        from loopline.human_labels import merge_human_labels

        return merge_human_labels(
            frame, human, "id", spec.target_column, spec.options.text_column, "movie_id"
        )

    def unlabeled_pool(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Reviews without a label (id, text, origin) that people may label."""
        pool = rows[rows[self.target_column].isna()]
        return pd.DataFrame(
            {
                "id": pool["id"].astype(str).to_numpy(),
                "text": pool[self.text_column].astype(str).to_numpy(),
                "origin": "data",
            }
        )

    def pool_probabilities(self, session, spec: FeatureSpec, pool: pd.DataFrame) -> np.ndarray:
        """Class probabilities of an ONNX model (with its own vocabulary) for pool texts."""
        from loopline.export import run_onnx

        texts = pool["text"].astype(str).tolist()
        parts = [
            run_onnx(session, encode(texts[i : i + 512], spec)) for i in range(0, len(texts), 512)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, len(LABELS)))

    def fit_features(self, spec: FeatureSpec, train_rows: pd.DataFrame) -> FeatureSpec:
        """The syllable vocabulary of the training split only (or, fine-tuning, the one the
        pretrained encoder learned its embeddings for)."""
        options = spec.options
        if options.pretrained_encoder:
            from loopline.tasks.reviews.pretrain import load_encoder

            vocab = load_encoder(Path(options.pretrained_encoder))[1]
            return replace(spec, options=replace(options, vocabulary=vocab.to_json()))
        vocab = Vocabulary.build(
            train_rows[options.text_column].astype(str),
            min_count=options.min_count,
            max_size=options.max_vocab,
            max_repeat=options.max_repeat,
        )
        return replace(spec, options=replace(options, vocabulary=vocab.to_json()))

    def configure(self, spec: FeatureSpec, hparams: ReviewsHyperparameters) -> FeatureSpec:
        return spec

    def examples(self, frame: pd.DataFrame, spec: FeatureSpec, target_set: str) -> Examples:
        rows = labeled_set(frame, target_set, spec.target_column)
        texts = rows[spec.options.text_column].astype(str).tolist()
        x = encode(texts, spec) if texts else np.zeros((0, 1), np.int64)
        y = rows[spec.target_column].to_numpy(dtype=np.int64)
        keys = pd.DataFrame({"id": rows["id"].astype(str).to_numpy()})
        return Examples(x, y, keys)

    def build_model(self, hparams: ReviewsHyperparameters, spec: FeatureSpec):
        from loopline.tasks.reviews.model import TextClassifier

        encoder = None
        if spec.options.pretrained_encoder:
            from loopline.tasks.reviews.pretrain import ENCODER_KEYS, load_encoder

            encoder = load_encoder(Path(spec.options.pretrained_encoder))[0]
            # The encoder fixes its own shape; the search tunes the rest.
            shape = {k: encoder.hparams[k] for k in ENCODER_KEYS if k != "dropout"}
            hparams = replace(hparams, **shape)
        model = TextClassifier(
            vocab_size=len(vocabulary(spec)),
            n_classes=len(spec.labels),
            embed_size=hparams.embed_size,
            hidden_size=hparams.hidden_size,
            kernel_size=hparams.kernel_size,
            layers=hparams.layers,
            dropout=hparams.dropout,
            ngram_buckets=hparams.ngram_buckets,
        )
        if encoder is not None:
            from loopline.tasks.reviews.pretrain import load_pretrained

            load_pretrained(model, encoder.encoder_state)
        return model

    def augmentation(self, spec: FeatureSpec):
        return None  # no augmentation

    def fine_tuning(self, spec: FeatureSpec, transfer):
        """How a pretrained encoder is fine-tuned: `reviews.fine_tuning` names the strategy,
        `train.transfer` sets its knobs (the same strategies as `train.init_from`'s); None
        from scratch."""
        if not spec.options.pretrained_encoder:
            return None
        from loopline.transfer import make_strategy

        # The mode is the task's (it belongs to the encoder the spec names); the knobs are
        # read at training time, so changing one retrains without refitting features.
        return make_strategy(
            spec.options.fine_tuning,
            decay=transfer.lr_decay,
            unfreeze_every=transfer.unfreeze_every,
            freeze=transfer.freeze,
        )

    def pretrain(
        self, rows: pd.DataFrame, params: Params, folder: Path, on_epoch, device: str = "cpu"
    ) -> PretrainResult:
        """Masked-syllable pretraining of the encoder on the snapshot's text; the saved
        encoder is what `reviews.pretrained_encoder` fine-tunes from."""
        from loopline.tasks.reviews.pretrain import pretrain_for_task, save_encoder

        section = params.reviews

        def each_epoch(epoch) -> None:
            on_epoch(
                epoch.epoch,
                section.pretrain_epochs,
                {"mlm_val_loss": epoch.val_loss, "mlm_val_accuracy": epoch.val_accuracy},
            )

        result, vocab = pretrain_for_task(rows, params, on_epoch=each_epoch, device=device)
        path = save_encoder(result, vocab, folder / "encoder.pt")
        logged = ("max_length", "min_count", "max_vocab", "pretrain_epochs", "pretrain_mask_rate")
        return PretrainResult(
            path=path,
            metrics={"texts": float(result.n_train)},
            override="reviews.pretrained_encoder={path}",
            params={k: getattr(section, k) for k in logged},
        )

    def evaluate(self, frame, spec: FeatureSpec, model, params: Params, champion=None):
        """The model, the TF-IDF baseline (trained here on the same training split) and the
        champion (with its own vocabulary) on the same movie-disjoint test reviews."""
        from loopline.export import run_onnx
        from loopline.tasks.reviews.baseline import train_text_baseline
        from loopline.train import predict

        text = spec.options.text_column
        test = labeled_set(frame, "test", spec.target_column)
        train = labeled_set(frame, "train", spec.target_column)
        if test.empty:
            raise ValueError("the test split holds no labeled review: nothing to evaluate on")
        texts = test[text].astype(str).tolist()
        baseline = train_text_baseline(
            train[text].astype(str).tolist(),
            train[spec.target_column].to_numpy(dtype=np.int64),
            c=params.reviews.baseline_c,
            seed=params.seed,
        )
        probabilities = {
            "model": predict(model, encode(texts, spec)),
            "tfidf_baseline": baseline.probabilities(texts),
        }
        return evaluate_classifier(
            test[spec.target_column].to_numpy(dtype=np.int64),
            probabilities,
            spec,
            champion,
            # The champion reads the texts with its own vocabulary.
            lambda session, own: run_onnx(session, encode(texts, own)),
            params,
        )

    def evaluation_report(
        self, evaluation, frame, spec: FeatureSpec, model, params: Params, folder: Path
    ) -> list[Path]:
        """An HTML page of test reviews, each syllable shaded by the model's attention."""
        test = labeled_set(frame, "test", spec.target_column)
        n = min(params.reviews.explain_examples, len(test))
        if n == 0:
            return []
        picked = test.sample(n=n, random_state=params.seed)
        texts = picked[spec.options.text_column].astype(str).tolist()
        explained = explain_texts(model, spec, texts)
        truth = picked[spec.target_column].to_numpy(dtype=np.int64)
        path = folder / "attention.html"
        path.write_text(attention_html(explained, truth, spec), encoding="utf-8")
        return [path]


def explain_texts(model, spec: FeatureSpec, texts: list[str]) -> list[dict[str, Any]]:
    """Prediction, probabilities and each token's attention weight, per text (PyTorch)."""
    import torch

    from loopline.tasks.reviews.model import ClassifierPredictor

    vocab = vocabulary(spec)
    ids = encode(texts, spec, vocab)
    with torch.no_grad():
        probabilities, weights = ClassifierPredictor(model.eval())(torch.from_numpy(ids))
    return explanations(texts, spec, probabilities.numpy(), weights.numpy(), vocab)


def explanations(
    texts: list[str],
    spec: FeatureSpec,
    probabilities: np.ndarray,
    weights: np.ndarray | None = None,
    vocab: Vocabulary | None = None,
) -> list[dict[str, Any]]:
    """Model outputs as people read them: label, probabilities and, with `weights`, the
    (token, weight) pairs.

    Tokens are the text's own tokens (an unknown syllable shows as itself, not `<unk>`),
    cut at the same `max_length` the model read. Without `weights` the texts are not
    tokenized again (a plain prediction needs no tokens).
    """
    labels = spec.labels
    max_repeat = (vocab or vocabulary(spec)).max_repeat if weights is not None else 0
    out = []
    for i, text in enumerate(texts):
        p = probabilities[i]
        item: dict[str, Any] = {
            "label": labels[int(p.argmax())],
            "probabilities": {name: float(v) for name, v in zip(labels, p, strict=True)},
        }
        if weights is not None:
            tokens = tokenize(text, max_repeat)[: spec.options.max_length]
            item["tokens"] = [
                {"token": t, "weight": float(w)}
                for t, w in zip(tokens, weights[i][: len(tokens)], strict=False)
            ]
        out.append(item)
    return out


def attention_html(explained: list[dict[str, Any]], truth: np.ndarray, spec: FeatureSpec) -> str:
    """A self-contained page: one review per row, syllables shaded by attention weight."""
    labels = spec.labels
    rows = []
    for item, label in zip(explained, truth, strict=True):
        top = max((t["weight"] for t in item["tokens"]), default=1.0) or 1.0
        cells = "".join(
            '<span title="{w:.3f}" style="background: rgba(255,140,0,{a:.2f})">{t}</span>'.format(
                w=t["weight"],
                a=t["weight"] / top,
                t=" " if t["token"] == "▁" else html.escape(t["token"]),
            )
            for t in item["tokens"]
        )
        right = item["label"] == labels[int(label)]
        rows.append(
            f"<tr><td>{html.escape(labels[int(label)])}</td>"
            f"<td class={'ok' if right else 'miss'}>{html.escape(item['label'])} "
            f"({max(item['probabilities'].values()):.2f})</td><td>{cells}</td></tr>"
        )
    return (
        '<!doctype html><html lang="ko"><meta charset="utf-8"><title>Attention: test reviews'
        "</title><style>body{font-family:sans-serif}td{padding:4px 8px;vertical-align:top}"
        ".ok{color:#060}.miss{color:#b00;font-weight:bold}</style>"
        "<h1>Which syllables the model attended to</h1><p>Each syllable is shaded by its "
        "attention weight (darker: weighed more); hover for the value.</p>"
        "<table><tr><th>true</th><th>predicted</th><th>review</th></tr>"
        + "".join(rows)
        + "</table></html>"
    )


def text_problem(value: Any, max_chars: int) -> str | None:
    """Why `value` cannot be classified (None when it can): the service answers each bad
    item with this, and classifies the others."""
    if not isinstance(value, str):
        return f"text must be a string, got {type(value).__name__}"
    if not value.strip():
        return "text is empty"
    if len(value) > max_chars:
        return (
            f"text is {len(value):,} characters, longer than the limit of {max_chars:,} "
            "(reviews.max_text_chars)"
        )
    return None


def classify(session, spec: FeatureSpec, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(class probabilities, attention per token) of an ONNX classifier for `texts`."""
    from loopline.export import run_onnx_outputs

    probabilities, attention = run_onnx_outputs(session, encode(texts, spec))
    return probabilities, attention
