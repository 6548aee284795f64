"""The task-neutral core (issue 26): the spec's neutral fields, the compatibility with
specs and tasks of the layout before, and the defaults of the hooks shared code asks."""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest

from loopline.config import SplitParams
from loopline.offline.features import FeatureSpec
from loopline.offline.split import chronological_split, split_keys, time_column_of
from loopline.online.models import ModelLoadError, check_model
from loopline.tasks.base import NoOptions, Task
from loopline.tasks.forecast import ForecastOptions, ForecastTask
from loopline.tasks.rows import RowTask
from loopline.tasks.solar.task import SolarOptions, SolarTask

NEUTRAL = {
    "task",
    "feature_columns",
    "target_column",
    "options",
    "mean",
    "std",
    "target_mean",
    "target_std",
    "labels",
}


class Gauges(RowTask):
    name = "gauges"
    features = ("pressure",)
    target = "state"
    classes = ("ok", "worn")


def solar_spec_saved_before() -> str:
    """A solar model's spec as models in users' registries hold it: the series' fields at
    the top level, a fitted scaling, the window chosen by tuning."""
    options = {
        "lags": [24],
        "clearsky_leads": [1],
        "sites": {"a": {"latitude": 1.0, "longitude": 2.0, "altitude": 3.0}},
        "system": {"pdc0_w": 4000.0},
        "season": [24],
    }
    return json.dumps(
        {
            "task": "solar",
            "feature_columns": ["ghi", "power_w"],
            "target_column": "power_w",
            "horizon": 6,
            "freq": "30min",
            "group_column": "site_id",
            "time_column": "timestamp",
            "window": 48,
            "options": options,
            "mean": {"ghi": 1.0, "power_w": 2.0},
            "std": {"ghi": 1.0, "power_w": 1.0},
            "target_mean": 2.0,
            "target_std": 1.0,
            "labels": None,
        }
    )


def test_the_spec_holds_neutral_fields_only():
    spec = FeatureSpec("gauges", ["pressure"], "state", labels=["ok", "worn"])
    assert {f for f in asdict(spec)} == NEUTRAL
    assert set(json.loads(spec.to_json())) == NEUTRAL


def test_a_spec_saved_before_moves_its_series_fields_into_the_options():
    spec = FeatureSpec.from_json(solar_spec_saved_before())
    assert isinstance(spec.options, SolarOptions)
    o = spec.options
    assert (o.horizon, o.freq, o.window) == (6, "30min", 48)
    assert (o.group_column, o.time_column) == ("site_id", "timestamp")
    assert o.lags == [24] and spec.mean == {"ghi": 1.0, "power_w": 2.0}
    assert set(json.loads(spec.to_json())) == NEUTRAL  # saved again: neutral
    assert FeatureSpec.from_json(spec.to_json()) == spec


def test_a_spec_saved_before_drops_the_fields_its_task_does_not_declare():
    saved = {
        "task": "gauges",
        "feature_columns": ["pressure"],
        "target_column": "state",
        "horizon": 2,  # the dummies every task had to fill in
        "freq": "",
        "group_column": "id",
        "time_column": "",
        "window": 0,
        "options": {"standardize": True},
        "labels": ["ok", "worn"],
    }
    spec = FeatureSpec.from_json(json.dumps(saved), Gauges())
    assert spec.labels == ["ok", "worn"] and spec.options.standardize
    assert not hasattr(spec, "horizon") and not hasattr(spec.options, "horizon")


def test_a_task_written_before_still_builds_its_spec_with_a_warning():
    with pytest.warns(DeprecationWarning, match="no longer spec fields"):
        by_name = FeatureSpec(
            task="forecast",
            feature_columns=["value"],
            target_column="value",
            horizon=4,
            freq="1h",
            group_column="_series",
            time_column="timestamp",
        )
    assert isinstance(by_name.options, ForecastOptions) and by_name.options.horizon == 4
    with pytest.warns(DeprecationWarning, match="spec.options.horizon"):
        assert by_name.horizon == 4  # read the former way, from the options
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        # By position, in the former order: the dummies of a classifier are dropped.
        by_position = FeatureSpec("gauges", ["pressure"], "state", 1, "", "id", "")
    assert by_position == FeatureSpec("gauges", ["pressure"], "state")
    with pytest.raises(AttributeError, match="horizon"):
        by_position.horizon  # noqa: B018


def test_the_hooks_default_to_rows_that_stand_alone():
    task = Gauges()
    spec = FeatureSpec("gauges", ["pressure", "oil"], "state")
    assert task.loss_dependence(spec) == 1
    probe = task.probe_input(spec)
    assert probe.shape == (2, 2) and probe.dtype == np.float32 and not probe.any()
    assert task.split_margin(None, spec) == pd.Timedelta(0)
    assert task.history_span(None, spec) == pd.Timedelta(0)
    assert task.group_column == "id"  # a row task's rows are their own groups
    assert Task.group_column is None


class Meters(Task):
    """A chronological task written before the hooks took time: it counts steps."""

    name = "meters"
    time_column: ClassVar[str | None] = "at"
    split_kind = "chronological"

    def split_gap(self, params) -> int:
        return 3


def test_a_former_step_counting_override_is_honoured_where_the_spec_has_a_step():
    spec = FeatureSpec("forecast", ["kw"], "kw", ForecastOptions(freq="15min"))
    assert Meters().split_margin(None, spec) == pd.Timedelta("45min")
    assert Meters().history_span(None, spec) == pd.Timedelta("45min")
    stepless = FeatureSpec("meters", ["kw"], "kw", NoOptions())
    with pytest.raises(ValueError, match="override split_margin"):
        Meters().split_margin(None, stepless)


def test_the_split_reads_its_columns_from_the_task():
    assert time_column_of(Meters()) == "at"
    assert split_keys(Gauges(), FeatureSpec("gauges", [], "state")) == (["id"], None)

    class Loose(Gauges):
        pass

    Loose.split_kind, Loose.group_column = "grouped", None
    with pytest.raises(ValueError, match=r"set Task\.group_column"):
        split_keys(Loose(), FeatureSpec("gauges", [], "state"))
    times = pd.date_range("2024-01-01", periods=100, freq="1h", tz="UTC")
    out = chronological_split(pd.DataFrame({"at": times}), SplitParams(), "at", pd.Timedelta("2h"))
    assert (out["split"] == "gap").sum() == 4  # two hours before val, two before test


def test_the_forecast_family_answers_the_hooks_from_its_options():
    spec = FeatureSpec.from_json(solar_spec_saved_before())
    solar = SolarTask()
    assert solar.loss_dependence(spec) == 6
    assert solar.probe_input(spec).shape == (2, 48, 2)
    one_step = FeatureSpec("forecast", [], "v", ForecastOptions())  # the options' defaults
    assert ForecastTask().loss_dependence(one_step) == 1


def identity_onnx(columns: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, columns])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, columns])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "toy", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_a_model_without_a_golden_batch_is_checked_on_the_task_probe(tmp_path):
    spec = FeatureSpec("gauges", ["pressure", "oil"], "state")
    assert check_model(identity_onnx(2), spec, tmp_path, task=Gauges()) == 0.0

    class Wrong(Gauges):
        def probe_input(self, spec):
            return np.zeros((2, 3), np.float32)  # not what the model reads

    with pytest.raises(ModelLoadError, match="check batch"):
        check_model(identity_onnx(2), spec, tmp_path, task=Wrong())
