"""The contract's error messages name the real cause: the missing dataclass decorator of a
task's hyperparameters, and the serving adapter method that could not make request items or
stream lines (not a `check_task(items=...)` the task never needed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
from pydantic import BaseModel

from loopline.contract import Hyperparameters, RowTask, contract_report
from loopline.tasks.base import contract_problems, undecorated_hyperparameters
from loopline.tasks.rows.task import RowHyperparameters

DECORATOR = "@dataclass(frozen=True, kw_only=True)"


class Undecorated(RowHyperparameters):
    channels: int  # a field without the decorator: dataclasses never see it


@dataclass(frozen=True, kw_only=True)
class Decorated(RowHyperparameters):
    channels: int


class Machines(RowTask):
    name = "machines"
    features = ("temperature", "vibration")
    target = "state"
    classes = ("ok", "worn")


class UndecoratedMachines(Machines):
    Hyperparameters = Undecorated


class Reading(BaseModel):
    """A stream line that is not one row of the data: a window of readings."""

    machine: str
    readings: list[float]


class WindowMachines(Machines):
    """Streams windows: the default `stream_lines` (one line per row) cannot make them."""

    Serving: ClassVar[type] = type(
        "WindowMachinesServing", (Machines.Serving,), {"StreamLine": Reading}
    )


def test_an_undecorated_hyperparameters_class_is_told_to_add_the_decorator():
    problems = contract_problems(UndecoratedMachines)
    assert any("Undecorated" in p and DECORATOR in p and "channels" in p for p in problems)
    assert contract_problems(Machines) == []


def test_from_dict_names_the_decorator_not_unknown_names():
    values = {"learning_rate": 0.01, "batch_size": 8, "hidden_size": 4, "layers": 1}
    with pytest.raises(ValueError, match=r"Undecorated declares \['channels'\]") as error:
        Undecorated.from_dict({**values, "dropout": 0.0, "channels": 3})
    assert DECORATOR in str(error.value) and "unknown" not in str(error.value)
    assert Decorated.from_dict({**values, "dropout": 0.0, "channels": 3}).channels == 3


def test_a_decorated_subclass_of_a_decorated_class_needs_nothing_more():
    class Same(Decorated):  # no new field: nothing to decorate
        pass

    class Marked(Hyperparameters):
        kind: ClassVar[str] = "a class attribute, not a field"

    assert undecorated_hyperparameters(Same) is None
    assert undecorated_hyperparameters(Marked) is None


def test_the_kit_names_the_decorator_in_the_contract_part():
    report = contract_report(UndecoratedMachines)
    assert report.status("contract") == "failed", report
    assert DECORATOR in str(report), report


def test_the_kit_blames_the_default_stream_lines_not_the_request_items():
    report = contract_report(WindowMachines, rows=60)
    assert report.status("export") == "passed", report
    assert report.status("serving") == "failed", report
    detail = next(c.detail for c in report.checks if c.part == "serving")
    assert "Reading stream lines" in detail, detail
    assert "default Serving.stream_lines()" in detail, detail
    assert "override stream_lines() in WindowMachinesServing" in detail, detail
    assert "items=" not in detail, detail  # the requests were fine
