"""The offline process as one Prefect flow:

ingest → validate → snapshot → features → labeling → split → tune → train → evaluate →
export → profile → publish.

Run it with `loopline run` (or `make run`). Each task reads its params section and calls one
library function; retries only on stages that do I/O. `_offline` is the table of contents,
its phases follow it; the registry's rules (nothing new, a version's tags, the champion's
move) live in `loopline.offline.publishing`.

Stages are cached by Prefect under keys from `loopline.offline.caching` (data version, their params
section, code version), their results stored in the project's state folder: rerunning after
a crash or a failure reuses what completed. `loopline run --resume <flow-run-id>` re-enters
the same flow run, which also finds its MLflow run (tagged with the flow run id), its batch
(so ingest, validate and snapshot are not redone) and its training checkpoint.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run as flow_run_context
from prefect.states import Completed

from loopline import registry
from loopline.config import Params
from loopline.errors import is_transient
from loopline.offline import batch, caching, datastore, publishing, tracking
from loopline.offline import train as training
from loopline.offline.crossval import Learner
from loopline.offline.evaluate import Evaluation
from loopline.offline.export import Exported, export_model
from loopline.offline.features import FeatureSpec, build_features
from loopline.offline.lineage import git_commit
from loopline.offline.membership import Membership
from loopline.offline.notify import notify, run_summary
from loopline.offline.reference import ReferenceProfile, build_profile
from loopline.offline.split import split_and_fit, split_report, training_view
from loopline.offline.tracking import RunTracker
from loopline.offline.train import TrainResult, train_model
from loopline.offline.transfer import SourceModel, load_source
from loopline.offline.tune import TuneResult, tune_model
from loopline.offline.validate import ValidationReport
from loopline.params import load_params
from loopline.paths import ProjectPaths
from pipelines.progress import note, stage
from pipelines.results import PickleFile
from pipelines.tuning import optuna_storage, tune_on_dask

# ---------------------------------------------------------------------- caching and retries


def _by_stage_key(context, inputs: dict[str, Any]) -> str:
    return inputs["stage_key"]


# A cached stage: its result is persisted under its `stage_key` argument and reused by any
# later run that reaches the same key. It is not also kept in Prefect's in-memory result
# cache, which would hold every stage's frame until the flow ends (measured on 1M rows:
# each stage's frame added 300 MB that was never freed).
CACHED = {"cache_key_fn": _by_stage_key, "persist_result": True, "cache_result_in_memory": False}


def run_stage(stage_task, paths: ProjectPaths, *args, **kwargs):
    """Call a cached stage with the project's result storage; say when it was reused."""
    results = paths.cache / "results"
    state = stage_task.with_options(
        result_storage=results, result_serializer=PickleFile(folder=str(results / "pickles"))
    )(*args, return_state=True, **kwargs)
    if state.name == "Cached":
        note(f"reused: completed earlier with the same key ({kwargs['stage_key']})")
    return state.result()


def _retry_transient(task, task_run, state) -> bool:
    """Retry an I/O stage only for failures a retry can fix (a database or network that is
    briefly away); a missing file or a bad value fails at once with its message."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, BaseException) and is_transient(error)


# Backoff between attempts; deterministic errors are not retried (`_retry_transient`).
IO_RETRIES = {
    "retries": 3,
    "retry_delay_seconds": [2, 10, 30],
    "retry_condition_fn": _retry_transient,
}

# ---------------------------------------------------------------------- stages


@task(name="ingest", **CACHED, **IO_RETRIES)
def ingest(params: Params, paths: ProjectPaths, stage_key: str):
    return batch.new_rows(params, paths)


@task(name="validate", **CACHED)
def validate(
    params: Params, rows, paths: ProjectPaths, tracker: RunTracker, batch_id: str, stage_key: str
) -> ValidationReport:
    return batch.validate_batch(params, rows, paths, batch_id, tracker)


@task(name="snapshot", **CACHED, **IO_RETRIES)
def snapshot(
    params: Params,
    rows,
    report: ValidationReport,
    paths: ProjectPaths,
    batch_id: str,
    stage_key: str,
) -> batch.Committed:
    return batch.commit_batch(params, rows, report, paths, batch_id)


@task(name="features", **CACHED)
def features(params: Params, paths: ProjectPaths, stage_key: str):
    return build_features(params.plugin, batch.snapshot_rows(params, paths), params)


@task(name="labeling", **CACHED)
def labeling(params: Params, frame, spec: FeatureSpec, paths: ProjectPaths, stage_key: str):
    # People's labels are part of the data version (and so of this stage's key).
    return params.plugin.add_labels(frame, spec, batch.human_labels(params, paths))


@task(name="split", **CACHED)
def split(params: Params, frame, spec: FeatureSpec, stage_key: str):
    return split_and_fit(params.plugin, frame, spec, params)


def log_trial(tracker: RunTracker, trial) -> None:
    tracking.record_trial(tracker, trial)
    value = f"{trial.value:.4g}" if trial.value is not None else "-"
    note(
        f"trial {trial.number}: {trial.state.lower():8s} val_loss {value:>8s} "
        f"after {trial.epochs} epochs  {trial.hparams}"
    )


@task(name="record-trials", **CACHED)
def record_trials(result: TuneResult, tracker: RunTracker, stage_key: str) -> TuneResult:
    """Log trials run elsewhere (Dask workers) as nested runs, from the shared study."""
    for trial in result.trials:
        log_trial(tracker, trial)
    tracking.record_tuning(tracker, result)
    return result


@task(name="init-from", cache_policy=NO_CACHE)
def init_from(params: Params, paths: ProjectPaths, scratch: Path) -> SourceModel:
    """The trained model this run starts from (`train.init_from`), pinned: an alias is
    resolved to its version now, so tuning and training read the same weights."""
    return load_source(
        params.train.init_from, paths.tracking_uri(), scratch / "init_from", paths.root
    )


@task(name="tune", **CACHED)
def tune(
    params: Params,
    frame,
    spec: FeatureSpec,
    tracker: RunTracker,
    paths: ProjectPaths,
    stage_key: str,
    source: SourceModel | None = None,
) -> TuneResult:
    # The study lives in the state folder under the stage's key: a search cut off by a crash
    # continues with the trials it lacks (only those are logged again).
    result = tune_model(
        params.plugin,
        frame,
        spec,
        params,
        on_trial=functools.partial(log_trial, tracker),
        storage=optuna_storage(params, paths),
        study_name=stage_key,
        resume=True,
        source=source,
    )
    tracking.record_tuning(tracker, result)
    return result


@task(name="train", **CACHED)
def train(
    params: Params,
    frame,
    spec: FeatureSpec,
    hparams: dict[str, Any],
    tracker: RunTracker,
    paths: ProjectPaths,
    stage_key: str,
    source: SourceModel | None = None,
) -> tuple[TrainResult, FeatureSpec]:
    def log_epoch(epoch) -> None:
        tracking.record_epoch(tracker, epoch)
        note(
            f"epoch {epoch.epoch:3d}/{params.train.max_epochs}  train {epoch.train_loss:.4f}"
            f"  val {epoch.val_loss:.4f}"
        )

    # Saved after every epoch: a killed run resumes training after its last saved epoch.
    checkpoint = paths.cache / "checkpoints" / f"{stage_key}.pt"
    result, spec = train_model(
        params.plugin, frame, spec, hparams, params, log_epoch, checkpoint, source
    )
    checkpoint.unlink(missing_ok=True)  # the stage's result is cached from here on
    return result, spec


@task(name="record-training", cache_policy=NO_CACHE, **IO_RETRIES)
def record_training(
    params: Params,
    result: TrainResult,
    spec: FeatureSpec,
    tracker: RunTracker,
    scratch: Path,
    source: SourceModel | None = None,
) -> None:
    """What this MLflow run shows of its training, whether the train stage ran now or was
    reused from an earlier run with the same key."""
    mode = params.train.transfer.mode
    if result.started is not None:
        started = result.started
        note(
            f"started from {source.resolved}: copied {', '.join(started.copied) or 'nothing'}"
            + (f"; fresh {', '.join(started.fresh)} ({started.reason})" if started.fresh else "")
            + f"; fine-tuning: {mode}"
        )
    title = f"{params.task_name}: learning curves"
    training.record_training(tracker, result, spec, scratch, title, mode)


@task(name="evaluate", **CACHED)
def evaluate(
    params: Params,
    frame,
    spec: FeatureSpec,
    result: TrainResult,
    tracker: RunTracker,
    scratch: Path,
    snapshots: Path,
    stage_key: str,
) -> Evaluation:
    return publishing.score_against_champion(
        params.plugin,
        frame,
        spec,
        result.model,
        params,
        tracker,
        scratch,
        snapshots,
        Learner(result.hparams, result.best_epoch),
        on_fold=_note_fold,
    )


def _note_fold(number: int, of: int, scores: dict[str, float]) -> None:
    shown = "  ".join(f"{name} {value:.4g}" for name, value in scores.items())
    note(f"cross-validation fold {number}/{of}: {shown}")


@task(name="export", **CACHED)
def export(
    params: Params, frame, spec: FeatureSpec, result: TrainResult, scratch: Path, stage_key: str
) -> Exported:
    return export_model(params.plugin, frame, spec, result.model, params.export, scratch)


@task(name="profile", **CACHED)
def profile(params: Params, frame, candidate: Exported, stage_key: str) -> ReferenceProfile:
    return build_profile(
        params.plugin,
        frame,
        candidate.spec,
        candidate.onnx_model,
        params.monitor.reference_rows,
        params.monitor.max_columns,
    )


# Not cached but idempotent per pipeline run (see `publishing.publish`).
@task(name="publish", cache_policy=NO_CACHE, **IO_RETRIES)
def publish(
    params: Params,
    candidate: Exported,
    evaluation: Evaluation,
    lineage: dict[str, str],
    tracker: RunTracker,
    scratch: Path,
    reference: ReferenceProfile | None = None,
    membership: Membership | None = None,
) -> tuple[registry.Published, dict | None]:
    return publishing.publish(
        tracker,
        params.model_name,
        candidate,
        evaluation,
        params.to_dict(),
        lineage,
        scratch,
        reference,
        membership,
    )


# ---------------------------------------------------------------------- the flow


def _notify(flow, flow_run, state) -> None:
    """Flow hook: summarise a failed run, or one that had nothing new to do."""
    if state.is_completed() and state.name != "Nothing new":
        return
    root = (flow_run.parameters or {}).get("root", ".")
    paths = ProjectPaths.at(root)
    try:
        webhook = load_params(paths.params_file, flow_run.parameters.get("overrides"))
        webhook_url = webhook.schedule.webhook_url
    except Exception:  # the params may be what failed; still log the summary
        webhook_url = None
    notify(
        run_summary(
            flow_run.name, state.name, state.message, str(paths.root), paths.tracking_uri()
        ),
        webhook_url,
    )


@flow(
    name="loopline-offline",
    log_prints=False,
    validate_parameters=False,
    on_failure=[_notify],
    on_completion=[_notify],
)
def offline_flow(
    root: str = ".", overrides: list[str] | None = None, trigger: str | None = None
) -> dict[str, Any]:
    """Run the whole offline process on the project at `root`; return a summary. `trigger`
    says why the run started (a monitoring alarm, say): it is tagged on the run and the
    version, and written into the champion history if the run moves the champion."""
    paths = ProjectPaths.at(root)
    params = load_params(paths.params_file, overrides)
    with datastore.hold_project(paths.run_lock):
        return _offline(paths, params, trigger)


def _offline(paths: ProjectPaths, params: Params, trigger: str | None) -> dict | Completed:
    run = open_run(paths, params, trigger)
    try:
        committed = take_in_data(run)
        version, lineage = record_lineage(run, committed)
        source, lineage = starting_model(run, lineage)
        pinned = source.resolved if source else None
        # The pinned source counts too: a moved alias means something new to start from.
        done = publishing.nothing_new(
            paths.tracking_uri(), params.model_name, version, params.fingerprint(), pinned
        )
        if done is not None:
            return finish_nothing_new(run, committed, done)
        keys = caching.stage_keys(params, version, pinned)
        frame, training_rows, spec, membership = prepare_examples(run, keys)
        result, spec = train_candidate(run, training_rows, spec, keys, source)
        evaluation = evaluate_candidate(run, frame, spec, result, keys)
        candidate = export_candidate(run, training_rows, spec, result, keys)
        reference = profile_candidate(run, frame, candidate, keys)
        published = Candidate(candidate, evaluation, reference, membership)
        return finish_published(run, committed, published, lineage)
    except BaseException:
        tracking.end_pipeline_run(run.tracker, "failed")
        raise


# ---------------------------------------------------------------------- the flow's phases


@dataclass(frozen=True)
class Run:
    """What every phase of one pipeline run shares."""

    paths: ProjectPaths
    params: Params
    tracker: RunTracker
    batch_id: str
    scratch: Path  # the run's working folder
    code: tuple[str, bool]  # (git commit, dirty) when the run started
    trigger: str | None = None  # why it started, when something said (an alarm)

    def summary(self, committed: batch.Committed, **more: Any) -> dict[str, Any]:
        return {
            "run_id": self.tracker.run_id,
            "task": self.params.task_name,
            "tracking_uri": self.paths.tracking_uri(),
            "data_version": committed.data_version,
            "new_rows": committed.commit.rows,
            **more,
        }


def open_run(paths: ProjectPaths, params: Params, trigger: str | None = None) -> Run:
    """Start the pipeline run, or continue the one a resumed flow run started."""
    code = git_commit(paths.root)  # before this run writes data.dvc and .gitignore
    flow_run_id = str(flow_run_context.id)
    note(f"flow run {flow_run_id}")
    tracker, batch_id, resumed = tracking.open_pipeline_run(
        paths.tracking_uri(),
        params.experiment_name,
        paths.local_artifact_root(),
        params.task_name,
        flow_run_id,
    )
    if resumed:
        note(f"resuming MLflow run {tracker.run_id} (batch {batch_id})")
    tracker.log_params(params.to_dict())
    if trigger:
        note(f"started by: {trigger}")
    scratch = tracking.scratch_dir(paths.runs, tracker.run_id)
    return Run(paths, params, tracker, batch_id, scratch, code, trigger)


def take_in_data(run: Run) -> batch.Committed:
    """Ingest, validate and snapshot this run's batch (keyed on the batch: a resumed run
    does not take its rows in twice)."""
    paths, params, batch_id = run.paths, run.params, run.batch_id
    with stage("ingest", params.ingest.source):
        rows, source_rows = run_stage(
            ingest, paths, params, paths, stage_key=caching.batch_key(batch_id, "ingest")
        )
        skipped = source_rows - len(rows)
        note(
            f"{len(rows)} new rows ({skipped} of the source's {source_rows} at or before the "
            "watermark, skipped)"
        )
    with stage("validate"):
        key = caching.batch_key(batch_id, "validate")
        report = run_stage(
            validate, paths, params, rows, paths, run.tracker, batch_id, stage_key=key
        )
        note(f"{len(report.good)} good, {len(report.bad)} quarantined")
    with stage("snapshot"):
        key = caching.batch_key(batch_id, "snapshot")
        committed = run_stage(snapshot, paths, params, rows, report, paths, batch_id, stage_key=key)
        note(
            f"{committed.commit.rows} rows added, {committed.commit.total_rows} in snapshot; "
            f"data version {committed.data_version}"
        )
    return committed


def record_lineage(run: Run, committed: batch.Committed) -> tuple[str, dict[str, str]]:
    """(the version models are trained from, the lineage tags), set on the pipeline run."""
    params = run.params
    version = batch.training_version(params, run.paths, committed.snapshot_version)
    lineage = tracking.lineage_tags(
        params.task_name, committed.data_version, version, *run.code, params.fingerprint()
    )
    if run.trigger:
        lineage[tracking.TRIGGER_TAG] = run.trigger[:5000]  # (MLflow's tag value limit)
    run.tracker.set_tags(lineage)
    return version, lineage


def starting_model(run: Run, lineage: dict[str, str]) -> tuple[SourceModel | None, dict[str, str]]:
    """The pinned model training starts from (`train.init_from`), if any, and the lineage
    that names it."""
    train_params = run.params.train
    if train_params.transfer.mode != "none" and not train_params.init_from:
        note(
            f"train.transfer.mode is {train_params.transfer.mode} but train.init_from is "
            "not set: training from scratch"
        )
    if not train_params.init_from:
        return None, lineage
    with stage("init from", train_params.init_from):
        source = init_from(run.params, run.paths, run.scratch)
        note(f"starting from {source.resolved}")
    lineage = {**lineage, tracking.INIT_FROM_TAG: source.resolved}
    run.tracker.set_tags(lineage)
    return source, lineage


def prepare_examples(run: Run, keys: dict[str, str]) -> tuple[Any, Any, FeatureSpec, Membership]:
    """(the split frame, the rows training sees, the fitted feature spec, which keys are in
    which set)."""
    paths, params = run.paths, run.params
    with stage("features"):
        frame, spec = run_stage(features, paths, params, paths, stage_key=keys["features"])
    with stage("labeling"):
        frame = run_stage(labeling, paths, params, frame, spec, paths, stage_key=keys["labeling"])
    with stage("split"):
        frame, spec = run_stage(split, paths, params, frame, spec, stage_key=keys["split"])
        report = split_report(params.plugin, frame, spec, params)
        for line in report.lines():
            note(line)
        tracking.record_split(run.tracker, report)
    membership = Membership.of(params.plugin, frame, spec)
    return frame, training_view(params.plugin, frame, spec), spec, membership


def tune_candidates(
    run: Run, rows, spec: FeatureSpec, key: str, source: SourceModel | None
) -> TuneResult:
    """The hyperparameter search, in this process or on Dask (`tune.parallel.engine`)."""
    paths, params = run.paths, run.params
    if params.tune.parallel.engine == "dask":
        searched = tune_on_dask(params, paths, rows, spec, run.scratch, key, source)
        return run_stage(record_trials, paths, searched, run.tracker, stage_key=key)
    return run_stage(
        tune, paths, params, rows, spec, run.tracker, paths, stage_key=key, source=source
    )


def train_candidate(
    run: Run, rows, spec: FeatureSpec, keys: dict[str, str], source: SourceModel | None
) -> tuple[TrainResult, FeatureSpec]:
    """Tune, then train the model with the best hyperparameters, and record its training."""
    paths, params, tracker = run.paths, run.params, run.tracker
    with stage("tune", f"{params.tune.sampler}, {params.tune.n_trials} trials"):
        tuned = tune_candidates(run, rows, spec, keys["tune"], source)
        note(f"best {tuned.best_hparams} (val_loss {tuned.best_value:.4g})")
    with stage("train"):
        result, spec = run_stage(
            train,
            paths,
            params,
            rows,
            spec,
            tuned.best_hparams,
            tracker,
            paths,
            stage_key=keys["train"],
            source=source,
        )
        record_training(params, result, spec, tracker, run.scratch, source)
        note(f"best epoch {result.best_epoch}, val_loss {result.best_val_loss:.4g}")
    return result, spec


def evaluate_candidate(
    run: Run, frame, spec: FeatureSpec, result: TrainResult, keys: dict[str, str]
) -> Evaluation:
    """Score the model beside the baselines and the current champion; the gate decides."""
    paths, params = run.paths, run.params
    with stage("evaluate"):
        champion = registry.champion_version(paths.tracking_uri(), params.model_name)
        key = caching.evaluate_key(
            keys["train"], params, str(champion.version) if champion else None
        )
        snapshots = paths.snapshots(params.task_name)
        evaluation = run_stage(
            evaluate,
            paths,
            params,
            frame,
            spec,
            result,
            run.tracker,
            run.scratch,
            snapshots,
            stage_key=key,
        )
        for line in [*evaluation.headlines(), *evaluation.decision.reasons]:
            note(line)
    return evaluation


def export_candidate(
    run: Run, rows, spec: FeatureSpec, result: TrainResult, keys: dict[str, str]
) -> Exported:
    """The model as ONNX, checked for parity with the trained one."""
    with stage("export"):
        candidate = run_stage(
            export, run.paths, run.params, rows, spec, result, run.scratch, stage_key=keys["export"]
        )
        parity = candidate.parity
        note(f"parity max |diff| {parity.max_abs_diff:.2e} on {parity.rows} rows")
        run.tracker.log_metrics({"parity_max_abs_diff": parity.max_abs_diff})
    return candidate


def profile_candidate(
    run: Run, frame, candidate: Exported, keys: dict[str, str]
) -> ReferenceProfile:
    """What the monitor will compare this model's live predictions with."""
    with stage("profile"):
        key = caching.profile_key(keys["export"], run.params)
        reference = run_stage(profile, run.paths, run.params, frame, candidate, stage_key=key)
        note(
            f"reference profile: {len(reference.features)} inputs, "
            f"{len(reference.predictions)} prediction columns"
            + (
                f", test {reference.quality.name} {reference.quality.figure:.4g}"
                if reference.quality
                else ""
            )
        )
    return reference


@dataclass(frozen=True)
class Candidate:
    """What a run publishes: the exported model, its evaluation, the reference profile the
    monitor reads, and which keys were in which split set."""

    exported: Exported
    evaluation: Evaluation
    reference: ReferenceProfile | None
    membership: Membership


def finish_published(
    run: Run, committed: batch.Committed, made: Candidate, lineage: dict[str, str]
) -> dict[str, Any]:
    """Publish the candidate (the champion moves as the gate decided) and close the run."""
    evaluation = made.evaluation
    with stage("publish"):
        published, moved = publish(
            run.params,
            made.exported,
            evaluation,
            lineage,
            run.tracker,
            run.scratch,
            made.reference,
            made.membership,
        )
        note(
            f"{published.name} v{published.version} registered as challenger"
            + ("; now champion" if moved else "; champion unchanged")
        )
    tracking.end_pipeline_run(
        run.tracker, "published", {"loopline.model_version": published.version}
    )
    return run.summary(
        committed,
        status="published",
        version=published.version,
        promoted=bool(moved),
        metrics=evaluation.metrics(),
        decision=evaluation.decision.to_dict(),
    )


def finish_nothing_new(run: Run, committed: batch.Committed, done) -> Completed:
    """Close a run that would only repeat version `done`: same data, params and start."""
    params = run.params
    message = (
        f"nothing new: data version {committed.data_version} and params "
        f"{params.fingerprint()} match {params.model_name} v{done.version}; not training"
    )
    note(message)
    tracking.end_pipeline_run(run.tracker, "nothing new", {"loopline.skipped": "true"})
    # A Completed state of its own name and message, so the run history (and a scheduled
    # run's notification) says "nothing new" rather than a bare Completed.
    summary = run.summary(
        committed, status="nothing new", message=message, version=str(done.version)
    )
    return Completed(name="Nothing new", message=message, data=summary)
