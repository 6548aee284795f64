"""The contract test kit (`loopline.testing`): the built-in tasks keep the contract, row
tasks keep it with the serving round trip, and a broken task is told which part it breaks."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import ClassVar

import numpy as np
import pytest

from loopline.offline.labeling import Examples
from loopline.online.adapter import Answer
from loopline.tasks.base import Task
from loopline.tasks.rows import RowTask
from loopline.testing import ContractViolation, check_task, contract_report, sample_rows
from tests.reviews_data import reviews_frame

# Small models: the contract, not the accuracy, is checked.
SMALL_SOLAR = [
    "solar.sites=[greensboro]",
    "solar.horizon=6",
    "tune.search_space={hidden_size: {choices: [8]}, num_layers: {choices: [1]}, "
    "dropout: {choices: [0.0]}, learning_rate: {choices: [0.003]}, batch_size: {choices: [64]}, "
    "window: {choices: [12]}, cell: {choices: [gru]}}",
]
SMALL_REVIEWS = [
    "tune.search_space={embed_size: {choices: [16]}, hidden_size: {choices: [16]}, "
    "layers: {choices: [1]}, kernel_size: {choices: [3]}, dropout: {choices: [0.1]}, "
    "learning_rate: {choices: [0.003]}, batch_size: {choices: [32]}, "
    "ngram_buckets: {choices: [1024]}}",
]


def one_month_of_one_site():
    """The forecaster's frame: March at one site (the whole year is slow to window)."""
    from loopline.params import parse_params
    from loopline.tasks import get_task

    params = parse_params({"task": "solar", "solar": {"sites": ["greensboro"]}})
    rows = get_task("solar").load_builtin(params)
    return rows[(rows["timestamp"] >= "2021-03-01") & (rows["timestamp"] < "2021-04-01")]


def small_reviews():
    frame = reviews_frame(n=200, unlabeled=10, movies=30)
    return frame.assign(label=frame["label"].replace("", None))  # unlabeled: no label


BUILT_INS = {
    "solar": (one_month_of_one_site, SMALL_SOLAR),
    "reviews": (small_reviews, SMALL_REVIEWS),
    "digits": (lambda: None, []),  # 200 images generated from its rules
}


@pytest.mark.parametrize("name", list(BUILT_INS))
def test_a_built_in_task_keeps_the_contract(name):
    make_frame, overrides = BUILT_INS[name]
    report = check_task(name, make_frame(), overrides=overrides)
    assert report.passed, report
    for part in ("rules", "features", "examples", "training", "evaluation", "export", "serving"):
        assert report.status(part) == "passed", report


class Machines(RowTask):
    name = "machines"
    features = ("temperature", "vibration")
    target = "state"
    classes = ("ok", "worn", "faulty")


class Prices(RowTask):
    name = "prices"
    features = ("size", "rooms")
    target = "price"
    id_column = "listing"


@pytest.mark.parametrize("task", [Machines, Prices], ids=["classes", "a number"])
def test_a_row_task_keeps_the_contract_through_serving(task):
    report = check_task(task, rows=120)
    assert [c.status for c in report.checks] == ["passed"] * len(report.checks), report


# ---------------------------------------------------------------------- broken tasks


class ShortValExamples(Machines):
    """Its validation examples lose their last label."""

    def examples(self, frame, spec, target_set):
        made = super().examples(frame, spec, target_set)
        return Examples(made.x, made.y[:-1], made.keys) if target_set == "val" else made


class HalfTask(Task):
    """Declares the data contract and nothing else."""

    name = "half"
    schema: ClassVar[dict[str, str]] = {"id": "string", "y": "float"}
    key_columns: ClassVar[list[str]] = ["id"]
    target_column = "y"


class LostAnswers(Machines):
    """Its serving adapter drops the last item of every batch."""

    class Serving(Machines.Serving):
        def predict(self, model, items):
            return super().predict(model, items)[:-1]


class ErrorAnswers(Machines):
    """Its serving adapter answers every item with an error."""

    class Serving(Machines.Serving):
        def predict(self, model, items):
            return [Answer({"error": "no"}, error=True) for _ in items]


class WrongSpecTask(Machines):
    """Its feature spec names another task."""

    def new_feature_spec(self, params):
        return replace(super().new_feature_spec(params), task="someone-else")


@pytest.mark.parametrize(
    ("task", "part", "says"),
    [
        # How many rows fall in val follows the hash of their keys: any n, n - 1, n.
        (ShortValExamples, "examples", r"val: x, y and keys hold (\d+), (?!\1)\d+, \1"),
        (HalfTask, "contract", r"method rules\(\) is not implemented"),
        (LostAnswers, "serving", r"predict\(\) answered (\d+) of (?!\1)\d+ items"),
        (ErrorAnswers, "serving", r"item 0: error answer \{'error': 'no'\}"),
        (WrongSpecTask, "features", "the feature spec names task 'someone-else'"),
        ("no_such_module:Task", "contract", "cannot import module 'no_such_module'"),
    ],
)
def test_a_broken_task_is_told_which_part_it_breaks(task, part, says):
    with pytest.raises(ContractViolation) as caught:
        check_task(task, rows=120)
    report = caught.value.report
    assert [c.part for c in report.failures] == [part], report
    failure = report.failures[0]
    assert re.search(says, failure.detail), report
    assert f"FAILED  {part}: " in str(caught.value)
    # What needs the broken part is skipped, naming it; nothing after it passes silently.
    later = report.checks[report.checks.index(failure) + 1 :]
    assert all(c.status == "skipped" for c in later), report


def test_a_missing_serving_adapter_is_a_skip_that_says_so():
    class NoServing(Machines):
        Serving = None

    report = contract_report(NoServing, rows=120)
    assert report.passed, report
    assert report.status("serving") == "skipped"
    assert "declares no `Serving` adapter" in str(report)


def test_sample_rows_follow_the_schema_and_rules():
    from loopline.params import parse_params
    from loopline.tasks import get_task

    params = parse_params({"task": "digits"})

    rows = sample_rows(get_task("digits"), params, rows=30)
    assert list(rows.columns) == list(get_task("digits").schema_for(params))
    assert sorted(rows["label"].unique()) == list(map(float, range(10)))
    pixels = rows.drop(columns=["id", "label"]).to_numpy()
    assert pixels.min() >= 0 and pixels.max() <= 16
    assert rows["id"].is_unique
    assert np.issubdtype(pixels.dtype, np.floating)


def test_a_family_is_checked_as_its_section_configures_it():
    # A family's columns come from its params section (Task.bind): checked by name, the
    # kit binds it to the params given before it reads the data contract.
    section = {
        "target": "churned",
        "id_column": "customer",
        "numeric": ["tenure", "spend"],
        "categorical": ["plan"],
        "kind": "classification",
        "labels": ["no", "yes"],
    }
    report = check_task("tabular", params={"tabular": section}, rows=120)
    assert report.passed, report
