"""Split membership: what a model learned from, the rows a champion may be scored on, and
the keys a split names; cross-validation's corrected test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from loopline.offline.crossval import CrossValidation, corrected_t, fold_frame
from loopline.offline.datastore import SnapshotStore
from loopline.offline.features import FeatureSpec
from loopline.offline.membership import ChampionRows, Membership, comparison_rows
from loopline.offline.split import SETS, split_and_fit, split_report
from loopline.params import load_params
from loopline.tasks.rows import RowTask
from loopline.tasks.rows.task import RowOptions
from tests.conftest import write_project


class Parts(RowTask):
    name = "parts"
    features = ("width",)
    target = "grade"
    classes = ("a", "b")


class Lots(Parts):
    """Parts whose rows belong to production lots: a lot stays in one set."""


Lots.split_kind = "grouped"  # (a RowTask's class body is overruled by its declaration)
Lots.group_column = "lot"


def params(tmp_path, **evaluate):
    root = write_project(tmp_path / "p", {"task": "tests.unit.test_membership:Parts"})
    loaded = load_params(root / "params.yaml")
    return loaded.model_copy(update={"evaluate": loaded.evaluate.model_copy(update=evaluate)})


def parts(ids, grade=None) -> pd.DataFrame:
    ids = list(ids)
    grades = grade if grade is not None else ["a", "b"] * (len(ids) // 2) + ["a"] * (len(ids) % 2)
    return pd.DataFrame(
        {"id": [f"p{i}" for i in ids], "width": np.arange(len(ids), dtype=float), "grade": grades}
    )


def split(task, frame, p):
    spec = FeatureSpec(
        task=task.name,
        feature_columns=["width"],
        target_column="grade",
        labels=["a", "b"],
        options=RowOptions(),
    )
    out, spec = split_and_fit(task, frame, spec, p)
    return out, spec


def test_a_label_given_later_joins_its_keys_set_and_moves_no_other_row(tmp_path):
    p = params(tmp_path)
    frame = parts(range(600))
    frame.loc[::3, "grade"] = None  # an unlabeled pool
    before, spec = split(Parts(), frame, p)
    assert (before.loc[frame["grade"].isna(), "split"] == "unlabeled").all()
    labeled = frame.assign(grade=frame["grade"].fillna("b"))  # people answered the pool
    after, _ = split(Parts(), labeled, p)
    old, new = Membership.of(Parts(), before, spec), Membership.of(Parts(), after, spec)
    where = {key: s for s in SETS for key in new.sets[s]}
    assert all(where[key] == s for s in SETS for key in old.sets[s])
    assert not set(new.sets["test"]) & (set(old.sets["train"]) | set(old.sets["val"]))
    assert sum(new.counts().values()) == 600


def test_duplicate_keys_a_changed_group_and_conflicting_labels_are_named(tmp_path):
    p = params(tmp_path)
    frame = parts(range(300)).assign(lot=[f"lot{i // 10}" for i in range(300)])
    repeat = frame.iloc[[5, 7]].assign(grade=["a", "b"], lot=["lot0", "lot29"])
    grown = pd.concat([frame, repeat], ignore_index=True)
    out, spec = split(Lots(), grown, p)
    # A key is in one set however its rows disagree (its first group decides).
    assert (out.groupby("id")["split"].nunique() == 1).all()
    assert out["lot"].tolist() == grown["lot"].tolist()  # the data itself is not changed
    report = split_report(Lots(), out, spec, p)
    assert report.problems["key held by several rows"] == ["p5", "p7"]
    assert report.problems["group changed for a key (its first group decides its set)"] == ["p7"]
    assert report.problems["key seen with different labels"] == ["p5"]
    assert any(
        line.startswith("key seen with different labels: 1 key(s): p5") for line in report.lines()
    )
    assert report.within_tolerance


def periods_task():
    from loopline.tasks.solar.task import SolarTask

    return SolarTask()


def test_a_forecasters_membership_is_each_series_periods_and_it_never_scores_them():
    task = periods_task()
    times = pd.date_range("2021-01-01", periods=100, freq="1h", tz="UTC")
    frame = pd.DataFrame(
        {
            "site_id": ["north"] * 100 + ["south"] * 100,
            "timestamp": list(times) * 2,
            "split": (["train"] * 70 + ["val"] * 10 + ["gap"] * 5 + ["test"] * 15) * 2,
        }
    )
    spec = FeatureSpec(
        task="solar",
        feature_columns=[],
        target_column="power_w",
    )
    membership = Membership.of(task, frame, spec)
    assert membership.kind == "periods" and membership.counts() == {
        "train": 140,
        "val": 20,
        "test": 30,
    }
    north, south = membership.sets["val"]
    assert north["site_id"] == "north" and north["end"] == times[79].isoformat()
    assert south["site_id"] == "south"
    later = pd.DataFrame(
        {"site_id": ["north", "north", "east"], "timestamp": [times[79], times[80], times[0]]}
    )
    # At or before the end of its series' validation period: learned; an unknown series: new.
    assert membership.learned_from(task, later, spec).tolist() == [True, False, False]


def test_a_champion_is_compared_only_on_rows_it_never_learned_from(tmp_path):
    p = params(tmp_path, min_comparison_rows=5)
    frame, spec = split(Parts(), parts(range(400)), p)
    learned = Membership(
        "keys", ["id"], {"train": [f"p{i}" for i in range(0, 400, 2)], "val": [], "test": []}
    )
    compared = comparison_rows(Parts(), frame, spec, ChampionRows("3", learned), 5)
    test = frame["split"] == "test"
    assert compared.reason is None and compared.rows + compared.left_out == int(test.sum())
    still = compared.frame.loc[compared.frame["split"] == "test", "id"]
    assert still.map(lambda key: int(key[1:]) % 2 == 1).all()
    assert "compared on" in compared.describe("3")
    too_few = comparison_rows(Parts(), frame, spec, ChampionRows("3", learned), 1000)
    assert "fewer than evaluate.min_comparison_rows" in too_few.reason
    assert (too_few.frame["split"] == frame["split"]).all()  # nothing moved when held


def test_an_old_champion_is_scored_on_rows_ingested_after_its_snapshot(tmp_path):
    store = SnapshotStore(tmp_path / "snap")
    store.commit(parts(range(0, 50)), {}, {"batch_id": "a"})
    old_version = store.version()
    store.commit(parts(range(50, 80)), {}, {"batch_id": "b"})
    assert store.keys_since(old_version, ["id"]) == {f"p{i}" for i in range(50, 80)}
    assert store.keys_since(store.version(), ["id"]) == set()
    assert store.keys_since("0123456789abcdef", ["id"]) is None
    p = params(tmp_path, min_comparison_rows=1)
    frame, spec = split(Parts(), parts(range(80)), p)
    rows = ChampionRows("1", None, store.keys_since(old_version, ["id"]))
    compared = comparison_rows(Parts(), frame, spec, rows, 1)
    kept = compared.frame.loc[compared.frame["split"] == "test", "id"]
    assert kept.map(lambda key: int(key[1:]) >= 50).all()
    unknown = comparison_rows(Parts(), frame, spec, ChampionRows("1", None, None), 1)
    assert "published without a record of its split" in unknown.reason


def test_a_fold_tests_its_rows_and_trains_on_the_rest_early_stopping_on_val():
    frame = pd.DataFrame({"split": ["train", "val", "test", "unlabeled", "train", "test"]})
    rows = fold_frame(frame, pd.Index([0, 2]))
    assert rows["split"].tolist() == ["test", "val", "test", "unlabeled", "train", "train"]


def fold_values(differences):
    return (
        CrossValidation("accuracy", True, {}, 5, 2, 0.25),
        [0.8] * len(differences),
        [0.8 - d for d in differences],
    )


def test_the_corrected_t_test_widens_for_overlapping_training_sets():
    cv, model, base = fold_values([0.05, 0.02, 0.04, 0.01, 0.06, 0.03, 0.05, 0.02, 0.04, 0.03])
    test = corrected_t(model, base, cv, alpha=0.05)
    gains = np.array(model) - np.array(base)
    naive = gains.mean() / (gains.std(ddof=1) / np.sqrt(len(gains)))
    corrected = gains.mean() / np.sqrt((1 / 10 + 0.25) * gains.var(ddof=1))
    assert test.statistic == pytest.approx(corrected) and test.statistic < naive
    assert test.better and test.interval[0] > 0 and test.difference == pytest.approx(0.035)
    # Gains that go either way are not significant.
    cv, model, base = fold_values([0.05, -0.04, 0.03, -0.02, 0.01, -0.03, 0.02, 0.0, -0.01, 0.01])
    assert not corrected_t(model, base, cv, alpha=0.05).better
    # Lower is better for an error: the sign follows the metric.
    errors = CrossValidation("rmse", False, {}, 5, 2, 0.25)
    assert corrected_t([1.0, 1.1, 0.9, 1.0], [2.0, 2.1, 2.2, 1.9], errors, 0.05).better


def test_small_data_is_decided_on_the_folds_and_a_tie_with_a_baseline_holds(tmp_path):
    from loopline.offline.crossval import decide
    from loopline.offline.evaluate import judge, score_classes

    p = params(tmp_path)
    labels = np.array([0, 1] * 10)
    sure = np.eye(2)[labels] * 0.9 + 0.05
    held_out = judge(
        {"model": score_classes(labels, sure), "majority": score_classes(labels, sure[::-1])},
        p,
        None,
        metric="accuracy",
        higher_is_better=True,
    )
    better = CrossValidation(
        "accuracy", True, {"model": [0.9, 0.85, 0.95, 0.9], "majority": [0.5] * 4}, 2, 2, 1.0
    )
    decided = decide(held_out, better, p)
    assert decided.decision.promote and decided.decision.rule == "cross-validation"
    assert decided.decision.baseline_tests["majority"]["p_value"] < 0.05
    assert decided.metrics()["cv_majority_accuracy"] == 0.5
    assert decided.decision.gate_record()["against"] == "majority"
    tie = CrossValidation(
        "accuracy",
        True,
        {"model": [0.6, 0.5, 0.55, 0.5], "majority": [0.5, 0.55, 0.5, 0.6]},
        2,
        2,
        1.0,
    )
    held = decide(held_out, tie, p).decision
    assert not held.promote
    assert any("not significantly better than majority over the folds" in r for r in held.reasons)
