"""The reviews task through the same offline flow, registry and labeling loop as solar.

A tiny synthetic review set (tests/reviews_data.py) on real components: ingest from a TSV,
Great Expectations validation with quarantine, movie-disjoint split, a syllable vocabulary,
the attention classifier beside its TF-IDF baseline, ONNX export, publish; then people's
labels out (CSV, Label Studio) and back in through the `loopline label` commands.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from loopline import registry
from loopline.offline.datastore import SnapshotStore
from loopline.offline.human_labels import LabelStore
from loopline.offline.membership import Membership
from loopline.onnx_runtime import run_onnx_outputs
from loopline.paths import ProjectPaths
from tests.conftest import write_project
from tests.reviews_data import TINY_REVIEWS, reviews_frame, write_reviews

pytestmark = pytest.mark.usefixtures("prefect_harness")

BAD_ROWS = [
    {"id": "9001", "document": "   ", "label": "1", "date": "", "movie_id": "501", "rating": ""},
    {"id": "9002", "document": "재밌다", "label": "2", "date": "", "movie_id": "501", "rating": ""},
    {"id": "9003", "document": "별로다", "label": "0", "date": "", "movie_id": "", "rating": ""},
]


# The first run cross-validates these 500 reviews (small data); runs about labels and
# pretraining decide on the held-out split, which costs ten fewer trainings.
HELD_OUT = "evaluate.cross_validate_below=0"


def run(root: Path, *overrides: str) -> dict:
    from pipelines.offline import offline_flow

    return offline_flow(root=str(root), overrides=list(overrides))


def cli(*args: str):
    from loopline.app.cli import app

    return CliRunner().invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def reviews_project(tmp_path_factory, prefect_harness):
    import os

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("LOOPLINE_HOME", None)
    root = write_project(tmp_path_factory.mktemp("reviews") / "proj", TINY_REVIEWS)
    frame = pd.concat([reviews_frame(), pd.DataFrame(BAD_ROWS)], ignore_index=True)
    write_reviews(root / "reviews.tsv", frame)
    return root, run(root), frame


def test_reviews_run_publishes_a_champion_beside_its_baseline(reviews_project):
    root, summary, frame = reviews_project
    assert summary["status"] == "published" and summary["promoted"], summary
    metrics = summary["metrics"]
    # The XOR of negation and polarity: syllables in order get it, a bag of n-grams cannot.
    assert metrics["test_accuracy"] >= 0.9
    assert metrics["tfidf_baseline_accuracy"] < metrics["test_accuracy"]
    assert metrics["test_rows"] > 20
    paths = ProjectPaths.at(root)
    champion = registry.champion_version(paths.tracking_uri(), "reviews")
    assert champion.tags["loopline.metric.tfidf_baseline_accuracy"]
    # Bad rows are quarantined with their reasons; unlabeled rows kept for labeling.
    quarantine = pd.concat(pd.read_csv(p) for p in (paths.quarantine / "reviews").glob("*.csv"))
    reasons = dict(zip(quarantine["id"].astype(str), quarantine["_reasons"], strict=True))
    assert reasons == {
        "9001": "document_not_blank",
        "9002": "label_is_0_or_1",
        "9003": "movie_id_not_null",
    }
    snapshot = SnapshotStore(paths.snapshots("reviews")).load()
    assert len(snapshot) == len(frame) - 3 and snapshot["label"].isna().sum() == 30
    # The attention report is in the run; the evaluation said why it promoted.
    client = registry.client(paths.tracking_uri())
    files = {a.path for a in client.list_artifacts(summary["run_id"], "evaluation")}
    assert "evaluation/attention.html" in files
    # 500 labeled reviews are small data: the gate cross-validated the learner against the
    # baselines (a paired test over the folds), not one test set of 50 reviews.
    decision = summary["decision"]
    assert decision["rule"] == "cross-validation", decision
    assert decision["baseline_tests"]["tfidf_baseline"]["p_value"] < 0.05, decision
    assert (
        summary["metrics"]["cv_model_accuracy"] > summary["metrics"]["cv_tfidf_baseline_accuracy"]
    )


def test_the_published_onnx_model_reads_any_batch_and_length(reviews_project, tmp_path):
    from loopline.onnx_runtime import embedded_spec
    from loopline.tasks.text.task import encode

    root, _, _ = reviews_project
    paths = ProjectPaths.at(root)
    session, spec, _ = registry.load_champion(paths.tracking_uri(), "reviews", tmp_path)
    assert embedded_spec(session).options.vocabulary  # the vocabulary travels with it
    for texts in (["안 재밌다"], ["재밌다", "주말에 봤는데 안 지루하다 ㅋㅋ", "별로다 👍"]):
        probabilities, attention = run_onnx_outputs(session, encode(texts, spec))
        assert probabilities.shape == (len(texts), 2)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(attention.sum(axis=1), 1.0, atol=1e-5)
    # Negation flips the prediction: the model learned the word order.
    pair = ["친구랑 같이 재밌다", "친구랑 같이 안 재밌다"]
    probabilities, _ = run_onnx_outputs(session, encode(pair, spec))
    assert probabilities[0, 1] > 0.5 > probabilities[1, 1]

    # The reference profile travels in the version's files: text lengths, labels, errors.
    from loopline.offline.reference import ReferenceProfile

    folder = registry.download_model(
        paths.tracking_uri(), "models:/reviews@champion", tmp_path / "files"
    )
    profile = ReferenceProfile.read(folder / "extra_files")
    assert set(profile.features) == {"text_chars", "text_words"}
    assert profile.predictions["predicted_label"].kind == "categorical"
    assert profile.quality.name == "error_rate" and 0 <= profile.quality.figure < 0.5


def test_rerun_ingests_nothing_twice(reviews_project):
    root, _, _ = reviews_project
    summary = run(root)
    assert summary["status"] == "nothing new", summary


def test_label_export_then_import_trains_on_the_answers(reviews_project, tmp_path):
    root, _, frame = reviews_project
    out = tmp_path / "batch"
    result = cli("label", "export", "--project", str(root), "--n", "10", "--out", str(out))
    assert result.exit_code == 0, result.output
    (csv_path,) = out.glob("*.csv")
    (json_path,) = out.glob("*.label-studio.json")
    batch = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    unlabeled = set(frame.loc[frame["label"] == "", "id"])
    assert len(batch) == 10 and set(batch["id"]) <= unlabeled
    assert (batch["label"] == "").all() and list(batch.columns)[:3] == ["id", "text", "label"]
    # Least confidence: the batch is the pool's least certain rows, most uncertain first.
    assert batch["score"].astype(float).is_monotonic_increasing
    tasks = json.loads(json_path.read_text(encoding="utf-8"))
    assert [t["data"]["id"] for t in tasks] == batch["id"].tolist()
    # A person answers 8 of them (by the generator's rule) and leaves 2 blank.
    truth = {str(1000 + i): i for i in range(len(frame))}
    answers = batch.copy()
    answers.loc[:7, "label"] = ["positive" if truth[i] % 2 else "0" for i in batch["id"][:8]]
    answers.to_csv(csv_path, index=False)
    result = cli("label", "import", str(csv_path), "--project", str(root))
    assert result.exit_code == 0, result.output
    assert "8 new label(s)" in result.output and "2 row(s) left unanswered" in result.output
    paths = ProjectPaths.at(root)
    stored = LabelStore(paths.labels("reviews")).load()
    assert sorted(stored["id"]) == sorted(batch["id"][:8])
    assert (paths.root / "data.dvc").exists()
    # Importing the same file again changes nothing; the next run trains on the answers.
    again = cli("label", "import", str(csv_path), "--project", str(root))
    assert "0 new label(s), 8 already held" in again.output
    summary = run(root, HELD_OUT)
    assert summary["status"] == "published", summary
    version = registry.latest_version(paths.tracking_uri(), "reviews")
    assert "+labels-" in version.tags["loopline.snapshot_version"]
    # The answers joined sets by their movie's hash: no old row moved, and the candidate
    # was never tested on a row the champion trained or validated on.
    before, after = membership(root, "1", tmp_path), membership(root, version.version, tmp_path)
    where = {key: name for name, keys in after.sets.items() for key in keys}
    assert all(where[key] == name for name, keys in before.sets.items() for key in keys)
    assert set(batch["id"][:8]) <= set(where)
    assert not set(after.sets["test"]) & (set(before.sets["train"]) | set(before.sets["val"]))
    assert summary["decision"]["comparison_rows"] == len(after.sets["test"])


def membership(root: Path, version: str, scratch: Path) -> Membership:
    paths = ProjectPaths.at(root)
    folder = registry.download_model(
        paths.tracking_uri(), f"models:/reviews/{version}", scratch / f"v{version}"
    )
    return Membership.read(folder)


def test_label_import_reports_conflicts_and_bad_answers_and_imports_nothing(
    reviews_project, tmp_path
):
    root, _, frame = reviews_project
    paths = ProjectPaths.at(root)
    before = LabelStore(paths.labels("reviews")).load()
    pool = [i for i in frame.loc[frame["label"] == "", "id"] if i not in set(before["id"])]

    def task(review: str, *choices: str) -> dict:
        return {
            "data": {"id": review, "text": "…"},
            "annotations": [
                {"result": [{"type": "choices", "value": {"choices": [c]}}]} for c in choices
            ],
        }

    export = tmp_path / "label-studio-export.json"
    export.write_text(
        json.dumps(
            [
                task(pool[0], "positive", "negative"),  # two annotators disagree
                task(pool[1], "positive"),
                task("no-such-review", "negative"),
                task(pool[2], "maybe"),
                task(pool[3]),  # not answered: skipped, not an error
            ]
        )
    )
    result = cli("label", "import", str(export), "--project", str(root))
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert f"id {pool[0]}): conflicting answers: positive (task 1), negative (task 1)" in text
    assert "id no-such-review): unknown id" in text
    assert f"id {pool[2]}): label 'maybe' is not one of 0, 1 or negative, positive" in text
    assert "nothing was imported" in text
    after = LabelStore(paths.labels("reviews")).load()
    assert len(after) == len(before)  # all or nothing: pool[1]'s good answer waits too
    # An answer that contradicts an earlier import is a conflict too, not an overwrite.
    earlier = before.iloc[0]
    flipped = tmp_path / "flip.csv"
    pd.DataFrame({"id": [earlier["id"]], "label": [1 - int(earlier["label"])]}).to_csv(
        flipped, index=False
    )
    result = cli("label", "import", str(flipped), "--project", str(root))
    assert result.exit_code == 1 and "conflicts with the earlier label" in result.output


def test_pretrained_encoder_is_registered_and_a_run_fine_tunes_from_it(reviews_project):
    root, _, _ = reviews_project
    result = cli(
        "pretrain",
        "--project",
        str(root),
        "-P",
        "reviews.pretrain_epochs=2",
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.output.strip().splitlines()[-1])
    assert out["model"] == "reviews-encoder" and out["version"] == "1"
    paths = ProjectPaths.at(root)
    version = registry.client(paths.tracking_uri()).get_model_version("reviews-encoder", "1")
    assert version.tags["loopline.snapshot_version"]
    encoder = out["path"]
    summary = run(
        root,
        f"reviews.pretrained_encoder={encoder}",
        "reviews.fine_tuning=gradual_unfreeze",
        HELD_OUT,
    )
    assert summary["status"] == "published", summary
    from loopline.tasks.text.pretrain import load_encoder
    from loopline.tasks.text.task import vocabulary

    published = registry.latest_version(paths.tracking_uri(), "reviews")
    params = json.loads(published.tags["loopline.params"])
    assert params["reviews"]["pretrained_encoder"] == encoder
    # The fine-tuned model reads texts with the encoder's own vocabulary.
    from loopline.onnx_runtime import embedded_spec, onnx_session
    from loopline.registry import download_model

    folder = download_model(
        paths.tracking_uri(), f"models:/reviews/{published.version}", root / "ft-model"
    )
    spec = embedded_spec(onnx_session(folder / "model.onnx"))
    assert vocabulary(spec).tokens == load_encoder(Path(encoder))[1].tokens


@pytest.mark.parametrize("strategy", ["committee", "random", "margin"])
def test_label_export_by_each_strategy(reviews_project, tmp_path, strategy):
    root, _, frame = reviews_project
    out = tmp_path / strategy
    result = cli(
        "label",
        "export",
        "--project",
        str(root),
        "--n",
        "5",
        "--strategy",
        strategy,
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    (csv_path,) = out.glob(f"*-{strategy}.csv")
    batch = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    labeled = set(LabelStore(ProjectPaths.at(root).labels("reviews")).load()["id"])
    assert len(batch) == 5 and not set(batch["id"]) & labeled  # never a labeled row again
    assert set(batch["id"]) <= set(frame.loc[frame["label"] == "", "id"])
