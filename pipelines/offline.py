"""The offline process as one Prefect flow:

ingest → validate → snapshot → features → labeling → split → tune → train → evaluate →
export → publish.

Run it with `loopline run` (or `make run`). Each task reads its params section and calls one
library function; retries only on stages that do I/O.

Stages are cached by Prefect under keys from `loopline.caching` (data version, their params
section, code version), their results stored in the project's state folder: rerunning after
a crash or a failure reuses what completed. `loopline run --resume <flow-run-id>` re-enters
the same flow run, which also finds its MLflow run (tagged with the flow run id), its batch
(so ingest, validate and snapshot are not redone) and its training checkpoint.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run as flow_run_context
from prefect.states import Completed

from loopline import caching, datastore, registry
from loopline.config import Params, load_params
from loopline.errors import is_transient
from loopline.evaluate import Evaluation
from loopline.export import SPEC_KEY, export_and_check
from loopline.features import FeatureSpec, build_features
from loopline.human_labels import LabelStore
from loopline.ingest import batch_watermarks, fetch_new_rows, untimed_fingerprints
from loopline.lineage import git_commit
from loopline.notify import notify, run_summary
from loopline.paths import ProjectPaths
from loopline.split import split_and_fit, training_view
from loopline.tracking import RunTracker, lineage_tags, scratch_dir
from loopline.train import TrainResult, plot_learning_curves, save_checkpoint, train_model
from loopline.transfer import SourceModel, load_source
from loopline.tune import TuneResult, tune_model
from loopline.validate import ValidationReport, check_bad_fraction, validate_rows
from pipelines.progress import note, stage
from pipelines.tuning import optuna_storage, tune_on_dask


def _by_stage_key(context, inputs: dict[str, Any]) -> str:
    return inputs["stage_key"]


# A cached stage: its result is persisted under its `stage_key` argument and reused by any
# later run that reaches the same key.
CACHED = {"cache_key_fn": _by_stage_key, "persist_result": True}


def run_stage(stage_task, paths: ProjectPaths, *args, **kwargs):
    """Call a cached stage with the project's result storage; say when it was reused."""
    state = stage_task.with_options(result_storage=paths.cache / "results")(
        *args, return_state=True, **kwargs
    )
    if state.name == "Cached":
        note(f"reused: completed earlier with the same key ({kwargs['stage_key']})")
    return state.result()


FLOW_RUN_TAG = "loopline.flow_run_id"  # the Prefect flow run an MLflow pipeline run belongs to
BATCH_TAG = "loopline.batch_id"


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


@task(name="ingest", **CACHED, **IO_RETRIES)
def ingest(params: Params, paths: ProjectPaths, stage_key: str):
    plugin = params.plugin
    store = datastore.SnapshotStore(paths.snapshots(params.task_name))
    # A source without times has no watermark: its rows already in the snapshot are known
    # by key instead.
    known = store.known_keys(plugin.key_columns) if plugin.time_column is None else set()
    return fetch_new_rows(
        params, plugin, paths.root, store.watermarks(), store.untimed_quarantined(), known
    )


@task(name="validate", **CACHED)
def validate(
    params: Params, rows, paths: ProjectPaths, tracker: RunTracker, batch_id: str, stage_key: str
) -> ValidationReport:
    plugin = params.plugin
    report = validate_rows(
        rows, plugin.schema_for(params), plugin.rules(params), suite_name=params.task_name
    )
    where = datastore.write_quarantine(report.bad, paths.quarantine / params.task_name, batch_id)
    tracker.log_dict(
        {**report.summary(), "quarantine": str(where) if where else None}, "validation/summary.json"
    )
    tracker.log_metrics(
        {
            "validate_rows": report.total,
            "validate_bad_rows": len(report.bad),
            "validate_bad_fraction": report.bad_fraction,
        }
    )
    if where is not None:
        tracker.log_file(where, "validation")
    check_bad_fraction(report, params.validate_.max_bad_fraction, str(where))
    return report


@task(name="snapshot", **CACHED, **IO_RETRIES)
def snapshot(
    params: Params,
    rows,
    report: ValidationReport,
    paths: ProjectPaths,
    batch_id: str,
    stage_key: str,
) -> tuple[datastore.Commit, str, str]:
    plugin = params.plugin
    store = datastore.SnapshotStore(paths.snapshots(params.task_name))
    info = {
        "batch_id": batch_id,
        "quarantined": len(report.bad),
        "untimed_quarantined": untimed_fingerprints(report.bad, plugin),
        "source": params.ingest.source,
    }
    commit = store.commit(report.good, batch_watermarks(rows, plugin), info)
    datastore.ensure_dvc_repo(paths.root, paths.dvc_remote)
    return commit, datastore.track_data(paths.root, paths.data), store.version()


@task(name="features", **CACHED)
def features(params: Params, paths: ProjectPaths, stage_key: str):
    plugin = params.plugin
    snapshot_rows = datastore.SnapshotStore(paths.snapshots(params.task_name)).load()
    return build_features(plugin, snapshot_rows, params)


@task(name="labeling", **CACHED)
def labeling(params: Params, frame, spec: FeatureSpec, paths: ProjectPaths, stage_key: str):
    # People's labels are part of the data version (and so of this stage's key).
    human = LabelStore(paths.labels(params.task_name)).load()
    return params.plugin.add_labels(frame, spec, human)


@task(name="split", **CACHED)
def split(params: Params, frame, spec: FeatureSpec, stage_key: str):
    return split_and_fit(params.plugin, frame, spec, params)


def log_trial(tracker: RunTracker, trial) -> None:
    child = tracker.child(f"trial-{trial.number}", {"loopline.trial_state": trial.state})
    child.log_params(trial.hparams)
    child.log_metrics({"val_loss": trial.value, "epochs": trial.epochs})
    child.end("FINISHED" if trial.state != "FAIL" else "FAILED")
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
    tracker.log_params({"best": result.best_hparams})
    tracker.log_metrics({"tune_best_val_loss": result.best_value})
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
        on_trial=lambda t: log_trial(tracker, t),
        storage=optuna_storage(params, paths),
        study_name=stage_key,
        resume=True,
        source=source,
    )
    tracker.log_params({"best": result.best_hparams})
    tracker.log_metrics({"tune_best_val_loss": result.best_value})
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
        tracker.log_metrics(
            {"train_loss": epoch.train_loss, "val_loss": epoch.val_loss}, step=epoch.epoch
        )
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
    reused from an earlier run with the same key: curves, summary, weights, provenance."""
    if not tracker.client.get_metric_history(tracker.run_id, "train_loss"):
        for epoch in result.history:  # reused: the epochs were logged to another run
            tracker.log_metrics(
                {"train_loss": epoch.train_loss, "val_loss": epoch.val_loss}, step=epoch.epoch
            )
    if result.started is not None:
        started = result.started
        note(
            f"started from {source.resolved}: copied {', '.join(started.copied) or 'nothing'}"
            + (f"; fresh {', '.join(started.fresh)} ({started.reason})" if started.fresh else "")
            + f"; fine-tuning: {params.train.transfer.mode}"
        )
        tracker.set_tags(
            {
                "loopline.transfer.copied": ",".join(started.copied),
                "loopline.transfer.fresh": ",".join(started.fresh),
                "loopline.transfer.mode": params.train.transfer.mode,
            }
        )
    tracker.log_metrics(
        {
            "best_epoch": result.best_epoch,
            "best_val_loss": result.best_val_loss,
            "epochs_run": len(result.history),
            "overfitting_onset_epoch": result.overfitting_onset or 0,
        }
    )
    curves = plot_learning_curves(
        result, scratch / "learning_curves.png", f"{params.task_name}: learning curves"
    )
    tracker.log_figure_file(curves)
    # The PyTorch weights travel with every run: parity can be re-checked and later runs
    # can start from them (`train.init_from`).
    tracker.log_file(save_checkpoint(result, spec, scratch / "model.pt"), "torch")


@task(name="evaluate", **CACHED)
def evaluate(
    params: Params,
    frame,
    spec: FeatureSpec,
    result: TrainResult,
    paths: ProjectPaths,
    tracker: RunTracker,
    scratch: Path,
    stage_key: str,
) -> Evaluation:
    plugin = params.plugin
    champion = registry.load_champion(paths.tracking_uri(), params.model_name, scratch / "champ")
    champion_model = (champion[0], champion[1]) if champion else None
    evaluation = plugin.evaluate(frame, spec, result.model, params, champion_model)
    tracker.log_metrics(evaluation.metrics())
    for report in plugin.evaluation_report(evaluation, frame, spec, result.model, params, scratch):
        tracker.log_file(report, "plots" if report.suffix == ".png" else "evaluation")
    tracker.log_dict(
        {
            "decision": evaluation.decision.to_dict(),
            "champion_version": champion[2].version if champion else None,
            "scores": {k: v.to_dict() for k, v in evaluation.scores.items()},
        },
        "evaluation/decision.json",
    )
    return evaluation


@task(name="export", **CACHED)
def export(
    params: Params, frame, spec: FeatureSpec, result: TrainResult, scratch: Path, stage_key: str
):
    # The golden batch comes from validation examples: the test set is evaluate's alone.
    golden = params.plugin.examples(frame, spec, "val").x[: params.export.golden_batch]
    path = scratch / "model.onnx"
    parity = export_and_check(
        result.model,
        golden,
        path,
        {SPEC_KEY: spec.to_json()},
        params.export.parity_atol,
        params.export.parity_rtol,
    )
    # The model's bytes, not its path: a cached export outlives the run folder it was made in.
    return path.read_bytes(), parity, golden


# Not cached but idempotent per pipeline run: a resumed run that registered its version
# before the crash completes that version (tags, the gate) rather than registering another.
@task(name="publish", cache_policy=NO_CACHE, **IO_RETRIES)
def publish(
    params: Params,
    paths: ProjectPaths,
    onnx_model: bytes,
    spec: FeatureSpec,
    golden,
    evaluation: Evaluation,
    lineage: dict[str, str],
    tracker: RunTracker,
    scratch: Path,
) -> tuple[registry.Published, dict | None]:
    from mlflow.models import infer_signature

    from loopline.export import onnx_session, run_onnx

    onnx_path = scratch / "model.onnx"
    onnx_path.write_bytes(onnx_model)
    golden_out = run_onnx(onnx_session(onnx_path), golden)
    signature = infer_signature(golden, golden_out)
    files = registry.write_model_files(scratch, spec, params.to_dict(), golden, golden_out)
    metrics = evaluation.metrics()
    tags = {
        **lineage,
        "loopline.pipeline_run_id": tracker.run_id,
        "loopline.params": json.dumps(params.to_dict(), separators=(",", ":"))[:5000],
        "loopline.gate": "promote" if evaluation.decision.promote else "hold",
        **{f"loopline.metric.{k}": f"{v:.6g}" for k, v in metrics.items()},
    }
    published = registry.log_onnx_model(
        paths.tracking_uri(),
        tracker.run_id,
        onnx_path,
        params.model_name,
        files,
        metadata={"feature_spec": json.loads(spec.to_json()), **lineage},
        signature=signature,
        tags=tags,
    )
    moved = None
    champion = registry.champion_version(paths.tracking_uri(), params.model_name)
    already = champion is not None and str(champion.version) == published.version
    if already:  # promoted before the crash this run resumes from
        moved = {"to": published.version, "already": True}
    elif evaluation.decision.promote:
        moved = registry.move_champion(
            paths.tracking_uri(),
            params.model_name,
            published.version,
            reason="; ".join(evaluation.decision.reasons),
            who=f"pipeline run {tracker.run_id}",
        )
    registry.mark_published(paths.tracking_uri(), published)
    return published, moved


def nothing_new(
    paths: ProjectPaths, params: Params, snapshot_version: str, init_from: str | None = None
) -> Any | None:
    """The version already published from this snapshot with these params (and started
    from the same pinned model, `init_from`), if any.

    Only a fully published version counts: one whose publish step was cut off before the gate
    was carried out is trained again, so the gate's decision is never lost.
    """
    latest = registry.latest_version(paths.tracking_uri(), params.model_name)
    if latest is None:
        return None
    tags = latest.tags or {}
    same = (
        tags.get(registry.PUBLISH_COMPLETE) == "true"
        and tags.get("loopline.snapshot_version") == snapshot_version
        and tags.get("loopline.params_hash") == params.fingerprint()
        and tags.get("loopline.init_from") == init_from
    )
    return latest if same else None


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
def offline_flow(root: str = ".", overrides: list[str] | None = None) -> dict[str, Any]:
    """Run the whole offline process on the project at `root`; return a summary."""
    paths = ProjectPaths.at(root)
    params = load_params(paths.params_file, overrides)
    with datastore.hold_project(paths.run_lock):
        return _offline(paths, params)


def _offline(paths: ProjectPaths, params: Params) -> dict[str, Any] | Completed:
    commit, dirty = git_commit(paths.root)
    flow_run_id = str(flow_run_context.id)
    note(f"flow run {flow_run_id}")
    # A resumed flow run continues its own MLflow run and batch.
    tracker = RunTracker.reopen(
        paths.tracking_uri(), params.experiment_name, FLOW_RUN_TAG, flow_run_id
    )
    if tracker is not None:
        batch_id = tracker.tags()[BATCH_TAG]
        note(f"resuming MLflow run {tracker.run_id} (batch {batch_id})")
    else:
        batch_id = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
        tracker = RunTracker.start(
            paths.tracking_uri(),
            params.experiment_name,
            paths.local_artifact_root(),
            run_name=f"offline-{batch_id}",
            tags={
                "loopline.task": params.task_name,
                FLOW_RUN_TAG: flow_run_id,
                BATCH_TAG: batch_id,
            },
        )
    scratch = scratch_dir(paths.runs, tracker.run_id)
    tracker.log_params(params.to_dict())
    summary: dict[str, Any] = {
        "run_id": tracker.run_id,
        "task": params.task_name,
        "tracking_uri": paths.tracking_uri(),
    }
    try:
        with stage("ingest", params.ingest.source):
            rows, source_rows = run_stage(
                ingest, paths, params, paths, stage_key=caching.batch_key(batch_id, "ingest")
            )
            note(
                f"{len(rows)} new rows ({source_rows - len(rows)} of the source's {source_rows} "
                "at or before the watermark, skipped)"
            )
        with stage("validate"):
            report = run_stage(
                validate,
                paths,
                params,
                rows,
                paths,
                tracker,
                batch_id,
                stage_key=caching.batch_key(batch_id, "validate"),
            )
            note(f"{len(report.good)} good, {len(report.bad)} quarantined")
        with stage("snapshot"):
            committed, data_version, snapshot_version = run_stage(
                snapshot,
                paths,
                params,
                rows,
                report,
                paths,
                batch_id,
                stage_key=caching.batch_key(batch_id, "snapshot"),
            )
            note(
                f"{committed.rows} rows added, {committed.total_rows} in snapshot; "
                f"data version {data_version}"
            )
        # People's labels (`loopline label import`) are data too: new labels, new version.
        labels_version = LabelStore(paths.labels(params.task_name)).version()
        if labels_version is not None:
            snapshot_version = f"{snapshot_version}+labels-{labels_version}"
        lineage = lineage_tags(
            params.task_name, data_version, snapshot_version, commit, dirty, params.fingerprint()
        )
        tracker.set_tags(lineage)
        summary.update(data_version=data_version, new_rows=committed.rows)
        source = None
        if params.train.transfer.mode != "none" and not params.train.init_from:
            note(
                f"train.transfer.mode is {params.train.transfer.mode} but train.init_from is "
                "not set: training from scratch"
            )
        if params.train.init_from:
            with stage("init from", params.train.init_from):
                source = init_from(params, paths, scratch)
                note(f"starting from {source.resolved}")
            lineage = {**lineage, "loopline.init_from": source.resolved}
            tracker.set_tags(lineage)
        # The pinned source counts too: a moved alias means something new to start from.
        done = nothing_new(paths, params, snapshot_version, source.resolved if source else None)
        if done is not None:
            message = (
                f"nothing new: data version {data_version} and params "
                f"{params.fingerprint()} match {params.model_name} v{done.version}; "
                "not training"
            )
            note(message)
            tracker.set_tags({"loopline.outcome": "nothing new", "loopline.skipped": "true"})
            tracker.end()
            # A Completed state of its own name and message, so the run history (and a
            # scheduled run's notification) says "nothing new" rather than a bare Completed.
            return Completed(
                name="Nothing new",
                message=message,
                data={
                    **summary,
                    "status": "nothing new",
                    "message": message,
                    "version": str(done.version),
                },
            )
        keys = caching.stage_keys(params, snapshot_version, source.resolved if source else None)
        with stage("features"):
            frame, spec = run_stage(features, paths, params, paths, stage_key=keys["features"])
        with stage("labeling"):
            frame = run_stage(
                labeling, paths, params, frame, spec, paths, stage_key=keys["labeling"]
            )
        with stage("split"):
            frame, spec = run_stage(split, paths, params, frame, spec, stage_key=keys["split"])
            counts = frame["split"].value_counts().to_dict()
            note(f"rows per set: {counts}")
            plugin = params.plugin
            training_rows = training_view(plugin, frame, spec)
        with stage("tune", f"{params.tune.sampler}, {params.tune.n_trials} trials"):
            if params.tune.parallel.engine == "dask":
                tuned = run_stage(
                    record_trials,
                    paths,
                    tune_on_dask(params, paths, training_rows, spec, scratch, keys["tune"], source),
                    tracker,
                    stage_key=keys["tune"],
                )
            else:
                tuned = run_stage(
                    tune,
                    paths,
                    params,
                    training_rows,
                    spec,
                    tracker,
                    paths,
                    stage_key=keys["tune"],
                    source=source,
                )
            note(f"best {tuned.best_hparams} (val_loss {tuned.best_value:.4g})")
        with stage("train"):
            result, spec = run_stage(
                train,
                paths,
                params,
                training_rows,
                spec,
                tuned.best_hparams,
                tracker,
                paths,
                stage_key=keys["train"],
                source=source,
            )
            record_training(params, result, spec, tracker, scratch, source)
            note(f"best epoch {result.best_epoch}, val_loss {result.best_val_loss:.4g}")
        with stage("evaluate"):
            champion = registry.champion_version(paths.tracking_uri(), params.model_name)
            evaluation = run_stage(
                evaluate,
                paths,
                params,
                frame,
                spec,
                result,
                paths,
                tracker,
                scratch,
                stage_key=caching.evaluate_key(
                    keys["train"], params, str(champion.version) if champion else None
                ),
            )
            for line in evaluation.headlines():
                note(line)
            for reason in evaluation.decision.reasons:
                note(reason)
        with stage("export"):
            onnx_model, parity, golden = run_stage(
                export,
                paths,
                params,
                training_rows,
                spec,
                result,
                scratch,
                stage_key=keys["export"],
            )
            note(f"parity max |diff| {parity.max_abs_diff:.2e} on {parity.rows} rows")
            tracker.log_metrics({"parity_max_abs_diff": parity.max_abs_diff})
        with stage("publish"):
            published, moved = publish(
                params, paths, onnx_model, spec, golden, evaluation, lineage, tracker, scratch
            )
            note(
                f"{published.name} v{published.version} registered as challenger"
                + ("; now champion" if moved else "; champion unchanged")
            )
        tracker.set_tags(
            {"loopline.outcome": "published", "loopline.model_version": published.version}
        )
        tracker.end()
        return {
            **summary,
            "status": "published",
            "version": published.version,
            "promoted": bool(moved),
            "metrics": evaluation.metrics(),
            "decision": evaluation.decision.to_dict(),
        }
    except BaseException:
        tracker.set_tags({"loopline.outcome": "failed"})
        tracker.end("FAILED")
        raise
