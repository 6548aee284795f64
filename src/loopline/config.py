"""Typed, validated params: one frozen section per stage, parsed from params.yaml.

Unknown keys and bad values are rejected before any work starts, with the key named, so a
typo never silently falls back to a default. `-P section.key=value` overrides are applied to
the raw YAML first and validated with everything else.
"""

from __future__ import annotations

import copy
import hashlib
import json
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from loopline.errors import ConfigError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Positive = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class IngestParams(Section):
    """Where rows come from. `source` is `builtin` (the running task's own data; or
    `builtin:<task>`), a CSV/TSV/Parquet path or glob, or a
    SQLAlchemy URL (then `query` is the SQL to run)."""

    source: str = "builtin"  # the running task's built-in data (or builtin:<task>)
    query: str | None = None
    # Optional time bounds [start, end) on the source, e.g. to backfill or replay history.
    start: str | None = None
    end: str | None = None

    @field_validator("start", "end", mode="before")
    @classmethod
    def _time_as_text(cls, value: Any) -> Any:
        # YAML reads 2021-03-01 as a date; keep bounds as ISO text, checked to parse.
        if isinstance(value, date | datetime):
            return value.isoformat()
        if isinstance(value, str):
            try:
                datetime.fromisoformat(value)
            except ValueError:
                raise ValueError(f"{value!r} is not an ISO date or time") from None
        return value

    @model_validator(mode="after")
    def _query_needs_sql(self) -> IngestParams:
        if self.query is not None and "://" not in self.source:
            raise ValueError("ingest.query is only used with a SQLAlchemy URL source")
        return self


class PVSystemParams(Section):
    surface_tilt: Annotated[float, Field(ge=0, le=90)] = 30.0
    surface_azimuth: Annotated[float, Field(ge=0, lt=360)] = 180.0
    pdc0_w: Annotated[float, Field(gt=0)] = 5000.0
    gamma_pdc: Annotated[float, Field(ge=-0.02, le=0)] = -0.004
    inverter_efficiency: Annotated[float, Field(gt=0, le=1)] = 0.96


SolarSite = Literal["greensboro", "sand_point"]


class SolarParams(Section):
    """The built-in solar source: TMY3 weather shipped with pvlib → AC power of a PV system."""

    sites: list[SolarSite] = ["greensboro", "sand_point"]
    year: Annotated[int, Field(ge=1990, le=2100)] = 2021
    system: PVSystemParams = PVSystemParams()

    @field_validator("sites")
    @classmethod
    def _sites_unique(cls, sites: list[str]) -> list[str]:
        if not sites or len(set(sites)) != len(sites):
            raise ValueError("solar.sites must list at least one site, each once")
        return sites


class ValidateParams(Section):
    max_bad_fraction: Fraction = 0.05


class FeaturesParams(Section):
    freq: str = "1h"
    # Power lags (steps) added as inputs: 24 = the same hour yesterday.
    lags: list[Positive] = [24]
    # Clear-sky power `lead` steps ahead, known from the clock alone; with a window of at least
    # the horizon the model sees the whole clear-sky profile of the day it forecasts.
    clearsky_leads: list[Positive] = [24]


class LabelingParams(Section):
    # Forecasting tasks: steps ahead each example is labeled with.
    horizon: Positive = 24
    # Active learning (`loopline label export`): how the next batch for people is chosen
    # from the unlabeled pool, how many rows, and for `committee`, how many of the last
    # registered versions vote.
    strategy: Literal["random", "least_confidence", "margin", "entropy", "committee"] = (
        "least_confidence"
    )
    batch_size: Positive = 200
    committee_size: Annotated[int, Field(ge=2)] = 3
    # Also offer texts the service was asked about (its prediction log) to people.
    include_prediction_log: bool = True


class SplitParams(Section):
    train: Annotated[float, Field(gt=0, lt=1)] = 0.8
    val: Annotated[float, Field(gt=0, lt=1)] = 0.1
    test: Annotated[float, Field(gt=0, lt=1)] = 0.1

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitParams:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split.train + split.val + split.test must be 1, got {total:g}")
        return self


class Dimension(Section):
    """One search-space axis: a list of `choices`, or a numeric range `low`..`high`."""

    choices: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> Dimension:
        if self.choices is not None:
            if not self.choices or self.low is not None or self.high is not None:
                raise ValueError("give either a non-empty `choices` list or `low`/`high`")
        elif self.low is None or self.high is None or self.low > self.high:
            raise ValueError("a range needs `low` <= `high`")
        elif self.log and self.low <= 0:
            raise ValueError("a log range needs `low` > 0")
        return self


# Each task's hyperparameters (what its `build_model` and training read) and its default
# search space; `tune.search_space` must cover exactly the running task's axes.
HYPERPARAMETERS: dict[str, tuple[str, ...]] = {
    "solar": (
        "hidden_size",
        "num_layers",
        "dropout",
        "learning_rate",
        "batch_size",
        "window",
        "cell",
    ),
    "reviews": (
        "embed_size",
        "hidden_size",
        "layers",
        "kernel_size",
        "dropout",
        "learning_rate",
        "batch_size",
        "ngram_buckets",
    ),
    "digits": (
        "channels",
        "hidden_size",
        "dropout",
        "learning_rate",
        "batch_size",
    ),
}
# The hyperparameters that shape a model's weights: a model started from another one
# (`train.init_from`) takes these from it, and tuning searches the others only.
ARCHITECTURE: dict[str, tuple[str, ...]] = {
    "solar": ("hidden_size", "num_layers", "cell"),
    "reviews": ("embed_size", "hidden_size", "layers", "kernel_size", "ngram_buckets"),
    "digits": ("channels", "hidden_size"),
}
# Axes whose values must come from a fixed set.
CATEGORICAL_AXES = {"cell": {"lstm", "gru"}}


def default_space(task: str) -> dict[str, Dimension]:
    if task == "digits":
        return {
            "channels": Dimension(choices=[16, 32]),
            "hidden_size": Dimension(choices=[64]),
            "dropout": Dimension(low=0.1, high=0.4),
            "learning_rate": Dimension(low=1e-3, high=1e-2, log=True),
            "batch_size": Dimension(choices=[32]),
        }
    if task == "reviews":
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
    return {
        "hidden_size": Dimension(choices=[32, 64]),
        "num_layers": Dimension(choices=[1, 2]),
        "dropout": Dimension(low=0.0, high=0.3),
        "learning_rate": Dimension(low=1e-3, high=1e-2, log=True),
        "batch_size": Dimension(choices=[64, 128]),
        "window": Dimension(choices=[24, 48]),
        "cell": Dimension(choices=["lstm", "gru"]),
    }


def check_space(task: str, space: dict[str, Dimension]) -> None:
    """The search space must name exactly the task's hyperparameters."""
    known = HYPERPARAMETERS[task]
    unknown = sorted(set(space) - set(known))
    if unknown:
        raise ValueError(
            f"unknown hyperparameter(s) {unknown} for task {task}; known: {list(known)}"
        )
    missing = sorted(set(known) - set(space))
    if missing:
        raise ValueError(f"search_space is missing {missing} (a one-item `choices` fixes one)")
    for axis, allowed in CATEGORICAL_AXES.items():
        if axis in space:
            choices = space[axis].choices
            if choices is None or not set(choices) <= allowed:
                raise ValueError(f"search_space.{axis} must be `choices` from {sorted(allowed)}")


class TuneParallel(Section):
    """Where tuning trials run: in the flow's process, or on a Dask cluster."""

    engine: Literal["local", "dask"] = "local"
    workers: Positive = 2  # Dask workers of the LocalCluster started when no address is set
    address: str | None = None  # an existing Dask scheduler, e.g. tcp://scheduler:8786
    # Optuna's shared trial store; default: a SQLite file in the state folder. A cluster on
    # several machines needs a database they all reach, e.g. postgresql+psycopg://...
    storage: str | None = None


class TuneParams(Section):
    sampler: Literal["grid", "random", "tpe"] = "tpe"
    n_trials: Positive = 6
    max_epochs: Positive = 6
    pruning: bool = True
    # Points per numeric range when the sampler is `grid`.
    grid_points: Annotated[int, Field(ge=2)] = 2
    # Training rows a trial sees (a seeded sample; None = all): a search ranks settings, and
    # on 100k+ reviews a sample ranks them as well at a fraction of the time. The final
    # training always uses every training row.
    max_train_rows: Positive | None = None
    # The running task's axes (see HYPERPARAMETERS); in params.yaml it may also be keyed by
    # task name ({solar: {...}, reviews: {...}}), and the running task's entry is used.
    search_space: dict[str, Dimension] = Field(default_factory=lambda: default_space("solar"))
    parallel: TuneParallel = TuneParallel()


class TransferParams(Section):
    """How a model started from another (`train.init_from`) learns: see `loopline.transfer`."""

    mode: Literal["none", "freeze", "gradual_unfreeze", "discriminative_lr"] = "none"
    # `freeze` mode: the layer groups that keep their weights (say [features.0]); empty: all
    # but the head. Group names are the model's (`layer_groups()`), checked at training.
    freeze: list[str] = Field(default_factory=list)
    unfreeze_every: Positive = 1  # `gradual_unfreeze`: epochs per newly thawed group
    lr_decay: Annotated[float, Field(ge=1)] = 2.6  # `discriminative_lr`: per-group divisor


class TrainParams(Section):
    # Start from a trained model's weights instead of random ones: `models:/<name>@<alias>`,
    # `models:/<name>/<version>`, `runs:/<run id>` (a pipeline run) or a checkpoint file.
    init_from: str | None = None
    transfer: TransferParams = Field(default_factory=TransferParams)
    max_epochs: Positive = 40
    patience: Positive = 5
    min_delta: Annotated[float, Field(ge=0)] = 0.0
    weight_decay: Annotated[float, Field(ge=0)] = 1e-4
    grad_clip: Annotated[float, Field(gt=0)] = 1.0
    threads: Annotated[int, Field(ge=0)] = 0  # 0: torch's default


class EvaluateParams(Section):
    # Relative RMSE improvement a candidate needs over the champion (0.0 = any improvement).
    min_improvement: Annotated[float, Field(ge=0, lt=1)] = 0.0
    # Steps of history behind smart persistence's clear-sky index.
    smart_persistence_window: Positive = 24


class ExportParams(Section):
    parity_atol: Annotated[float, Field(gt=0)] = 1e-2
    parity_rtol: Annotated[float, Field(ge=0)] = 1e-4
    golden_batch: Annotated[int, Field(ge=2)] = 32


class PublishParams(Section):
    model_name: str | None = None  # default: the task's name
    experiment: str | None = None  # default: "loopline-<task>"


class ServeParams(Section):
    """The online service (`loopline serve`). Each key can also be set at run time by an
    environment variable `LOOPLINE_SERVE_<KEY>` (e.g. in a container), which wins."""

    model: str | None = None  # registered model to serve; default: publish.model_name
    alias: str = "champion"
    poll_interval_s: Annotated[float, Field(gt=0)] = 5.0  # how often the alias is re-resolved
    workers: Positive = 1
    threads: Annotated[int, Field(ge=0)] = 0  # onnxruntime threads per worker; 0 = cores/workers
    max_batch_size: Positive = 64  # adaptive batching of `predict`
    # Adaptive batching sheds requests it expects to finish later than this (503): with
    # features at ~3 ms per window, a tight bound rejects most requests under load.
    max_latency_ms: Positive = 2000
    max_body_bytes: Positive = 8 * 1024 * 1024  # larger request bodies get 413
    max_line_bytes: Positive = 64 * 1024  # longer NDJSON lines in `stream` get an error line
    prediction_log: str | None = None  # SQLAlchemy URL; default: SQLite in the state folder
    log_batch_size: Positive = 256
    log_flush_interval_s: Annotated[float, Field(gt=0)] = 1.0
    log_queue_size: Positive = 100_000


class ScheduleParams(Section):
    """When the offline flow runs unattended (`loopline schedule`)."""

    cron: str = "0 2 * * *"  # daily at 02:00
    timezone: str = "UTC"  # an IANA zone, e.g. Asia/Seoul; the cron is read in it
    # A run due while the last is still going waits ("enqueue") or is dropped ("cancel_new").
    overlap: Literal["enqueue", "cancel_new"] = "enqueue"
    paused: bool = False
    # Failed and skipped ("nothing new") runs are summarised in the log; this URL, if set,
    # also receives the summary as a JSON POST (e.g. a Slack or Teams incoming webhook).
    webhook_url: str | None = None

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        from cronsim import CronSim, CronSimError

        try:
            CronSim(value, datetime(2000, 1, 1))
        except CronSimError as error:
            message = f"{value!r} is not a cron expression (e.g. '0 2 * * *'): {error}"
            raise ValueError(message) from None
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone (e.g. Europe/Berlin)") from None
        return value


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


class AugmentParams(Section):
    """Random changes to training images (training split only); 0 turns one off."""

    shift_px: Annotated[float, Field(ge=0, le=4)] = 1.0
    rotate_deg: Annotated[float, Field(ge=0, le=45)] = 10.0
    noise: Annotated[float, Field(ge=0, le=0.5)] = 0.02
    contrast: Annotated[float, Field(ge=0, lt=1)] = 0.2


class DigitsParams(Section):
    """The digits task: small grey images of handwritten digits → the digit (0-9)."""

    max_pixel: Annotated[float, Field(gt=0)] = 16.0  # the source's white (sklearn: 16)
    # Images are read at this square size (the built-in digits are 8): at least 4, since
    # the CNN halves it twice.
    image_size: Annotated[int, Field(ge=4, le=256)] = 8
    channels: Literal[1, 3] = 1  # 1: grey, 3: RGB (notes ch. 3)
    # An image-folder source (`ingest.source: path/to/folder`): the CSV of file,label in it.
    labels_file: str = "labels.csv"
    # Uploads to the service: the largest side accepted. Uploads and image folders: whether
    # strokes are darker than the paper ("dark": a scan or photo) or lighter ("light": like
    # the built-in data).
    augment: AugmentParams = AugmentParams()
    max_upload_side: Positive = 1024
    upload_ink: Literal["dark", "light"] = "dark"
    # Explanations (`/explain_image`, `loopline explain`): the side of the occluding square.
    saliency_patch: Positive = 2


TASKS = ("solar", "reviews", "digits")


class Params(Section):
    task: Literal["solar", "reviews", "digits"] = "solar"
    seed: int = 42
    ingest: IngestParams = IngestParams()
    solar: SolarParams = SolarParams()
    reviews: ReviewsParams = ReviewsParams()
    digits: DigitsParams = DigitsParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    features: FeaturesParams = FeaturesParams()
    labeling: LabelingParams = LabelingParams()
    split: SplitParams = SplitParams()
    tune: TuneParams = TuneParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    export: ExportParams = ExportParams()
    publish: PublishParams = PublishParams()
    serve: ServeParams = ServeParams()
    schedule: ScheduleParams = ScheduleParams()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _space_of_the_task(cls, raw: Any) -> Any:
        """Pick the running task's search space; default it to the task's own."""
        if not isinstance(raw, dict):
            return raw
        task = raw.get("task", "solar")
        if task not in TASKS:
            return raw  # the `task` field reports it
        tune = raw.get("tune")
        tune = dict(tune) if isinstance(tune, dict) else {}
        space = tune.get("search_space")
        if isinstance(space, dict) and space and set(space) <= set(TASKS):
            space = space.get(task)
        if space is None:
            space = {k: v.model_dump() for k, v in default_space(task).items()}
        tune["search_space"] = space
        return {**raw, "tune": tune}

    @model_validator(mode="after")
    def _space_fits_the_task(self) -> Params:
        try:
            check_space(self.task, self.tune.search_space)
        except ValueError as error:
            raise ValueError(f"tune.search_space: {error}") from None
        return self

    @property
    def model_name(self) -> str:
        return self.publish.model_name or self.task

    @property
    def served_model(self) -> str:
        return self.serve.model or self.model_name

    @property
    def experiment_name(self) -> str:
        return self.publish.experiment or f"loopline-{self.task}"

    def section(self, name: str) -> dict[str, Any]:
        """One section as plain data (for logging and cache keys)."""
        return self.to_dict()[name]

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def fingerprint(self) -> str:
        """A stable hash of every offline knob: equal params → equal fingerprint.

        `serve` and `schedule` are left out: when and how models are served or run never
        makes a model stale.
        """
        offline = {k: v for k, v in self.to_dict().items() if k not in ("serve", "schedule")}
        text = json.dumps(offline, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def parse_override(text: str) -> tuple[list[str], Any]:
    """`section.key=value` → (["section", "key"], value parsed as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return [part for part in key.strip().split(".")], value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    data = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return data


def _describe(error: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown key"
    value = error.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"{where}: {error['msg']}{shown}"


def parse_params(raw: dict[str, Any] | None, origin: str = "params") -> Params:
    """Validate raw params; raise ConfigError listing every bad key."""
    try:
        return Params.model_validate(raw or {})
    except ValidationError as exc:
        lines = "\n  ".join(_describe(e) for e in exc.errors())
        raise ConfigError(f"{origin} is invalid:\n  {lines}") from None


SERVE_ENV_PREFIX = "LOOPLINE_SERVE_"


def serve_env_overrides(environ: dict[str, str]) -> list[str]:
    """`LOOPLINE_SERVE_<KEY>=value` variables as `serve.<key>=value` overrides."""
    return [
        f"serve.{key.removeprefix(SERVE_ENV_PREFIX).lower()}={value}"
        for key, value in sorted(environ.items())
        if key.startswith(SERVE_ENV_PREFIX)
    ]


def load_params(path: str | Path, overrides: list[str] | None = None) -> Params:
    """Read params.yaml, apply `-P` overrides, validate."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"params file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections")
    return parse_params(apply_overrides(raw, overrides or []), origin=str(path))
