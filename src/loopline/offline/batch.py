"""A batch's way into the snapshot: the source's rows the snapshot lacks (ingest), their
validation with the bad ones quarantined (validate), and their commit as a new data
version (snapshot). One function per stage, each what the flow's stage runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from loopline.config import Params
from loopline.offline import datastore
from loopline.offline.human_labels import LabelStore
from loopline.offline.ingest import (
    batch_watermarks,
    fetch_new_rows,
    label_text,
    row_keys,
    untimed_fingerprints,
)
from loopline.offline.tracking import RunTracker, record_validation
from loopline.offline.validate import (
    ValidationReport,
    check_bad_fraction,
    quarantine,
    validate_rows,
)
from loopline.paths import ProjectPaths


def _store(paths: ProjectPaths, params: Params) -> datastore.SnapshotStore:
    return datastore.SnapshotStore(paths.snapshots(params.task_name))


def new_rows(params: Params, paths: ProjectPaths) -> tuple[pd.DataFrame, int]:
    """The source's rows the snapshot does not hold yet, and how many rows the source held."""
    task, store = params.plugin, _store(paths, params)
    # A source without times has no watermark: its rows already in the snapshot are known
    # by key instead.
    known = _known_labels(task, store)
    return fetch_new_rows(
        params, task, paths.root, store.watermarks(), store.untimed_quarantined(), known
    )


def _known_labels(task, store: datastore.SnapshotStore) -> dict[str, str]:
    """Key -> label text of the snapshot's rows, for a task without a time column (a timed
    task's watermark says what is new)."""
    if task.time_column is not None:
        return {}
    return store.known_labels(list(task.key_columns), task.target_column)


def validate_batch(
    params: Params, rows: pd.DataFrame, paths: ProjectPaths, batch_id: str, tracker: RunTracker
) -> ValidationReport:
    """Validate a batch against the task's schema and rules, quarantine its bad rows (and
    rows whose key the snapshot holds with another label, naming both), record the result,
    and stop (ValidationFailed) when too many are bad."""
    task = params.plugin
    report = validate_rows(
        rows, task.schema_for(params), task.rules(params), suite_name=params.task_name
    )
    known = _known_labels(task, _store(paths, params))
    if known and len(report.good):
        keys = row_keys(report.good, task)
        seen = keys.isin(known.keys()).to_numpy()
        new = label_text(report.good[task.target_column])
        reasons = [
            f"key_seen_before: {key} is in the snapshot "
            + (f"with label {known[key]!r}" if known[key] else "without a label")
            + f", this row says {label!r} (a correction goes through `loopline label import`)"
            for key, label in zip(keys[seen], new[seen], strict=True)
        ]
        report = quarantine(report, seen, reasons, "key_seen_before")
    where = datastore.write_quarantine(report.bad, paths.quarantine / params.task_name, batch_id)
    record_validation(tracker, report, where)
    check_bad_fraction(report, params.validate_.max_bad_fraction, str(where))
    return report


@dataclass(frozen=True)
class Committed:
    """A batch in the snapshot: the commit, the DVC data version, the snapshot version."""

    commit: datastore.Commit
    data_version: str
    snapshot_version: str


def commit_batch(
    params: Params, rows: pd.DataFrame, report: ValidationReport, paths: ProjectPaths, batch_id: str
) -> Committed:
    """Append the batch's good rows to the snapshot and version the data with DVC."""
    task, store = params.plugin, _store(paths, params)
    info = {
        "batch_id": batch_id,
        "quarantined": len(report.bad),
        "untimed_quarantined": untimed_fingerprints(report.bad, task),
        "source": params.ingest.source,
    }
    commit = store.commit(report.good, batch_watermarks(rows, task), info)
    datastore.ensure_dvc_repo(paths.root, paths.dvc_remote)
    return Committed(commit, datastore.track_data(paths.root, paths.data), store.version())


def snapshot_rows(params: Params, paths: ProjectPaths) -> pd.DataFrame:
    """Every row of the task's snapshot."""
    return _store(paths, params).load()


def human_labels(params: Params, paths: ProjectPaths) -> pd.DataFrame:
    """The labels people gave (`loopline label import`); none yet: an empty frame."""
    return LabelStore(paths.labels(params.task_name)).load()


def training_version(params: Params, paths: ProjectPaths, snapshot_version: str) -> str:
    """What a model is trained from: the snapshot and, once there are any, people's labels
    (new labels are new data)."""
    labels = LabelStore(paths.labels(params.task_name)).version()
    return snapshot_version if labels is None else f"{snapshot_version}+labels-{labels}"
