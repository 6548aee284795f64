"""Tracking: log one pipeline run (and its nested trial runs) to MLflow by explicit run id.

Logging by id rather than through MLflow's thread-local "active run" keeps it correct
whichever thread or process an orchestrator runs a step in.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loopline.registry import TAG, client, ensure_experiment

FLOW_RUN_TAG = f"{TAG}flow_run_id"  # the orchestrator's run a pipeline run belongs to
BATCH_TAG = f"{TAG}batch_id"
OUTCOME_TAG = f"{TAG}outcome"  # "published", "nothing new" or "failed"
# Lineage: what a model was made from (see `lineage_tags`), on runs and published versions.
SNAPSHOT_TAG = f"{TAG}snapshot_version"
PARAMS_HASH_TAG = f"{TAG}params_hash"
# Why a pipeline run started ("schedule", an operator's words, a monitoring alarm); on the
# run, on the version it published, and in the champion history when it moved the champion.
TRIGGER_TAG = f"{TAG}trigger"
INIT_FROM_TAG = f"{TAG}init_from"  # the pinned model training started from, if any


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, list | tuple) else str(value)


def flatten_params(params: dict[str, Any]) -> dict[str, str]:
    """Nested params as MLflow params: `train.patience` → "5"."""
    out: dict[str, str] = {}
    _flatten("", params, out)
    return out


@dataclass
class RunTracker:
    tracking_uri: str
    run_id: str
    experiment_id: str

    @classmethod
    def start(
        cls,
        tracking_uri: str,
        experiment: str,
        artifact_root: Path | None,
        run_name: str,
        tags: dict[str, str],
        parent: RunTracker | None = None,
    ) -> RunTracker:
        experiment_id = (
            parent.experiment_id
            if parent
            else ensure_experiment(tracking_uri, experiment, artifact_root)
        )
        all_tags = dict(tags)
        if parent is not None:
            all_tags["mlflow.parentRunId"] = parent.run_id
        run = client(tracking_uri).create_run(experiment_id, tags=all_tags, run_name=run_name)
        return cls(tracking_uri, run.info.run_id, experiment_id)

    @classmethod
    def reopen(cls, tracking_uri: str, experiment: str, tag: str, value: str) -> RunTracker | None:
        """The run of `experiment` tagged `tag=value`, set running again; None if none.

        A resumed pipeline run logs into the run it started, so a crash and its resume
        leave one run, not two halves."""
        from mlflow.entities import RunStatus

        mlflow_client = client(tracking_uri)
        found = mlflow_client.get_experiment_by_name(experiment)
        if found is None:
            return None
        runs = mlflow_client.search_runs(
            [found.experiment_id], filter_string=f"tags.`{tag}` = '{value}'", max_results=1
        )
        if not runs:
            return None
        run = runs[0]
        mlflow_client.update_run(run.info.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        return cls(tracking_uri, run.info.run_id, found.experiment_id)

    def tags(self) -> dict[str, str]:
        return dict(self.client.get_run(self.run_id).data.tags)

    @property
    def client(self):
        return client(self.tracking_uri)

    def child(self, run_name: str, tags: dict[str, str] | None = None) -> RunTracker:
        return RunTracker.start(self.tracking_uri, "", None, run_name, tags or {}, parent=self)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        flat = flatten_params(params)
        items = [Param(k, v[:6000]) for k, v in flat.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric
        from mlflow.utils.time import get_current_time_millis

        now = get_current_time_millis()
        items = [
            Metric(k, float(v), now, step or 0)
            for k, v in metrics.items()
            if v is not None and math.isfinite(float(v))
        ]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_dict(self, data: Any, name: str) -> None:
        self.client.log_dict(self.run_id, data, name)

    def log_file(self, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)

    def log_figure_file(self, path: Path) -> None:
        self.log_file(path, "plots")

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def lineage_tags(
    task: str,
    data_version: str,
    snapshot_version: str,
    commit: str,
    dirty: bool,
    params_hash: str,
) -> dict[str, str]:
    return {
        f"{TAG}task": task,
        f"{TAG}data_version": data_version,
        SNAPSHOT_TAG: snapshot_version,
        f"{TAG}git_commit": commit,
        f"{TAG}git_dirty": str(dirty).lower(),
        PARAMS_HASH_TAG: params_hash,
    }


def scratch_dir(base: Path, run_id: str) -> Path:
    """The run's working folder: one per MLflow run, so a resumed run finds its own files."""
    folder = base / run_id
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def new_batch_id() -> str:
    """A batch id that sorts by time and does not collide."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def open_pipeline_run(
    tracking_uri: str,
    experiment: str,
    artifact_root: Path | None,
    task: str,
    flow_run_id: str,
) -> tuple[RunTracker, str, bool]:
    """(tracker, batch id, resumed) of the pipeline run of flow run `flow_run_id`.

    A resumed flow run continues the MLflow run and the batch it started, so its completed
    batch stages are found again and its crash leaves one run, not two halves.
    """
    tracker = RunTracker.reopen(tracking_uri, experiment, FLOW_RUN_TAG, flow_run_id)
    if tracker is not None:
        return tracker, tracker.tags()[BATCH_TAG], True
    batch_id = new_batch_id()
    tags = {f"{TAG}task": task, FLOW_RUN_TAG: flow_run_id, BATCH_TAG: batch_id}
    tracker = RunTracker.start(
        tracking_uri, experiment, artifact_root, run_name=f"offline-{batch_id}", tags=tags
    )
    return tracker, batch_id, False


def end_pipeline_run(tracker: RunTracker, outcome: str, tags: dict[str, str] | None = None) -> None:
    """Close the pipeline run with its outcome; a failed one is marked FAILED."""
    tracker.set_tags({OUTCOME_TAG: outcome, **(tags or {})})
    tracker.end("FAILED" if outcome == "failed" else "FINISHED")


def record_validation(tracker: RunTracker, report: Any, quarantine: Path | None) -> None:
    """A batch's validation: its summary, counts and the quarantined rows' file."""
    tracker.log_dict(
        {**report.summary(), "quarantine": str(quarantine) if quarantine else None},
        "validation/summary.json",
    )
    tracker.log_metrics(
        {
            "validate_rows": report.total,
            "validate_bad_rows": len(report.bad),
            "validate_bad_fraction": report.bad_fraction,
        }
    )
    if quarantine is not None:
        tracker.log_file(quarantine, "validation")


def record_split(tracker: RunTracker, report: Any) -> None:
    """The split's rows per set, shares and the keys it names (`split.SplitReport`), beside
    the batch's validation summary."""
    tracker.log_dict(report.to_dict(), "validation/split.json")
    tracker.log_metrics({f"split_{name}_rows": float(n) for name, n in report.counts.items()})


def record_trial(tracker: RunTracker, trial: Any) -> None:
    """One tuning trial as a nested run."""
    child = tracker.child(f"trial-{trial.number}", {f"{TAG}trial_state": trial.state})
    child.log_params(trial.hparams)
    child.log_metrics({"val_loss": trial.value, "epochs": trial.epochs})
    child.end("FINISHED" if trial.state != "FAIL" else "FAILED")


def record_tuning(tracker: RunTracker, result: Any) -> None:
    """The search's outcome: the best hyperparameters and their validation loss."""
    tracker.log_params({"best": result.best_hparams})
    tracker.log_metrics({"tune_best_val_loss": result.best_value})


def record_epoch(tracker: RunTracker, epoch: Any) -> None:
    tracker.log_metrics(
        {"train_loss": epoch.train_loss, "val_loss": epoch.val_loss}, step=epoch.epoch
    )


def transfer_tags(started: Any, mode: str) -> dict[str, str]:
    """What a model started from another one took over (`train.init_from`)."""
    return {
        f"{TAG}transfer.copied": ",".join(started.copied),
        f"{TAG}transfer.fresh": ",".join(started.fresh),
        f"{TAG}transfer.mode": mode,
    }


def training_summary(result: Any) -> dict[str, float]:
    """The training's headline metrics (an onset of 0: no overfitting seen)."""
    return {
        "best_epoch": result.best_epoch,
        "best_val_loss": result.best_val_loss,
        "epochs_run": len(result.history),
        "overfitting_onset_epoch": result.overfitting_onset or 0,
    }


def record_evaluation(
    tracker: RunTracker, evaluation: Any, reports: list[Path], champion_version: str | None
) -> None:
    """The scores, the task's report files and the gate's decision (with its paired test:
    metrics and tags `loopline.gate.*`)."""
    tracker.log_metrics(evaluation.metrics())
    gate_metrics, gate_tags = evaluation.decision.tracking()
    tracker.log_metrics(gate_metrics)
    tracker.set_tags(gate_tags)
    for report in reports:
        tracker.log_file(report, "plots" if report.suffix == ".png" else "evaluation")
    tracker.log_dict(
        {
            "decision": evaluation.decision.to_dict(),
            "champion_version": champion_version,
            "scores": {k: v.to_dict() for k, v in evaluation.scores.items()},
        },
        "evaluation/decision.json",
    )
