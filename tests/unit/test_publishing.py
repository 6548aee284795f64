"""Publishing rules without Prefect: nothing new, a version's tags, the champion's move; then
the same rules carried out on a local SQLite MLflow registry."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest

from loopline import registry
from loopline.offline import publishing
from loopline.offline.evaluate import Decision, Evaluation, Scores
from loopline.offline.export import Exported, Parity
from loopline.offline.tracking import RunTracker, lineage_tags, training_summary, transfer_tags

LINEAGE = lineage_tags("toy", "data-1", "snap-1", "abc123", False, "params-1")
DONE = {**LINEAGE, registry.PUBLISH_COMPLETE: "true"}


# ---------------------------------------------------------------------- pure rules


def test_nothing_new_means_the_same_snapshot_params_and_start_fully_published():
    assert publishing.trained_alike(DONE, "snap-1", "params-1", None)
    assert not publishing.trained_alike(DONE, "snap-2", "params-1", None)
    assert not publishing.trained_alike(DONE, "snap-1", "params-2", None)
    assert not publishing.trained_alike(DONE, "snap-1", "params-1", "models:/toy/1 (run r)")
    started = {**DONE, publishing.INIT_FROM_TAG: "models:/toy/1 (run r)"}
    assert publishing.trained_alike(started, "snap-1", "params-1", "models:/toy/1 (run r)")
    assert not publishing.trained_alike(started, "snap-1", "params-1", "models:/toy/2 (run s)")
    assert not publishing.trained_alike(started, "snap-1", "params-1", None)


def test_a_version_cut_off_before_its_gate_is_not_nothing_new():
    assert not publishing.trained_alike(LINEAGE, "snap-1", "params-1", None)
    cut_off = {**DONE, registry.PUBLISH_COMPLETE: "false"}
    assert not publishing.trained_alike(cut_off, "snap-1", "params-1", None)


def test_a_published_version_carries_lineage_run_params_gate_and_metrics():
    params = {"seed": 7, "train": {"max_epochs": 3}}
    tags = publishing.version_tags(LINEAGE, "run-9", params, True, {"test_rmse": 12.3456789})
    assert {k: tags[k] for k in LINEAGE} == LINEAGE
    assert tags["loopline.pipeline_run_id"] == "run-9"
    assert json.loads(tags["loopline.params"]) == params
    assert tags["loopline.gate"] == "promote"
    assert tags["loopline.metric.test_rmse"] == "12.3457"
    assert publishing.version_tags(LINEAGE, "run-9", params, False, {})["loopline.gate"] == "hold"
    assert all(isinstance(v, str) for v in tags.values())


def test_params_too_long_for_a_tag_are_cut_to_the_limit():
    params = {"words": ["x" * 100] * 200}
    tags = publishing.version_tags({}, "run", params, True, {})
    assert len(tags["loopline.params"]) == publishing.PARAMS_TAG_LIMIT


@pytest.mark.parametrize(
    ("promote", "champion", "published", "move"),
    [
        (True, None, "1", "promote"),  # no champion yet: the gate decides
        (True, "1", "2", "promote"),
        (False, "1", "2", "hold"),
        (False, None, "1", "hold"),
        (True, "2", "2", "already"),  # promoted before the crash this run resumes from
        (False, "2", "2", "already"),  # ...whatever the gate says on the resumed run
    ],
)
def test_the_champion_moves_as_the_gate_says_once(promote, champion, published, move):
    assert publishing.champion_move(promote, champion, published) == move


@dataclass
class Started:
    copied: list[str]
    fresh: list[str]


@dataclass
class Trained:
    history: list
    best_epoch: int
    best_val_loss: float
    overfitting_onset: int | None


def test_record_training_tags_what_a_started_model_took_over():
    tags = transfer_tags(Started(["encoder", "head"], []), "freeze")
    assert tags == {
        "loopline.transfer.copied": "encoder,head",
        "loopline.transfer.fresh": "",
        "loopline.transfer.mode": "freeze",
    }
    summary = training_summary(Trained([1, 2, 3], 2, 0.5, None))
    assert summary == {
        "best_epoch": 2,
        "best_val_loss": 0.5,
        "epochs_run": 3,
        "overfitting_onset_epoch": 0,
    }


# ---------------------------------------------------------------------- on a registry


@dataclass(frozen=True)
class ToySpec:
    def to_json(self) -> str:
        return json.dumps({"task": "toy"})


def identity_onnx() -> bytes:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])
    y = helper.make_tensor_value_info("forecast", TensorProto.FLOAT, [None, 3])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["forecast"])], "toy", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def candidate() -> Exported:
    golden = np.ones((2, 3), np.float32)
    return Exported(identity_onnx(), ToySpec(), golden, Parity(0.0, 0.0, 2, True))


def evaluation(promote: bool) -> Evaluation:
    scores = {"model": Scores(1.0, 0.5, 10), "naive": Scores(2.0, 1.0, 10)}
    return Evaluation(scores, Decision(promote, ["beats naive: RMSE 1 < 2"]))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    return f"sqlite:///{root / 'mlflow.db'}", root


def pipeline_run(store, name: str) -> RunTracker:
    uri, root = store
    return RunTracker.start(uri, "toy-runs", root / "mlruns", name, {})


def test_publish_registers_tags_and_promotes_then_counts_as_nothing_new(store, tmp_path):
    uri, _ = store
    tracker = pipeline_run(store, "first")
    params = {"seed": 7}
    published, moved = publishing.publish(
        tracker, "toy", candidate(), evaluation(True), params, LINEAGE, tmp_path
    )
    assert published.version == "1" and moved["to"] == "1" and moved["from"] is None
    version = registry.client(uri).get_model_version("toy", "1")
    assert version.tags["loopline.gate"] == "promote"
    assert version.tags["loopline.pipeline_run_id"] == tracker.run_id
    assert version.tags["loopline.snapshot_version"] == "snap-1"
    assert version.tags[registry.PUBLISH_COMPLETE] == "true"
    assert str(registry.champion_version(uri, "toy").version) == "1"

    found = publishing.nothing_new(uri, "toy", "snap-1", "params-1")
    assert found is not None and str(found.version) == "1"
    assert publishing.nothing_new(uri, "toy", "snap-2", "params-1") is None
    assert publishing.nothing_new(uri, "toy", "snap-1", "params-1", "models:/toy/1 (run r)") is None
    assert publishing.nothing_new(uri, "other-model", "snap-1", "params-1") is None


def test_a_resumed_publish_completes_its_version_without_moving_the_champion_twice(store, tmp_path):
    uri, _ = store
    tracker = pipeline_run(store, "crashed")
    lineage = {**LINEAGE, "loopline.snapshot_version": "snap-3"}
    first, moved = publishing.publish(
        tracker, "toy", candidate(), evaluation(True), {}, lineage, tmp_path
    )
    assert moved is not None and not moved.get("already")
    history = registry.champion_history(uri, "toy")
    # The crash: the champion had moved, the version was not yet marked fully published.
    registry.client(uri).delete_model_version_tag("toy", first.version, registry.PUBLISH_COMPLETE)
    assert publishing.nothing_new(uri, "toy", "snap-3", "params-1") is None  # trained again

    again, moved = publishing.publish(
        tracker, "toy", candidate(), evaluation(True), {}, lineage, tmp_path
    )
    assert again.version == first.version  # the run's own version, not a second one
    assert moved == {"to": first.version, "already": True}
    assert registry.champion_history(uri, "toy") == history  # not logged twice
    assert str(publishing.nothing_new(uri, "toy", "snap-3", "params-1").version) == first.version


def test_a_held_candidate_is_the_challenger_and_the_champion_stays(store, tmp_path):
    uri, _ = store
    champion = str(registry.champion_version(uri, "toy").version)
    history = registry.champion_history(uri, "toy")
    tracker = pipeline_run(store, "held")
    published, moved = publishing.publish(
        tracker, "toy", candidate(), evaluation(False), {}, LINEAGE, tmp_path
    )
    assert moved is None
    client = registry.client(uri)
    assert str(client.get_model_version_by_alias("toy", "challenger").version) == published.version
    assert str(registry.champion_version(uri, "toy").version) == champion
    assert registry.champion_history(uri, "toy") == history
    assert client.get_model_version("toy", published.version).tags["loopline.gate"] == "hold"
