"""Tracking: log one pipeline run (and its nested trial runs) to MLflow by explicit run id.

Logging by id rather than through MLflow's thread-local "active run" keeps it correct
whichever thread or process an orchestrator runs a step in.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loopline.registry import TAG, client, ensure_experiment


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
        f"{TAG}snapshot_version": snapshot_version,
        f"{TAG}git_commit": commit,
        f"{TAG}git_dirty": str(dirty).lower(),
        f"{TAG}params_hash": params_hash,
    }


def scratch_dir(base: Path, run_id: str) -> Path:
    """The run's working folder: one per MLflow run, so a resumed run finds its own files."""
    folder = base / run_id
    folder.mkdir(parents=True, exist_ok=True)
    return folder
