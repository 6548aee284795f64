"""Publishing rules: when a run has nothing new, what a published version carries, and when
the champion moves.

The rules are pure functions (`trained_alike`, `version_tags`, `champion_move`), tested
without a registry; `nothing_new`, `score_against_champion` and `publish` carry them out on
the MLflow registry. The gate itself (`evaluate.should_promote`) is pure too: the task's
evaluation scores the candidate beside the champion and decides.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from loopline import registry
from loopline.offline import crossval
from loopline.offline.datastore import SnapshotStore
from loopline.offline.evaluate import compared_on
from loopline.offline.membership import ChampionRows, Membership, comparison_rows
from loopline.offline.tracking import (
    INIT_FROM_TAG,
    PARAMS_HASH_TAG,
    SNAPSHOT_TAG,
    TRIGGER_TAG,
    RunTracker,
    record_evaluation,
)
from loopline.onnx_runtime import embedded_spec, onnx_session, run_onnx
from loopline.registry import METRIC_TAG, TAG

PIPELINE_RUN_TAG = f"{TAG}pipeline_run_id"
PARAMS_TAG = f"{TAG}params"
GATE_TAG = f"{TAG}gate"
GATE_TEST_TAG = f"{TAG}gate_test"  # JSON: the test that decided (method, p, interval, ...)
PARAMS_TAG_LIMIT = 5000  # MLflow's limit on a tag's value

Move = Literal["already", "promote", "hold"]


def trained_alike(
    tags: Mapping[str, str], snapshot_version: str, params_hash: str, init_from: str | None
) -> bool:
    """Whether a version with `tags` was fully published from this snapshot with these params
    and started from the same pinned model (`init_from`, None when trained from scratch).

    Only a fully published version counts: one whose publish step was cut off before the
    gate was carried out is trained again, so the gate's decision is never lost.
    """
    return (
        tags.get(registry.PUBLISH_COMPLETE) == "true"
        and tags.get(SNAPSHOT_TAG) == snapshot_version
        and tags.get(PARAMS_HASH_TAG) == params_hash
        and tags.get(INIT_FROM_TAG) == init_from
    )


def nothing_new(
    tracking_uri: str,
    model_name: str,
    snapshot_version: str,
    params_hash: str,
    init_from: str | None = None,
) -> Any | None:
    """The newest version of `model_name` when it was trained alike (`trained_alike`): this
    run would only repeat it. None when there is something new to train."""
    latest = registry.latest_version(tracking_uri, model_name)
    if latest is None:
        return None
    return (
        latest
        if trained_alike(latest.tags or {}, snapshot_version, params_hash, init_from)
        else None
    )


def version_tags(
    lineage: Mapping[str, str],
    pipeline_run_id: str,
    params: dict[str, Any],
    promote: bool,
    metrics: Mapping[str, float],
    gate: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The tags a published version carries: its lineage (data, code, params hash, start
    model), the pipeline run that made it, its params, the gate's verdict, the test that
    decided it (`Decision.gate_record`) and its metrics."""
    return {
        **lineage,
        PIPELINE_RUN_TAG: pipeline_run_id,
        PARAMS_TAG: json.dumps(params, separators=(",", ":"))[:PARAMS_TAG_LIMIT],
        GATE_TAG: "promote" if promote else "hold",
        **({GATE_TEST_TAG: json.dumps(gate, default=str)} if gate else {}),
        **{f"{METRIC_TAG}{name}": f"{value:.6g}" for name, value in metrics.items()},
    }


def champion_move(promote: bool, champion: str | None, published: str) -> Move:
    """What publishing does with the `champion` alias once `published` is registered.

    "already" when the published version holds it: the run promoted it before a crash and
    is now resumed, so the move is neither repeated nor logged twice. Otherwise "promote"
    when the gate says so, else "hold".
    """
    if champion is not None and str(champion) == str(published):
        return "already"
    return "promote" if promote else "hold"


def champion_rows(task: Any, folder: Path, version: Any, snapshots: Path | None) -> ChampionRows:
    """What the champion (its files downloaded into `folder`) learned from: its recorded
    membership, else the keys ingested after its snapshot version in `snapshots`."""
    recorded = Membership.read(folder)
    if recorded is not None or snapshots is None:
        return ChampionRows(str(version.version), recorded)
    snapshot = (version.tags or {}).get(SNAPSHOT_TAG, "").split("+labels-")[0]
    new_keys = SnapshotStore(snapshots).keys_since(snapshot, list(task.key_columns))
    return ChampionRows(str(version.version), None, new_keys)


def score_against_champion(
    plugin: Any,
    frame,
    spec: Any,
    model: Any,
    params: Any,
    tracker: RunTracker,
    folder: Path,
    snapshots: Path | None = None,
    learner: crossval.Learner | None = None,
    on_fold: Callable[[int, int, dict[str, float]], None] | None = None,
):
    """The task's evaluation of `model` beside the current champion (downloaded into
    `folder`), with the gate's decision, recorded on the pipeline run.

    The champion is scored only on the candidate's test rows it never trained or validated
    on (`membership.comparison_rows`; `snapshots`, the task's snapshot folder, places a
    champion published before memberships were recorded); too few, and the candidate is
    held, saying so. Small data (`crossval.applies`) is judged against the baselines by
    cross-validating the candidate's `learner` (`on_fold` hears of each fold)."""
    downloaded = registry.download_champion(
        tracker.tracking_uri, params.model_name, folder / "champ"
    )
    comparison, champion = _comparison(plugin, frame, spec, params, downloaded, snapshots)
    scored = comparison.frame if comparison is not None else frame
    evaluation = plugin.evaluate(scored, spec, model, params, champion)
    if learner is not None and crossval.applies(plugin, frame, spec, params):
        folds = crossval.cross_validate(plugin, frame, spec, learner, params, on_fold)
        evaluation = crossval.decide(evaluation, folds, params)
    version = downloaded[1].version if downloaded is not None else None
    if comparison is not None:
        note = comparison.describe(version)
        evaluation = compared_on(evaluation, comparison.rows, note, comparison.reason)
    reports = plugin.evaluation_report(evaluation, scored, spec, model, params, folder)
    record_evaluation(tracker, evaluation, reports, version)
    return evaluation


def _comparison(plugin, frame, spec, params, downloaded, snapshots):
    """(the rows the champion may be compared on, (its session, its spec) or None when it
    cannot be compared); (None, None) without a champion."""
    if downloaded is None:
        return None, None
    where, version = downloaded
    rows = champion_rows(plugin, where, version, snapshots)
    comparison = comparison_rows(plugin, frame, spec, rows, params.evaluate.min_comparison_rows)
    if comparison.reason is not None:
        return comparison, None
    session = onnx_session(where / "model.onnx")
    return comparison, (session, embedded_spec(session))


def publish(
    tracker: RunTracker,
    model_name: str,
    candidate: Any,
    evaluation: Any,
    params: dict[str, Any],
    lineage: Mapping[str, str],
    folder: Path,
    profile: Any = None,
    membership: Membership | None = None,
) -> tuple[registry.Published, dict[str, Any] | None]:
    """Register `candidate` (an `export.Exported`) as the challenger with its tags and
    files, move the champion as the gate decided, then mark the version fully published.

    `profile` (a `reference.ReferenceProfile`) and `membership` (the keys of its split
    sets) travel in the version's files.

    Idempotent per pipeline run: a resumed run that registered its version before a crash
    completes that version (tags, the gate) rather than registering another. Returns the
    version and the champion move made (None when the champion stayed).
    """
    from mlflow.models import infer_signature

    uri = tracker.tracking_uri
    onnx_path = folder / "model.onnx"
    onnx_path.write_bytes(candidate.onnx_model)
    golden_out = run_onnx(onnx_session(onnx_path), candidate.golden)
    files = registry.write_model_files(
        folder, candidate.spec, params, candidate.golden, golden_out, profile, membership
    )
    decision = evaluation.decision
    published = registry.log_onnx_model(
        uri,
        tracker.run_id,
        onnx_path,
        model_name,
        files,
        metadata={"feature_spec": json.loads(candidate.spec.to_json()), **lineage},
        signature=infer_signature(candidate.golden, golden_out),
        tags=version_tags(
            lineage,
            tracker.run_id,
            params,
            decision.promote,
            evaluation.metrics(),
            decision.gate_record(),
        ),
    )
    champion = registry.champion_version(uri, model_name)
    move = champion_move(
        decision.promote, champion.version if champion else None, published.version
    )
    moved = None
    if move == "already":
        moved = {"to": published.version, "already": True}
    elif move == "promote":
        moved = registry.move_champion(
            uri,
            model_name,
            published.version,
            reason="; ".join(decision.reasons),
            who=f"pipeline run {tracker.run_id}",
            gate=decision.gate_record(),
            trigger=lineage.get(TRIGGER_TAG),
        )
    registry.mark_published(uri, published)
    return published, moved
