"""Stable split membership through the real offline flow (Prefect's harness, MLflow on
SQLite, DVC): a classifier is published, rows are appended, and the retrained candidate is
compared with the champion only on test rows the champion never learned from."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from loopline import registry
from loopline.offline.membership import Membership
from loopline.paths import ProjectPaths
from tests.conftest import write_project

pytestmark = pytest.mark.usefixtures("prefect_harness")

TASK = """
from loopline.tasks.rows import RowTask


class Blobs(RowTask):
    name = "blobs"
    features = ("x1", "x2")
    target = "kind"
    classes = ("a", "b", "c")
"""


def blobs(start: int, rows: int, seed: int) -> pd.DataFrame:
    """Three Gaussian classes in the plane, ids from `start` on."""
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 3, rows)
    centres = np.array([[0.0, 0.0], [2.5, 0.0], [0.0, 2.5]])
    x = centres[kind] + rng.normal(0, 1.0, (rows, 2))
    return pd.DataFrame(
        {
            "id": [f"b{i}" for i in range(start, start + rows)],
            "x1": x[:, 0],
            "x2": x[:, 1],
            "kind": np.array(["a", "b", "c"])[kind],
        }
    )


PARAMS = {
    # A module of the project's own, named apart: a package called `tasks` imported here
    # would shadow other tests' projects' `tasks` in this process.
    "task": "split_membership_blobs:Blobs",
    "seed": 3,
    "ingest": {"source": "data_in/blobs.csv"},
    "tune": {
        "sampler": "random",
        "n_trials": 1,
        "max_epochs": 2,
        "search_space": {
            "hidden_size": {"choices": [16]},
            "layers": {"choices": [1]},
            "dropout": {"choices": [0.0]},
            "learning_rate": {"choices": [0.01]},
            "batch_size": {"choices": [32]},
        },
    },
    "train": {"max_epochs": 6, "patience": 3},
}


def run(root: Path) -> dict:
    from pipelines.offline import offline_flow

    return offline_flow(root=str(root), overrides=[])


def membership(root: Path, version: str) -> Membership:
    paths = ProjectPaths.at(root)
    folder = registry.download_model(
        paths.tracking_uri(), f"models:/blobs/{version}", root / ".loopline" / f"m{version}"
    )
    found = Membership.read(folder)
    assert found is not None, f"v{version} carries no membership"
    return found


@pytest.fixture(scope="module")
def grown(tmp_path_factory, prefect_harness):
    """A project published on 1,200 rows, then retrained after 400 more arrived."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("LOOPLINE_HOME", None)
    root = write_project(tmp_path_factory.mktemp("split") / "proj", PARAMS)
    (root / "split_membership_blobs.py").write_text(TASK)
    (root / "data_in").mkdir()
    first = blobs(0, 1200, seed=1)
    first.to_csv(root / "data_in" / "blobs.csv", index=False)
    one = run(root)
    # b0 comes again with another label: named in the quarantine, never moved or dropped.
    relabeled = first.iloc[[0]].assign(kind="c" if first["kind"].iloc[0] != "c" else "a")
    grown = pd.concat([first.iloc[1:], relabeled, blobs(1200, 400, seed=2)])
    grown.sample(frac=1, random_state=0).to_csv(root / "data_in" / "blobs.csv", index=False)
    two = run(root)
    yield root, one, two
    sys.modules.pop("split_membership_blobs", None)


def test_the_candidate_is_never_tested_on_rows_the_champion_learned_from(grown):
    root, one, two = grown
    assert one["status"] == two["status"] == "published" and one["promoted"]
    old, new = membership(root, one["version"]), membership(root, two["version"])
    learned = set(old.sets["train"]) | set(old.sets["val"])
    assert not set(new.sets["test"]) & learned
    # Every old row kept its set; the new rows joined sets too.
    where = {key: s for s, keys in new.sets.items() for key in keys}
    assert all(where[key] == s for s, keys in old.sets.items() for key in keys)
    assert sum(new.counts().values()) == 1600
    # The comparison was on every candidate test row (none was the champion's), and says so.
    decision = two["decision"]
    assert decision["comparison_rows"] == len(new.sets["test"])
    assert any("never trained or validated on" in r for r in decision["reasons"])


def test_a_known_key_with_another_label_is_quarantined_naming_both_labels(grown):
    root, one, two = grown
    assert two["new_rows"] == 400
    folder = ProjectPaths.at(root).quarantine / "blobs"
    quarantined = pd.concat(pd.read_csv(p) for p in folder.rglob("*.csv"))
    assert quarantined["id"].tolist() == ["b0"]
    reason = quarantined["_reasons"].iloc[0]
    assert reason.startswith("key_seen_before: b0 is in the snapshot with label"), reason
    # The champion's own set for b0 is unchanged in the new version.
    old, new = membership(root, one["version"]), membership(root, two["version"])
    (kept,) = [s for s, keys in old.sets.items() if "b0" in keys]
    assert "b0" in new.sets[kept]


def test_the_split_is_shown_by_the_cli(grown):
    from loopline.app.cli import app

    root, one, _ = grown
    runner = CliRunner()
    shown = runner.invoke(app, ["models", "--project", str(root), "--split", one["version"]])
    assert shown.exit_code == 0, shown.output
    counts = membership(root, one["version"]).counts()
    assert f"test  {counts['test']}" in shown.output
    keys = runner.invoke(
        app, ["models", "--project", str(root), "--split", one["version"], "--json"]
    )
    sets = json.loads(keys.stdout)
    assert set(sets) == {"train", "val", "test"} and len(sets["test"]) == counts["test"]
    assert all(key.startswith("b") for key in sets["train"])
