"""The digits task (scikit-learn's 8×8 handwritten digits) through the same offline flow:
validated pixels, a stratified split, a small CNN beside a pixel logistic regression,
ONNX export, publish."""

from __future__ import annotations

import numpy as np
import pytest

from loopline import registry
from loopline.paths import ProjectPaths
from tests.conftest import write_project

pytestmark = pytest.mark.usefixtures("prefect_harness")

TINY_DIGITS = {
    "task": "digits",
    "seed": 5,
    "tune": {"sampler": "random", "n_trials": 1, "max_epochs": 2},
    "train": {"max_epochs": 40, "patience": 8},
}


def test_digits_run_publishes_an_accurate_cnn_champion(tmp_path, monkeypatch):
    from loopline.export import run_onnx
    from loopline.tasks.digits import DigitsTask, images
    from pipelines.offline import offline_flow

    for var in ("MLFLOW_TRACKING_URI", "LOOPLINE_HOME"):
        monkeypatch.delenv(var, raising=False)
    root = write_project(tmp_path / "proj", TINY_DIGITS)
    summary = offline_flow(root=str(root))  # ingest.source defaults to the task's own data
    assert summary["status"] == "published" and summary["promoted"], summary
    metrics = summary["metrics"]
    assert metrics["test_accuracy"] >= 0.97
    assert metrics["test_accuracy"] > metrics["pixel_logistic_baseline_accuracy"]
    assert metrics["test_rows"] == 180  # a stratified tenth of 1,797
    paths = ProjectPaths.at(root)
    client = registry.client(paths.tracking_uri())
    plots = {a.path for a in client.list_artifacts(summary["run_id"], "plots")}
    assert {"plots/confusion_matrix.png", "plots/learning_curves.png"} <= plots
    session, spec, _ = registry.load_champion(paths.tracking_uri(), "digits", tmp_path / "m")
    raw = DigitsTask().load_builtin(None)
    for rows in (raw.head(1), raw.head(37)):
        probabilities = run_onnx(session, images(rows, spec))
        assert probabilities.shape == (len(rows), 10)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    predicted = run_onnx(session, images(raw.head(200), spec)).argmax(axis=1)
    assert (predicted == raw["label"].head(200).to_numpy()).mean() > 0.95
