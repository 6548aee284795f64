"""The gate's decisions through the real offline flow, on a table of this test's making
(the tabular family, configured in params alone): a small table is judged by
cross-validation and gets a champion; a candidate trained on many more rows is promoted
after a comparison on rows the champion never saw; retrains of equal quality (the same
learner and rows, other seeds) are held."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import write_project

pytestmark = pytest.mark.usefixtures("prefect_harness")

FEATURES = [f"x{i}" for i in range(40)]
WEIGHTS = np.random.default_rng(0).normal(size=(len(FEATURES), 3))


def rows(start: int, count: int, seed: int) -> pd.DataFrame:
    """Three classes with linear boundaries in 40 numbers, and some label noise: a model
    learns them far better from thousands of rows than from a hundred."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(count, len(FEATURES)))
    kind = (x @ WEIGHTS + 0.7 * rng.gumbel(size=(count, 3))).argmax(axis=1)
    table = pd.DataFrame(x.round(5), columns=FEATURES)
    table.insert(0, "id", [f"r{i}" for i in range(start, start + count)])
    table["kind"] = np.array(["red", "green", "blue"])[kind]
    return table


PARAMS = {
    "task": "tabular",
    "seed": 5,
    "ingest": {"source": "data_in/rows.csv"},
    "tabular": {"target": "kind", "id_column": "id", "numeric": FEATURES},
    "tune": {
        "sampler": "grid",
        "n_trials": 1,
        "max_epochs": 4,
        "search_space": {
            "algorithm": {"choices": ["mlp"]},
            "hidden_size": {"choices": [32]},
            "layers": {"choices": [1]},
            "dropout": {"choices": [0.0]},
            "learning_rate": {"choices": [0.01]},
            "batch_size": {"choices": [32]},
            "trees": {"choices": [50]},
            "depth": {"choices": [2]},
            "shrinkage": {"choices": [0.1]},
        },
    },
    "train": {"max_epochs": 12, "patience": 3, "threads": 1},
}


def run(root: Path, *overrides: str) -> dict:
    from pipelines.offline import offline_flow

    return offline_flow(root=str(root), overrides=list(overrides))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, prefect_harness):
    """Four runs of one project: 160 rows; 3,000 rows; the same rows with two other seeds."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("LOOPLINE_HOME", None)
    root = write_project(tmp_path_factory.mktemp("decisions") / "proj", PARAMS)
    (root / "data_in").mkdir()
    small = rows(0, 160, seed=1)
    small.to_csv(root / "data_in" / "rows.csv", index=False)
    first = run(root)
    pd.concat([small, rows(160, 2840, seed=2)]).to_csv(root / "data_in" / "rows.csv", index=False)
    more = run(root)
    equal = [run(root, f"seed={seed}") for seed in (6, 7)]
    return first, more, equal


def test_a_small_table_is_cross_validated_and_gets_a_champion(runs):
    first, _, _ = runs
    decision = first["decision"]
    assert first["status"] == "published" and first["promoted"], decision
    assert decision["rule"] == "cross-validation", decision
    test = decision["baseline_tests"]["majority_class_baseline"]
    assert test["method"] == "corrected-resampled-t" and test["rows"] == 10
    assert test["p_value"] < test["alpha"] and test["interval"][0] > 0, test
    metrics = first["metrics"]
    assert metrics["cv_model_accuracy"] > metrics["cv_majority_class_baseline_accuracy"] + 0.2


def test_a_candidate_trained_on_more_rows_is_promoted_on_rows_new_to_the_champion(runs):
    _, more, _ = runs
    decision = more["decision"]
    assert decision["rule"] == "paired", decision  # 3,000 rows: the held-out split decides
    assert more["promoted"], decision["reasons"]
    assert decision["test"]["p_value"] < decision["test"]["alpha"]
    assert (
        decision["comparison_rows"] >= 200
        and decision["test"]["rows"] == decision["comparison_rows"]
    )


def test_retrains_of_equal_quality_are_held(runs):
    _, _, equal = runs
    for result in equal:
        decision = result["decision"]
        assert result["status"] == "published" and not result["promoted"], decision
        assert decision["test"]["p_value"] >= decision["test"]["alpha"], decision
