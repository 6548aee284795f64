"""Tune: hyperparameter search with Optuna, the notes' grid search, random search and
meta-learner (TPE), pruning trials whose validation loss lags behind.

The objective is given by the caller (it trains one model and reports validation loss per
epoch); this module only owns the search: samplers, the search space and pruning. A search
may choose the algorithm too: a task's categorical hyperparameter (say, `algorithm`) lets
its `build_model` return a gradient-trained module or one that fits itself
(`train.FitsItself`); both report the same validation loss, so the trials compare.
"""

from __future__ import annotations

import itertools
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from loopline.config import Dimension, TuneParams
from loopline.offline.train import fit, initial_model
from loopline.offline.transfer import check_task, fixed_hparams


@dataclass
class TrialRecord:
    number: int
    hparams: dict[str, Any]
    value: float | None
    state: str  # COMPLETE, PRUNED or FAIL
    epochs: int


@dataclass
class TuneResult:
    best_hparams: dict[str, Any]
    best_value: float
    trials: list[TrialRecord]


class Reporter:
    """Handed to the objective: report a validation loss per epoch; raises when pruned."""

    def __init__(self, trial: Any) -> None:
        self._trial = trial
        self.epochs = 0

    def __call__(self, epoch: int, val_loss: float) -> None:
        import optuna

        self.epochs = epoch
        self._trial.report(val_loss, step=epoch)
        if self._trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch} (validation loss {val_loss:.4g})")


def grid_values(dimension: Dimension, points: int) -> list[Any]:
    """The grid sampler's values for one axis: its choices, or `points` spread over a range."""
    if dimension.choices is not None:
        return list(dimension.choices)
    assert dimension.low is not None and dimension.high is not None
    if dimension.log:
        values = np.geomspace(dimension.low, dimension.high, points)
    else:
        values = np.linspace(dimension.low, dimension.high, points)
    if dimension.integer:
        return sorted({round(float(v)) for v in values})
    return [float(v) for v in values]


def suggest(trial: Any, name: str, dimension: Dimension) -> Any:
    if dimension.choices is not None:
        return trial.suggest_categorical(name, dimension.choices)
    assert dimension.low is not None and dimension.high is not None
    if dimension.integer:
        return trial.suggest_int(name, int(dimension.low), int(dimension.high), log=dimension.log)
    return trial.suggest_float(name, dimension.low, dimension.high, log=dimension.log)


def make_sampler(params: TuneParams, seed: int) -> Any:
    import optuna

    if params.sampler == "grid":
        space = {k: grid_values(v, params.grid_points) for k, v in params.search_space.items()}
        return optuna.samplers.GridSampler(space, seed=seed)
    if params.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(4, params.n_trials))


def run_study(
    objective: Callable[[dict[str, Any], Reporter], float],
    params: TuneParams,
    seed: int,
    on_trial: Callable[[TrialRecord], None] | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    resume: bool = False,
    fixed: dict[str, Any] | None = None,
) -> TuneResult:
    """Search `params.search_space` for the hyperparameters minimising `objective`.

    `objective(hparams, report)` trains one model and returns its best validation loss,
    calling `report(epoch, val_loss)` each epoch so hopeless trials are pruned early.
    With `resume`, a study already in `storage` (a search cut off by a crash) runs only the
    trials it still lacks, and the result covers all of its trials. With `fixed`, the trial
    runs those hyperparameters (one point of a grid shared out between workers).
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("optuna").setLevel(logging.WARNING)
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2)
        if params.pruning
        else optuna.pruners.NopPruner()
    )
    sampler = make_sampler(params, seed)
    if fixed is not None:
        with warnings.catch_warnings():  # experimental in name only: stable since Optuna 2.4
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.PartialFixedSampler(
                fixed, optuna.samplers.RandomSampler(seed)
            )
    study = optuna.create_study(
        direction="minimize",
        sampler=sampler,
        pruner=pruner,
        storage=storage,
        study_name=study_name,
        load_if_exists=storage is not None,
    )
    records: list[TrialRecord] = []

    def run_trial(trial: Any) -> float:
        hparams = {name: suggest(trial, name, dim) for name, dim in params.search_space.items()}
        reporter = Reporter(trial)
        state, value = "FAIL", None
        try:
            value = float(objective(hparams, reporter))
            state = "COMPLETE"
            return value
        except optuna.TrialPruned:
            state = "PRUNED"
            raise
        finally:
            record = TrialRecord(trial.number, hparams, value, state, reporter.epochs)
            records.append(record)
            if on_trial is not None:
                on_trial(record)

    n_trials = params.n_trials
    if resume:
        n_trials = max(0, n_trials - finished_trials(study))
    if n_trials:
        study.optimize(run_trial, n_trials=n_trials, catch=())
    if resume:
        return result_of(study)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise RuntimeError("no tuning trial completed; widen tune.search_space or n_trials")
    best = study.best_trial
    return TuneResult(dict(best.params), float(best.value), records)


def create_shared_study(storage: str, study_name: str) -> list[dict[str, Any]]:
    """Create the study (and the storage's tables) once, before parallel workers load it:
    workers creating a fresh storage at the same time race on its schema. Returns the
    hyperparameters of the trials it has already finished (a search resumed after a crash)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="minimize", storage=storage, study_name=study_name, load_if_exists=True
    )
    return [dict(t.params) for t in study.trials if t.state.is_finished()]


def search_for(params: TuneParams, task, source=None) -> TuneParams:
    """The search as configured, or, starting from `source` (`transfer.SourceModel`), with
    the architecture axes fixed to the source's shape: those trials would all be the same
    model, and the best hyperparameters report the shape that is trained."""
    if source is None:
        return params

    check_task(source, task.name)  # a clear error before any trial
    shape = fixed_hparams({}, source, task.architecture)
    fixed = {k: Dimension(choices=[v]) for k, v in shape.items()}
    return params.model_copy(update={"search_space": {**params.search_space, **fixed}})


def grid_points(params: TuneParams) -> list[dict[str, Any]]:
    """The grid's first `n_trials` points, in a fixed order.

    A parallel grid search hands point i to task i: workers asking a shared grid sampler at
    the same moment can be handed the same point (and Optuna's queue of enqueued trials is
    not atomic on SQLite), so some points would run twice and others never."""
    axes = {k: grid_values(v, params.grid_points) for k, v in params.search_space.items()}
    points = itertools.product(*axes.values())
    return [
        dict(zip(axes, values, strict=True)) for values in itertools.islice(points, params.n_trials)
    ]


def finished_trials(study: Any) -> int:
    """Trials that ran to an end; one left RUNNING by a killed process does not count."""
    return sum(1 for t in study.trials if t.state.is_finished())


def study_result(storage: str, study_name: str) -> TuneResult:
    """The search's outcome read back from the shared store (after parallel workers)."""
    import optuna

    return result_of(optuna.load_study(study_name=study_name, storage=storage))


def result_of(study: Any) -> TuneResult:
    """Every finished trial of a study and its best, as a TuneResult."""
    records = []
    for trial in sorted(study.trials, key=lambda t: t.number):
        if not trial.state.is_finished():
            continue
        records.append(
            TrialRecord(
                trial.number,
                dict(trial.params),
                float(trial.value) if trial.value is not None else None,
                trial.state.name if trial.state.name in ("COMPLETE", "PRUNED") else "FAIL",
                int(max(trial.intermediate_values, default=0)),
            )
        )
    complete = [r for r in records if r.state == "COMPLETE"]
    if not complete:
        raise RuntimeError("no tuning trial completed; widen tune.search_space or n_trials")
    best = min(complete, key=lambda r: r.value)
    return TuneResult(best.hparams, float(best.value), records)


def trials_on_a_cluster(params):
    """The params a trial run by a cluster's worker trains with: one process. The trials are
    that search's parallelism, and a trial holding its worker while it waits for a training
    group of other workers could wait on trials that wait for it."""
    return params.model_copy(update={"train": params.train.model_copy(update={"processes": 1})})


def tune_model(
    task,
    frame,
    spec,
    params,
    on_trial=None,
    on_epoch=None,
    storage: str | None = None,
    study_name: str | None = None,
    n_trials: int | None = None,
    worker: int = 0,
    cache: dict[str, tuple] | None = None,
    resume: bool = False,
    fixed: dict[str, Any] | None = None,
    source=None,
) -> TuneResult:
    """Search hyperparameters on the training and validation examples of `frame`.

    With `source` (`transfer.SourceModel`), every trial starts from that model, whose
    shape fixes the architecture axes: the search covers the rest.

    With `storage` and `study_name`, this is one of several workers sharing one study (a
    database every worker reaches): it runs `n_trials` of them, its sampler seeded by
    `seed + worker` so parallel workers do not propose the same trials.
    """
    import numpy as np

    # Examples are built once per input spec (a hyperparameter may change what the spec
    # reads, say how many past rows); a caller running many searches on the same rows (a
    # Dask worker running one trial per task) passes its own `cache` to keep them.
    cache = {} if cache is None else cache
    limit = params.tune.max_train_rows

    def examples(trial_spec):
        key = trial_spec.to_json()
        if key not in cache:
            train = task.examples(frame, trial_spec, "train")
            if limit is not None and len(train) > limit:
                # A seeded sample, the same for every trial: trials stay comparable.
                pick = np.random.default_rng(params.seed).choice(len(train), limit, replace=False)
                train = train.take(np.sort(pick))
            cache[key] = (train, task.examples(frame, trial_spec, "val"))
        return cache[key]

    def objective(hparams: dict[str, Any], report: Reporter) -> float:
        # Every trial starts from the same RNG state (and, transferring, the same weights).
        start = initial_model(task, spec, hparams, params, source)
        trial_spec, hparams = start.spec, start.hparams
        train, val = examples(trial_spec)

        def each_epoch(record):
            if on_epoch is not None:
                on_epoch(record)
            report(record.epoch, record.val_loss)

        result = fit(
            start.model,
            train,
            val,
            trial_spec,
            hparams,
            params.train,
            params.seed,
            max_epochs=params.tune.max_epochs,
            on_epoch=each_epoch,
            fine_tuning=start.fine_tuning,
            augment=task.augmentation(trial_spec),
        )
        return result.best_val_loss

    tune_params = search_for(params.tune, task, source)
    if n_trials is not None:
        tune_params = tune_params.model_copy(update={"n_trials": n_trials})
    return run_study(
        objective,
        tune_params,
        params.seed + worker,
        on_trial=on_trial,
        storage=storage,
        study_name=study_name,
        resume=resume,
        fixed=fixed,
    )
