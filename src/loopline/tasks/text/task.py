"""The text family: any table of texts → one of its labels, configured in `text:`.

Rows hold a key column, a text column, a label column and, optionally, a group column
(`text.key_column`, `text_column`, `label_column`, `group_column`: any names). Labels are
strings or integers, two classes or more: `text.labels: null` takes the sorted distinct
labels of the training split, a list fixes them (rows with another label are quarantined,
the reason naming the value). A row without a label is not an error: it joins the
unlabeled pool people label from (`loopline label export`).

Texts become tokens (`loopline.tasks.text.tokens`: Hangul syllables, CJK characters, words
of alphabets, emoji); the vocabulary is fitted on the training split only. The columns, the
label set, the token limits and the vocabulary travel inside the model's feature spec
(`TextOptions`, `spec.labels`), so the service reads requests the way the served model
was trained, whatever params say today. With a group column the sets are split by group
(no group in two sets: texts of one author or product share words, and a group in both
training and test sets would overstate accuracy); without, by the hash of each key.

Evaluation: accuracy (and macro F1 beside it with more than two classes) of the model,
a character n-gram TF-IDF + logistic regression baseline and the majority class, on the
same test rows. `loopline.tasks.reviews` is this family configured for Korean movie
reviews.
"""

from __future__ import annotations

import copy
import html
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from loopline.config import Dimension, Params, Positive, Section
from loopline.offline.evaluate import evaluate_classifier
from loopline.offline.features import FeatureSpec
from loopline.offline.human_labels import merge_human_labels
from loopline.offline.labeling import Examples
from loopline.offline.reference import EVENT_TIME
from loopline.offline.split import labeled_set
from loopline.offline.validate import Rule
from loopline.onnx_runtime import run_onnx
from loopline.tasks.base import FeatureOptions, Hyperparameters, LabelSet, PretrainResult, Task
from loopline.tasks.text.answers import encode, explanations, vocabulary
from loopline.tasks.text.baseline import train_text_baseline
from loopline.tasks.text.serving import TextServing
from loopline.tasks.text.tokens import Vocabulary

# Columns the pipeline adds to every row: a data column of that name would be overwritten.
RESERVED_COLUMNS = ("split",)


class TextModelSettings(Section):
    """How texts become tokens, the model's limits and the baseline: shared by every text
    task (`text:`, `reviews:`)."""

    max_length: Positive = 128  # tokens read per text (longer: the beginning)
    max_repeat: Positive = 2  # ㅋㅋㅋㅋㅋ → ㅋㅋ
    min_count: Positive = 2  # a token seen fewer times in training is <unk>
    max_vocab: Annotated[int, Field(ge=10)] = 6000
    max_text_chars: Positive = 2000  # longer texts are refused by the service, per item
    baseline_c: Annotated[float, Field(gt=0)] = 4.0  # the TF-IDF baseline's inverse penalty
    explain_examples: Annotated[int, Field(ge=0)] = 40  # test texts in the attention report
    # Fine-tune from an encoder `loopline pretrain` saved (its path; None: from scratch). The
    # encoder fixes the vocabulary and the encoder's shape (embed, hidden, kernel, layers).
    pretrained_encoder: str | None = None
    # How (see `train.transfer`, whose unfreeze_every / lr_decay / freeze it uses).
    fine_tuning: Literal["none", "freeze", "gradual_unfreeze", "discriminative_lr"] = "none"
    # `loopline pretrain`: masked-token pretraining on the task's unlabeled text.
    pretrain_epochs: Positive = 4
    pretrain_batch_size: Positive = 64
    pretrain_learning_rate: Annotated[float, Field(gt=0)] = 2e-3
    pretrain_mask_rate: Annotated[float, Field(gt=0, lt=1)] = 0.15


class TextSettings(TextModelSettings):
    """The text family's section (`text:`): which columns hold what, and the label set."""

    key_column: str = "id"  # one row, one text: a unique id
    text_column: str = "text"
    label_column: str = "label"
    # Texts of one group (an author, a product, a customer) fall in one set only; None:
    # sets follow the hash of each row's key.
    group_column: str | None = None
    # The classes: None takes the training split's sorted distinct labels; a list fixes
    # them (strings or integers; rows with another label are quarantined).
    labels: LabelSet = None


@dataclass(frozen=True)
class TextOptions(FeatureOptions):
    """How texts become tokens, saved with the model: the columns, the token limits, the
    vocabulary fitted on the training split (JSON), the pretrained encoder, and the longest
    text the service accepts."""

    text_column: str
    key_column: str
    max_length: int
    max_repeat: int
    min_count: int
    max_vocab: int
    pretrained_encoder: str | None = None
    fine_tuning: str = "none"
    vocabulary: str | None = None  # fitted on the training split only
    max_text_chars: int = 2000


@dataclass(frozen=True, kw_only=True)
class TextHyperparameters(Hyperparameters):
    """The text classifier's encoder shape, its n-gram bag and its regularisation."""

    embed_size: int
    hidden_size: int
    layers: int
    kernel_size: int
    dropout: float
    ngram_buckets: int


def label_order(names: list[str]) -> list[str]:
    """Labels sorted as people expect: integers by value (2 before 10), then the rest by
    text."""

    def key(name: str) -> tuple[int, int, str]:
        try:
            return (0, int(name), "")
        except ValueError:
            return (1, 0, name)

    return sorted(names, key=key)


class TextTask(Task):
    """The text family (see the module docstring); `bind` configures it from `text:`."""

    Settings: ClassVar[type[Section]] = TextSettings
    Hyperparameters: ClassVar[type[Hyperparameters]] = TextHyperparameters
    Options: ClassVar[type[FeatureOptions]] = TextOptions
    Serving: ClassVar[type] = TextServing
    architecture: ClassVar[tuple[str, ...]] = (
        "embed_size",
        "hidden_size",
        "layers",
        "kernel_size",
        "ngram_buckets",
    )
    name: ClassVar[str] = "text"
    # Unbound (a model's spec names the task): the section's defaults. `bind` sets these
    # per instance from the section.
    schema: ClassVar[dict[str, str]] = {"id": "string", "text": "string", "label": "string"}
    key_columns: ClassVar[list[str]] = ["id"]
    time_column: ClassVar[str | None] = None
    target_column: ClassVar[str] = "label"
    text_column: ClassVar[str] = "text"
    group_column: ClassVar[str | None] = None
    fixed_labels: ClassVar[tuple[str, ...] | None] = None
    # HumanLabels: what people may answer (a fixed label set only).
    class_names: ClassVar[tuple[str, ...]] = ()
    split_kind: ClassVar[Literal["chronological", "stratified", "grouped"]] = "stratified"
    transferred_features: ClassVar[tuple[str, ...]] = ("vocabulary",)

    # ------------------------------------------------------------------ params

    def bind(self, settings: TextSettings) -> TextTask:
        """This family configured by its section: its columns, split and label set."""
        named = {
            "key_column": settings.key_column,
            "text_column": settings.text_column,
            "label_column": settings.label_column,
        }
        if settings.group_column is not None:
            named["group_column"] = settings.group_column
        for key, column in named.items():
            if not column.strip():
                raise ValueError(f"{key} is empty: name a column of your data")
            if column in RESERVED_COLUMNS:
                raise ValueError(f"{key} {column!r} is a column Loopline adds: rename it")
        seen: dict[str, str] = {}
        for key, column in named.items():
            if column in seen:
                raise ValueError(f"{key} and {seen[column]} are both {column!r}: one column each")
            seen[column] = key
        task = copy.copy(self)
        group = settings.group_column
        task.schema = {column: "string" for column in named.values()}
        task.key_columns = [settings.key_column]
        task.target_column = settings.label_column
        task.text_column = settings.text_column
        task.group_column = group
        task.split_kind = "grouped" if group else "stratified"
        labels = settings.labels
        task.fixed_labels = tuple(str(label) for label in labels) if labels else None
        task.class_names = task.fixed_labels or ()
        return task

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

    # ------------------------------------------------------------------ data

    def schema_for(self, params: Params) -> dict[str, str]:
        return self.schema

    def load_builtin(self, params: Params) -> pd.DataFrame:
        raise ValueError(
            f"task {self.name} has no built-in data: point ingest.source at a file or table "
            f"with columns {list(self.schema)}"
        )

    def rules(self, params: Params) -> list[Rule]:
        key, text = self.key_columns[0], self.text_column
        rules = [
            Rule(f"{key}_not_null", "not_null", column=key),
            Rule(f"{key}_not_duplicated", "unique", columns=(key,)),
            Rule(f"{text}_not_null", "not_null", column=text),
            Rule(f"{text}_not_blank", "not_blank", column=text),
        ]
        if self.group_column:
            group = self.group_column
            rules.append(Rule(f"{group}_not_null", "not_null", column=group))
        if self.fixed_labels:
            # No label is fine (the unlabeled pool); a label must be one of the set.
            rules.append(
                Rule(
                    f"{self.target_column}_in_labels",
                    "in_set",
                    column=self.target_column,
                    values=self.fixed_labels,
                    show_value=True,
                )
            )
        return rules

    # ------------------------------------------------------------------ labels

    def label_names(self, values: pd.Series) -> pd.Series:
        """The label column's values as class names (missing stays missing)."""
        return values.astype("string")

    def label_values(self, names: list[str]) -> list[Any]:
        """Class names as values of the label column (people's labels join the data)."""
        return list(names)

    def class_ids(self, rows: pd.DataFrame, spec: FeatureSpec, target_set: str) -> np.ndarray:
        """The rows' labels as the model's class ids (positions in the spec's label set)."""
        index = {label: i for i, label in enumerate(spec.labels)}
        names = self.label_names(rows[spec.target_column]).tolist()
        unknown = sorted(set(names) - set(index))
        if unknown:
            raise ValueError(
                f"label(s) {unknown} of column {spec.target_column!r} in the {target_set} "
                f"split are not among the model's labels {spec.labels}: with `labels: null`, "
                "a label needs rows in the training split (give more rows of it, or fix the "
                "label set)"
            )
        return np.array([index[name] for name in names], dtype=np.int64)

    # ------------------------------------------------------------------ features

    def new_feature_spec(self, params: Params) -> FeatureSpec:
        section = self.settings(params)
        return FeatureSpec(
            task=self.name,
            feature_columns=[],
            target_column=self.target_column,
            labels=list(self.fixed_labels) if self.fixed_labels else None,
            options=TextOptions(
                text_column=self.text_column,
                key_column=self.key_columns[0],
                max_length=section.max_length,
                max_repeat=section.max_repeat,
                min_count=section.min_count,
                max_vocab=section.max_vocab,
                pretrained_encoder=section.pretrained_encoder,
                fine_tuning=section.fine_tuning,
                max_text_chars=section.max_text_chars,
            ),
        )

    def add_labels(
        self, frame: pd.DataFrame, spec: FeatureSpec, human: pd.DataFrame | None = None
    ) -> pd.DataFrame:
        """The data's own labels, with people's labels (`loopline label import`) filled
        in; labeled texts from the prediction log join as rows of their own."""
        if human is None or human.empty:
            return frame

        names = [self.class_names[int(i)] for i in human["label"]]
        return merge_human_labels(
            frame,
            human.assign(label=self.label_values(names)),
            self.key_columns[0],
            spec.target_column,
            spec.options.text_column,
            self.group_column,
        )

    def unlabeled_pool(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Texts without a label (id, text, origin) that people may label."""
        if not self.class_names:
            raise ValueError(
                f"{self.name}.labels is null: fix the label set ({self.name}.labels: [...]) "
                "so that people's answers name one of them"
            )
        pool = rows[rows[self.target_column].isna()]
        return pd.DataFrame(
            {
                "id": pool[self.key_columns[0]].astype(str).to_numpy(),
                "text": pool[self.text_column].astype(str).to_numpy(),
                "origin": "data",
            }
        )

    def pool_probabilities(self, session, spec: FeatureSpec, pool: pd.DataFrame) -> np.ndarray:
        """Class probabilities of an ONNX model (with its own vocabulary) for pool texts."""

        texts = pool["text"].astype(str).tolist()
        parts = [
            run_onnx(session, encode(texts[i : i + 512], spec)) for i in range(0, len(texts), 512)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, len(spec.labels)))

    def fit_features(self, spec: FeatureSpec, train_rows: pd.DataFrame) -> FeatureSpec:
        """The label set (fixed, or the training split's) and the token vocabulary of the
        training split only (or, fine-tuning, the one the pretrained encoder learned its
        embeddings for)."""
        labels = spec.labels
        if labels is None:
            names = self.label_names(train_rows[spec.target_column]).dropna().unique().tolist()
            if len(names) < 2:
                raise ValueError(
                    f"the training split holds {len(names)} distinct label(s) {names} in column "
                    f"{spec.target_column!r}: a classifier needs two or more"
                )
            labels = label_order([str(name) for name in names])
        options = spec.options
        if options.pretrained_encoder:
            # torch: training only
            from loopline.tasks.text.pretrain import load_encoder

            vocab = load_encoder(Path(options.pretrained_encoder))[1]
        else:
            vocab = Vocabulary.build(
                train_rows[options.text_column].astype(str),
                min_count=options.min_count,
                max_size=options.max_vocab,
                max_repeat=options.max_repeat,
            )
        return replace(spec, labels=labels, options=replace(options, vocabulary=vocab.to_json()))

    def probe_input(self, spec: FeatureSpec) -> np.ndarray:
        """Two empty texts as token ids: one `<unk>` each (every row has a token to read)."""
        return encode(["", ""], spec)

    def examples(self, frame: pd.DataFrame, spec: FeatureSpec, target_set: str) -> Examples:
        rows = labeled_set(frame, target_set, spec.target_column)
        texts = rows[spec.options.text_column].astype(str).tolist()
        x = encode(texts, spec) if texts else np.zeros((0, 1), np.int64)
        y = self.class_ids(rows, spec, target_set)
        keys = pd.DataFrame({"id": rows[spec.options.key_column].astype(str).to_numpy()})
        return Examples(x, y, keys)

    # ------------------------------------------------------------------ model

    def build_model(self, hparams: TextHyperparameters, spec: FeatureSpec):
        # torch: training only
        from loopline.tasks.text.model import TextClassifier
        from loopline.tasks.text.pretrain import ENCODER_KEYS, load_encoder, load_pretrained

        encoder = None
        if spec.options.pretrained_encoder:
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
            load_pretrained(model, encoder.encoder_state)
        return model

    def fine_tuning(self, spec: FeatureSpec, transfer):
        """How a pretrained encoder is fine-tuned: `<section>.fine_tuning` names the
        strategy, `train.transfer` sets its knobs (the same strategies as
        `train.init_from`'s); None from scratch."""
        if not spec.options.pretrained_encoder:
            return None
        # torch: training only
        from loopline.offline.transfer import make_strategy

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
        """Masked-token pretraining of the encoder on the snapshot's text; the saved
        encoder is what `<section>.pretrained_encoder` fine-tunes from."""
        # torch: training only
        from loopline.tasks.text.pretrain import pretrain_for_task, save_encoder

        section = self.settings(params)

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
            override=f"{self.name}.pretrained_encoder={{path}}",
            params={k: getattr(section, k) for k in logged},
        )

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, frame, spec: FeatureSpec, model, params: Params, champion=None):
        """The model, the TF-IDF baseline and the majority class (both learned here from
        the same training split) and the champion (with its own vocabulary) on the same
        test texts."""
        # torch: training only
        from loopline.offline.train import predict

        text = spec.options.text_column
        test = labeled_set(frame, "test", spec.target_column)
        train = labeled_set(frame, "train", spec.target_column)
        if test.empty:
            raise ValueError("the test split holds no labeled text: nothing to evaluate on")
        texts = test[text].astype(str).tolist()
        train_y = self.class_ids(train, spec, "train")
        baseline = train_text_baseline(
            train[text].astype(str).tolist(),
            train_y,
            c=self.settings(params).baseline_c,
            seed=params.seed,
        )
        tfidf = np.zeros((len(texts), len(spec.labels)))
        tfidf[:, baseline.pipeline.classes_] = baseline.probabilities(texts)
        # The training split's class shares: argmax is the majority class.
        shares = np.bincount(train_y, minlength=len(spec.labels)) / len(train_y)
        probabilities = {
            "model": predict(model, encode(texts, spec)),
            "tfidf_baseline": tfidf,
            "majority_class_baseline": np.tile(shares, (len(texts), 1)),
        }
        return evaluate_classifier(
            self.class_ids(test, spec, "test"),
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
        """An HTML page of test texts, each token shaded by the model's attention."""
        test = labeled_set(frame, "test", spec.target_column)
        n = min(self.settings(params).explain_examples, len(test))
        if n == 0:
            return []
        picked = test.sample(n=n, random_state=params.seed)
        texts = picked[spec.options.text_column].astype(str).tolist()
        explained = explain_texts(model, spec, texts)
        truth = self.class_ids(picked, spec, "test")
        path = folder / "attention.html"
        path.write_text(attention_html(explained, truth, spec), encoding="utf-8")
        return [path]

    # ------------------------------------------------------------------ monitoring

    def monitor_inputs(self, rows: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
        """A text's length in characters and in words (a changed mix of texts shows in
        both); texts have no event time of their own here."""

        texts = rows[spec.options.text_column].fillna("").astype(str)
        return pd.DataFrame(
            {
                "text_chars": texts.str.len().astype(np.float64),
                "text_words": texts.str.split().str.len().astype(np.float64),
                EVENT_TIME: pd.Series(pd.NaT, index=rows.index, dtype="datetime64[ns, UTC]"),
            }
        )

    def logged_rows(self, records: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
        texts = [i.get("text") if isinstance(i, dict) else None for i in records["inputs"]]
        return pd.DataFrame(
            {spec.options.key_column: records["key"].to_numpy(), spec.options.text_column: texts}
        )

    def reference_outputs(self, outputs: np.ndarray, spec: FeatureSpec) -> list[dict]:
        """Class probabilities as the log keeps a served answer: its label."""
        labels = spec.labels or []
        return [{"label": labels[int(i)]} for i in np.asarray(outputs).argmax(axis=1)]

    def monitor_outputs(self, outputs: list, spec: FeatureSpec) -> pd.DataFrame:
        """The predicted label (categorical)."""
        labels = [o.get("label") if isinstance(o, dict) else None for o in outputs]
        return pd.DataFrame({"predicted_label": pd.Series(labels, dtype="string")})

    def reference_losses(self, y: np.ndarray, outputs: np.ndarray, spec: FeatureSpec):
        """1 for a test text the model labels wrongly, else 0."""
        return (np.asarray(outputs).argmax(axis=1) != np.asarray(y)).astype(np.float64)

    def live_losses(self, predictions, rows, labels, spec: FeatureSpec) -> np.ndarray:
        """1 for a logged text people labelled otherwise than the model, 0 for one they
        labelled the same (`loopline label import`; joined by the text's id), else NaN."""
        out = np.full(len(predictions), np.nan)
        if labels is None or labels.empty:
            return out
        names = list(self.class_names or spec.labels or [])
        given = {
            str(i): names[int(v)] if str(v).lstrip("-").isdigit() and int(v) < len(names) else v
            for i, v in zip(labels["id"], labels["label"], strict=True)
        }
        for n, (key, output) in enumerate(
            zip(predictions["key"], predictions["output"], strict=True)
        ):
            truth = given.get(str(key))
            if truth is not None and isinstance(output, dict):
                out[n] = float(str(output.get("label")) != str(truth))
        return out

    def quality_name(self, spec: FeatureSpec) -> str:
        return "error_rate"

    def quality_from_metrics(self, metrics: dict[str, float]) -> float | None:
        accuracy = metrics.get("test_accuracy")
        return None if accuracy is None else 1.0 - accuracy


def explain_texts(model, spec: FeatureSpec, texts: list[str]) -> list[dict[str, Any]]:
    """Prediction, probabilities and each token's attention weight, per text (PyTorch)."""
    import torch

    from loopline.tasks.text.model import ClassifierPredictor

    vocab = vocabulary(spec)
    ids = encode(texts, spec, vocab)
    with torch.no_grad():
        probabilities, weights = ClassifierPredictor(model.eval())(torch.from_numpy(ids))
    return explanations(texts, spec, probabilities.numpy(), weights.numpy(), vocab)


def attention_html(explained: list[dict[str, Any]], truth: np.ndarray, spec: FeatureSpec) -> str:
    """A self-contained page: one text per row, tokens shaded by attention weight."""
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
        '<!doctype html><html><meta charset="utf-8"><title>Attention: test texts'
        "</title><style>body{font-family:sans-serif}td{padding:4px 8px;vertical-align:top}"
        ".ok{color:#060}.miss{color:#b00;font-weight:bold}</style>"
        "<h1>Which tokens the model attended to</h1><p>Each token is shaded by its "
        "attention weight (darker: weighed more); hover for the value.</p>"
        "<table><tr><th>true</th><th>predicted</th><th>text</th></tr>"
        + "".join(rows)
        + "</table></html>"
    )
