"""Typed, validated params: one frozen section per stage, parsed from params.yaml.

Unknown keys and bad values are rejected before any work starts, with the key named, so a
typo never silently falls back to a default. `-P section.key=value` overrides are applied to
the raw YAML first and validated with everything else.
"""

from __future__ import annotations

import copy
import hashlib
import json
import warnings
from datetime import date, datetime
from typing import Annotated, Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from loopline._moved import forward
from loopline.errors import ConfigError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Positive = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class IngestParams(Section):
    """Where rows come from. `source` is `builtin` (the running task's own data; or
    `builtin:<task>`), a CSV/TSV/Parquet path or glob, a SQLAlchemy URL (then `query` is
    the SQL to run), or `live`: the input rows the service stored (`serve.store_inputs`)."""

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


class ValidateParams(Section):
    max_bad_fraction: Fraction = 0.05


class FeaturesParams(Section):
    """Shared feature knobs: none yet. What a task's features read (a series' step and
    lags, a vocabulary's size) is typed in the task's own section."""


class LabelingParams(Section):
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
    """Shares of the train, val and test sets, and the salt of the hash that places a row
    by its key (`loopline.offline.split`): a new salt, or new shares, move rows between sets."""

    train: Annotated[float, Field(gt=0, lt=1)] = 0.8
    val: Annotated[float, Field(gt=0, lt=1)] = 0.1
    test: Annotated[float, Field(gt=0, lt=1)] = 0.1
    salt: Annotated[str, Field(min_length=1)] = "loopline"

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
    # on 100k+ rows a sample ranks them as well at a fraction of the time. The final
    # training always uses every training row.
    max_train_rows: Positive | None = None
    # The running task's axes (its `Hyperparameters`; default: the task's own space); in
    # params.yaml it may also be keyed by task name, and the running task's entry is used.
    search_space: dict[str, Dimension] = Field(default_factory=dict)
    parallel: TuneParallel = TuneParallel()


class TransferParams(Section):
    """How a model started from another (`train.init_from`) learns: see
    `loopline.offline.transfer`."""

    mode: Literal["none", "freeze", "gradual_unfreeze", "discriminative_lr"] = "none"
    # `freeze` mode: the layer groups that keep their weights (say [features.0]); empty: all
    # but the head. Group names are the model's (`layer_groups()`), checked at training.
    freeze: list[str] = Field(default_factory=list)
    unfreeze_every: Positive = 1  # `gradual_unfreeze`: epochs per newly thawed group
    lr_decay: Annotated[float, Field(ge=1)] = 2.6  # `discriminative_lr`: per-group divisor


class TrainLaunch(Section):
    """Where the training processes of `train.processes` > 1 run."""

    # "local": on this machine, started by PyTorch's launcher (what `torchrun` runs); "dask":
    # one process per worker of a Dask cluster, which may span several machines.
    engine: Literal["local", "dask"] = "local"
    # The Dask scheduler (tcp://scheduler:8786); unset: a LocalCluster of `processes` workers.
    address: str | None = None
    # How long a process of the group waits on the others (a rendezvous, a collective)
    # before it fails: a lost machine fails the training instead of hanging it.
    timeout_seconds: Positive = 600


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
    # Intra-op threads per training process; 0: the cores the process may use (affinity and
    # container quota) shared among `processes`. 1 by default: a step of a small model with
    # 2 threads took 47 ms against 1.5 ms with 1 while another process held a core.
    threads: Annotated[int, Field(ge=0)] = 1
    # Training processes (data-parallel, torch.distributed; `loopline.offline.distributed`):
    # the way to use more cores than one process uses well.
    processes: Positive = 1
    launch: TrainLaunch = TrainLaunch()


class EvaluateParams(Section):
    # Relative RMSE improvement a candidate needs over the champion (0.0 = any improvement).
    min_improvement: Annotated[float, Field(ge=0, lt=1)] = 0.0
    # "paired": the candidate must also be significantly better than the champion on the
    # same rows (Diebold-Mariano for errors of values, exact McNemar for accuracy, a paired
    # bootstrap otherwise), one-sided at `alpha`; "point": any win on the metric.
    gate: Literal["paired", "point"] = "paired"
    alpha: Annotated[float, Field(gt=0, lt=0.5)] = 0.05
    # Resamples of the paired bootstrap interval of the metric difference (seeded by `seed`).
    resamples: Annotated[int, Field(ge=99)] = 1999
    # Fewer candidate test rows that the champion never trained or validated on than this,
    # and the candidate is held: too few rows to compare the two on.
    min_comparison_rows: Annotated[int, Field(ge=1)] = 30
    # Fewer labeled rows than this, and a row-per-example task is judged by repeated k-fold
    # cross-validation (`loopline.offline.crossval`) instead of its one held-out test set.
    cross_validate_below: Annotated[int, Field(ge=0)] = 1000
    folds: Annotated[int, Field(ge=2, le=20)] = 5
    repeats: Annotated[int, Field(ge=1, le=20)] = 2


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
    # How long start-up waits for the first model before answering probes: the first load
    # runs in the background, so /livez answers at once whatever the registry does, and
    # /readyz says "not ready: loading" until it is in (0 = do not wait).
    startup_wait_s: Annotated[float, Field(ge=0)] = 0.0
    workers: Positive = 1
    # onnxruntime threads per worker; 0 = cores/workers. 1 by default: on 2 cores a second
    # spinning intra-op thread made batch-32 predictions 3-6x slower whenever anything else
    # ran (benchmarks/serving.py, issue 15); raise it for big models on idle machines.
    threads: Annotated[int, Field(ge=0)] = 1
    max_batch_size: Positive = 64  # adaptive batching of `predict`
    # OpenTelemetry spans per request (BentoML's tracing; set an exporter in its config).
    # Off by default: spans nobody exports cost ~0.3 ms of a ~3 ms request (profiled).
    tracing: bool = False
    # Adaptive batching sheds requests it expects to finish later than this (503): with
    # features at ~3 ms per item, a tight bound rejects most requests under load.
    max_latency_ms: Positive = 2000
    max_body_bytes: Positive = 8 * 1024 * 1024  # larger request bodies get 413
    # A request body still unfinished this long after its last bytes gets 408 (`/stream`
    # has `line_timeout_s` instead). Headers themselves have no timeout in uvicorn: put a
    # proxy in front of a service open to the internet.
    body_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    max_line_bytes: Positive = 64 * 1024  # longer NDJSON lines in `stream` get an error line
    # Uploads decoded (and explanations computed) at once per worker, off the event loop;
    # more wait their turn, so a burst of large images cannot stall health checks. One:
    # on two cores the other is left to the light paths (/predict, /stream).
    max_heavy_requests: Positive = 1
    # Heavy requests (explanations, uploads) in flight per client address (more: 429) and
    # in all (more: 503), refused before any of their work is done.
    max_heavy_per_client: Positive = 2
    max_heavy_waiting: Positive = 16
    max_items_per_request: Positive = 1024  # items of one /predict body; more: a 400
    # /predict body bytes admitted and not yet answered, per worker: a request that would
    # pass it gets 503 with Retry-After before its body is read. 16 MiB holds 32 clients'
    # requests of 32 items of 72 readings each as row objects (9 MB; columns: 4 MB).
    max_predict_bytes_in_flight: Positive = 16 * 1024 * 1024
    max_explain_items: Positive = 16  # items of one /explain body (each is many model calls)
    # An /explain body's bytes (more: 413 before any is read). Parsing a body holds the
    # event loop every other client waits on (~25 ms for 0.7 MB of JSON); 256 KiB holds 16
    # series, texts or small images; larger images explain one upload at a time.
    max_explain_bytes: Positive = 256 * 1024
    max_streams: Positive = 1000  # open `/stream` connections per worker; more get 503
    # A stream line begun and not finished within this many seconds closes the stream (a
    # client between lines may wait as long as it likes).
    line_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    # Bearer token for prediction and operator endpoints (set it by LOOPLINE_SERVE_TOKEN, not
    # in a committed file). Unset: no token asked, internal paths shown to loopback only.
    token: str | None = Field(None, repr=False, exclude=True)  # never dumped: not in MLflow
    # Web origins (https://app.example.com) whose pages may POST here from a browser;
    # any other site's page is refused (403), whatever the token.
    allowed_origins: list[str] = []
    prediction_log: str | None = None  # SQLAlchemy URL; default: SQLite in the state folder
    log_batch_size: Positive = 256
    log_flush_interval_s: Annotated[float, Field(gt=0)] = 1.0
    log_queue_size: Positive = 100_000
    # Also store each accepted input row (a reading, a text, a table row) once, in the
    # prediction-log database's `live_inputs` table, for `ingest.source: live`.
    store_inputs: bool = True


class ScheduleParams(Section):
    """When the offline flow runs unattended (`loopline schedule`)."""

    cron: str = "0 2 * * *"  # daily at 02:00
    # A monitoring pass (`loopline monitor`) this often; an alarm starts the offline
    # deployment (policy: the `monitor:` section). null: no scheduled monitoring.
    monitor_cron: str | None = "15 * * * *"
    timezone: str = "UTC"  # an IANA zone, e.g. Asia/Seoul; the cron is read in it
    # A run due while the last is still going waits ("enqueue") or is dropped ("cancel_new").
    overlap: Literal["enqueue", "cancel_new"] = "enqueue"
    paused: bool = False
    # Failed and skipped ("nothing new") runs are summarised in the log; this URL, if set,
    # also receives the summary as a JSON POST (e.g. a Slack or Teams incoming webhook).
    webhook_url: str | None = None

    @field_validator("cron", "monitor_cron")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        from cronsim import CronSim, CronSimError

        if value is None:
            return None
        try:
            CronSim(value, datetime(2000, 1, 1))
        except CronSimError as error:
            message = f"{value!r} is not a cron expression (e.g. '0 2 * * *'): {error}"
            raise ValueError(message) from None
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone (e.g. Europe/Berlin)") from None
        return value


MonitorSignal = Literal["feature_drift", "prediction_drift", "live_quality"]


class MonitorParams(Section):
    """`loopline monitor`: drift and live quality over event-time periods of the prediction
    log, against the reference profile published with each model version."""

    period: str = "1D"  # a period's span of event time (a pandas offset: 1D, 6h, 1W)
    # Per period and signal: how often a clean period may cross its calibrated threshold.
    false_alarm_rate: Annotated[float, Field(gt=0, lt=0.5)] = 0.01
    min_rows: Positive = 20  # a period with fewer predictions is "too small": not tested
    # Consecutive periods over the threshold before a signal raises its alarm.
    min_periods: Positive = 2
    signals: list[MonitorSignal] = ["feature_drift", "prediction_drift", "live_quality"]
    # Fixed thresholds instead of calibrated ones, by signal or signal.column (say,
    # {"live_quality.figure": 1.5}: live RMSE or error rate over 1.5x the test split's;
    # "live_quality.bias": relative bias; "feature_drift.ghi": a KS statistic).
    thresholds: dict[str, float] = {}
    reference_rows: Positive = 5000  # rows of the training split a profile keeps per column
    calibration_draws: Annotated[int, Field(ge=100)] = 2000  # reference periods resampled
    cooldown_h: Annotated[float, Field(ge=0)] = 24.0  # after an alarm starts a run, the next waits
    # Input columns a profile keeps and feature drift tests, of a wide table: the model's
    # own feature columns first, then those with the most distinct values (null: all).
    max_columns: Positive | None = 50

    # Keys an earlier release named otherwise: still read, with a warning naming the new
    # key (the old words are kept here only, for params files written before the rename).
    RENAMED: ClassVar[dict[str, str]] = {"window": "period", "min_windows": "min_periods"}

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, raw: Any) -> Any:
        if not isinstance(raw, dict) or not set(raw) & set(cls.RENAMED):
            return raw
        raw = dict(raw)
        for old, new in cls.RENAMED.items():
            if old not in raw:
                continue
            if new in raw:
                raise ValueError(f"monitor.{old} was renamed monitor.{new}: give only {new}")
            warnings.warn(
                f"params monitor.{old} was renamed monitor.{new}; rename it in params.yaml",
                FutureWarning,
                stacklevel=2,
            )
            raw[new] = raw.pop(old)
        return raw

    @field_validator("period")
    @classmethod
    def _offset(cls, value: str) -> str:
        import pandas as pd

        try:
            span = pd.Timedelta(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a span of time (e.g. 1D, 6h)") from None
        if span <= pd.Timedelta(0):
            raise ValueError(f"{value!r} must be a positive span of time")
        return value


class UiParams(Section):
    """`loopline ui`: the operator's web page. Its token is `LOOPLINE_UI_TOKEN` in the
    environment, never a key here: reading needs none, promote and rollback do."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8080
    # Base URLs of the running services the page asks for their model, readiness and
    # metrics (e.g. http://svc-a:3000); `loopline ui --service URL` adds more.
    services: list[str] = []
    # An MLflow UI serving this registry (e.g. http://mlflow:5000), for links to runs;
    # unset: monitor reports are opened through the page itself.
    mlflow_url: str | None = None
    live_rows: Annotated[int, Field(ge=10, le=20_000)] = 500  # predictions the pictures read
    poll_interval_s: Annotated[float, Field(gt=0)] = 0.5  # how often new predictions are sent
    # A service that has not answered within this long is shown as not answering.
    service_timeout_s: Annotated[float, Field(gt=0)] = 1.0
    # Host names the page answers besides loopback and the address it listens on (a
    # reverse proxy's name, say); "*.example.com" covers subdomains, "*" any name.
    allowed_hosts: list[str] = []


class DeployParams(Section):
    """The policy judging a shadow or canary challenger (`loopline deploy`), run by
    `loopline monitor` and its schedule, or `loopline deploy --decide`."""

    # Paired answers (both models on the same item) before errors and latency are judged,
    # and pairs with known truth before quality is.
    min_observations: Positive = 100
    # Pairs with truth after which "no significant difference" ends it (the champion stays).
    max_observations: Positive = 5000
    alpha: Annotated[float, Field(gt=0, lt=0.5)] = 0.05  # each one-sided paired test's level
    max_error_increase: Annotated[float, Field(ge=0, le=1)] = 0.01  # error rate over the champion's
    max_latency_ratio: Annotated[float, Field(gt=1)] = 2.0  # p99 against the champion's
    latency_floor_ms: Annotated[float, Field(ge=0)] = 5.0  # below this a p99 is not compared
    agreement_tolerance: Annotated[float, Field(ge=0)] = 0.1  # numbers this close agree


class ConsumeParams(Section):
    """`loopline consume`: answers from a broker's stream instead of HTTP (Redis Streams).

    One consumer per input stream keeps per-key state right (say, each site's latest
    readings); more consumers of the same group are for failover: one that dies leaves its
    messages pending, and another claims them after `claim_idle_s`."""

    url: str = "redis://127.0.0.1:6379/0"  # LOOPLINE_CONSUME_URL wins (it may hold a password)
    stream: str = "readings"  # the input stream; each message's `data` field is one JSON line
    group: str = "loopline"
    output: str | None = None  # answers go here; default `<stream>:answers`
    dead_letter: str | None = None  # malformed messages and why; default `<stream>:dead`
    batch: Annotated[int, Field(ge=1, le=10_000)] = 500  # messages read (and in flight) at once
    block_ms: Annotated[int, Field(ge=0)] = 1000  # how long a read waits for new messages
    # A message another consumer took and left unacknowledged this long is claimed.
    claim_idle_s: Annotated[float, Field(gt=0)] = 30.0
    # Back-pressure: reading pauses while the output stream holds more than this many
    # answers (nobody is reading them); 0: no limit.
    max_output_length: Annotated[int, Field(ge=0)] = 1_000_000
    # On start, the per-key state is refilled from this many stored rows (the newest),
    # so a restarted consumer answers at once instead of waiting for new readings.
    warm_rows: Annotated[int, Field(ge=0)] = 5000


def check_space(hyperparameters: type, space: dict[str, Dimension]) -> None:
    """The search space must name exactly the task's hyperparameters (a typed class with
    `axes()` and `choices(axis)`), and pick a `Literal` axis among its choices."""
    known = hyperparameters.axes()
    unknown = sorted(set(space) - set(known))
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {unknown}; known: {list(known)}")
    # A field with a default (added after older search spaces were written) may be left out:
    # it is not searched, and every trial uses its default.
    missing = sorted(set(known) - set(space) - set(hyperparameters.defaults()))
    if missing:
        raise ValueError(f"search_space is missing {missing} (a one-item `choices` fixes one)")
    for axis in space:
        allowed = hyperparameters.choices(axis)
        if allowed is not None and not set(space[axis].choices or [None]) <= set(allowed):
            raise ValueError(f"search_space.{axis} must be `choices` from {sorted(allowed)}")


# The shared sections; every other top-level key is a task's own section.
SHARED_SECTIONS = (
    "task",
    "seed",
    "ingest",
    "validate",
    "features",
    "labeling",
    "split",
    "tune",
    "train",
    "evaluate",
    "export",
    "publish",
    "serve",
    "schedule",
    "monitor",
    "ui",
    "consume",
    "deploy",
)


class Params(Section):
    """Every knob, one section per stage, plus the running task's own section (named after
    the task, validated by the task's `Params`). Build it with `parse_params`/`load_params`:
    the model class is made per task (`params_model`)."""

    # A built-in task's name, an import path `package.module:Class` or an entry point name
    # (`loopline.params` fills in the default task where params.yaml names none; a bare
    # `Params()`, the shared sections' defaults, names none).
    task: str = ""
    seed: int = 42
    ingest: IngestParams = IngestParams()
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
    monitor: MonitorParams = MonitorParams()
    ui: UiParams = UiParams()
    consume: ConsumeParams = ConsumeParams()
    deploy: DeployParams = DeployParams()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    # The running task as discovered (set on each per-task subclass), the project folder it
    # came from, the top-level keys that are tasks' own sections (the running task's and the
    # built-ins': a project may keep several), how a pickled instance is rebuilt (resolving
    # its task again), and the task bound to this instance's own section (`plugin`).
    discovered: ClassVar[Any] = None
    root: ClassVar[str | None] = None
    task_sections: ClassVar[frozenset[str]] = frozenset()
    rebuild: ClassVar[Any] = None
    _bound: Any = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _space_of_the_task(cls, raw: Any) -> Any:
        """Pick the running task's search space; default it to the task's own."""
        if not isinstance(raw, dict) or cls.discovered is None:
            return raw
        tune = raw.get("tune")
        tune = dict(tune) if isinstance(tune, dict) else {}
        space = tune.get("search_space")
        if isinstance(space, dict) and space and set(space) <= cls.task_sections:
            space = space.get(cls.discovered.name)
        if space is None:
            default = configured(cls.discovered, raw).default_space()
            space = {k: v.model_dump() for k, v in default.items()}
        tune["search_space"] = space
        return {**raw, "tune": tune}

    @model_validator(mode="after")
    def _space_fits_the_task(self) -> Params:
        if self.discovered is None:
            return self
        try:
            check_space(self.discovered.Hyperparameters, self.tune.search_space)
        except ValueError as error:
            raise ValueError(f"tune.search_space: {error}") from None
        return self

    @model_validator(mode="after")
    def _bind_the_task(self) -> Params:
        """The task configured by its own section (a family task takes its columns from
        it); a section it cannot work with is refused here, before any work."""
        if self.discovered is not None:
            try:
                self._bound = self.discovered.bind(self.task_params)
            except ValueError as error:
                raise ValueError(f"{self.discovered.name}: {error}") from None
        return self

    @property
    def plugin(self) -> Any:
        """The running task, bound to this params' own section (`Task.bind`)."""
        return self._bound if self._bound is not None else self.discovered

    def __reduce__(self):
        # Per-task classes are made at run time: rebuild from plain values (Dask workers,
        # Prefect results), which resolves the task again.
        return (type(self).rebuild, (self.to_dict(), self.root))

    @property
    def task_name(self) -> str:
        """The running task's name (`task` may be an import path)."""
        return self.discovered.name

    @property
    def task_params(self) -> Any:
        """The running task's own section."""
        return getattr(self, self.discovered.name)

    @property
    def model_name(self) -> str:
        return self.publish.model_name or self.task_name

    @property
    def served_model(self) -> str:
        return self.serve.model or self.model_name

    @property
    def experiment_name(self) -> str:
        return self.publish.experiment or f"loopline-{self.task_name}"

    def section(self, name: str) -> dict[str, Any]:
        """One section as plain data (for logging and cache keys)."""
        return self.to_dict()[name]

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def fingerprint(self) -> str:
        """A stable hash of every offline knob: equal params → equal fingerprint.

        `serve`, `schedule` and `monitor` are left out: when and how models are served, run
        or watched never makes a model stale.
        """
        skip = ("serve", "schedule", "monitor")
        offline = {k: v for k, v in self.to_dict().items() if k not in skip}
        text = json.dumps(offline, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def configured(plugin: Any, raw: dict[str, Any]) -> Any:
    """The task bound to its raw section where that section is valid (its default search
    space may follow its settings, say the input lengths a section lists); else the task as
    discovered (the section's errors are reported with every other)."""
    try:
        return plugin.bind(plugin.Settings.model_validate(raw.get(plugin.name) or {}))
    except (ValidationError, ValueError):
        return plugin


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


def describe_error(error: dict[str, Any], plugin: Any = None) -> str:
    where = ".".join(str(p) for p in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        # A key the task's own section took over says where it went.
        moved = plugin.moved_keys.get(where) if plugin is not None else None
        if moved:
            return f"{where}: moved to {plugin.name}.{moved}"
        return f"{where}: unknown key"
    value = error.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"{where}: {error['msg']}{shown}"


SERVE_ENV_PREFIX = "LOOPLINE_SERVE_"


def serve_env_overrides(environ: dict[str, str]) -> list[str]:
    """`LOOPLINE_SERVE_<KEY>=value` variables as `serve.<key>=value` overrides."""
    return [
        f"serve.{key.removeprefix(SERVE_ENV_PREFIX).lower()}={value}"
        for key, value in sorted(environ.items())
        if key.startswith(SERVE_ENV_PREFIX)
    ]


# Resolving the task (`parse_params`, `load_params`, `params_model`) moved to
# `loopline.params`: the one place that binds params to a task (config knows no task).
__getattr__ = forward(
    __name__,
    "loopline.params",
    elsewhere={n: "loopline.params" for n in ("load_params", "parse_params", "params_model")},
)
