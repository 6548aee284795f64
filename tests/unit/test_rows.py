"""Row tasks (`loopline.tasks.rows`): what a few declared lines become, and how they serve."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from loopline.offline.features import FeatureSpec
from loopline.offline.validate import Rule
from loopline.online.models import LoadedModel
from loopline.tasks.base import contract_problems
from loopline.tasks.rows import RowTask
from loopline.tasks.rows.task import RowOptions


class Machines(RowTask):
    name = "machines"
    features = ("temperature", "oil pressure")
    target = "state"
    classes = ("ok", "worn")


class Prices(RowTask):
    name = "prices"
    features = ("size",)
    target = "price"
    id_column = "listing"


def test_a_few_lines_make_a_whole_task():
    assert contract_problems(Machines) == []
    assert Machines.schema == {
        "id": "string",
        "temperature": "float",
        "oil pressure": "float",
        "state": "string",
    }
    assert Machines.key_columns == ["id"] and Machines.target_column == "state"
    assert Machines.split_kind == "stratified"
    assert Prices.schema["price"] == "float" and Prices.split_kind == "grouped"


@pytest.mark.parametrize(
    ("declared", "says"),
    [
        ({"features": "temperature", "target": "state"}, "must be a list of column names"),
        ({"features": ["a", "a"], "target": "state"}, "names a column twice"),
        ({"features": ["a"], "target": ""}, "`target` must name the column to predict"),
        ({"features": ["a", "id"], "target": "y"}, "must not hold ['id']"),
        ({"features": ["a"], "target": "y", "classes": ["one"]}, "at least two distinct"),
        ({"features": ["a"], "target": "y", "id_column": "value"}, "a field of the served"),
    ],
)
def test_a_wrong_declaration_is_refused_when_the_class_is_made(declared, says):
    with pytest.raises(TypeError, match="a RowTask") as caught:
        type("Wrong", (RowTask,), {"name": "wrong", **declared})
    assert says in str(caught.value)


class FakeSession:
    """An ONNX session stand-in: two-class probabilities from the first input column."""

    def get_inputs(self):
        return [type("Input", (), {"type": "tensor(float)"})()]

    def run(self, _outputs, feeds):
        first = 1 / (1 + np.exp(-feeds["x"][:, :1]))
        return [np.concatenate([1 - first, first], axis=1).astype(np.float32)]


def loaded(spec: FeatureSpec) -> LoadedModel:
    return LoadedModel("machines", "1", "champion", FakeSession(), spec, ["CPU"], "now")


def fitted_spec(task) -> FeatureSpec:
    spec = FeatureSpec(
        task=task.name,
        feature_columns=list(task.features),
        target_column=task.target,
        labels=["ok", "worn"],
        options=RowOptions(standardize=True),
    )
    rows = pd.DataFrame({"temperature": [50.0, 70.0], "oil pressure": [4.0, 5.0], "state": "ok"})
    return task().fit_features(spec, rows)


def test_serving_answers_each_item_with_a_label_and_every_probability():
    spec = fitted_spec(Machines)
    serving = Machines.Serving(Machines(), params=None)
    items = [
        Machines.Serving.Request.model_validate({"id": "m1", "temperature": 80, "oil pressure": 4}),
        Machines.Serving.Request.model_validate({"temperature": 40, "oil pressure": 4}),
    ]
    answers = serving.predict(loaded(spec), items)
    assert [a.response["label"] for a in answers] == ["worn", "ok"]
    assert answers[0].response["id"] == "m1" and answers[1].key is None
    assert set(answers[0].response["probabilities"]) == {"ok", "worn"}
    assert answers[0].inputs == {"temperature": 80.0, "oil pressure": 4.0}
    assert serving.describe(loaded(spec))["features"] == ["temperature", "oil pressure"]
    # Stored for training (serve.store_inputs): the row's id, or one made from its values.
    stored = serving.input_rows(answers)
    assert stored[0] == {"id": "m1", "temperature": 80.0, "oil pressure": 4.0}
    assert stored[1]["id"].startswith("live:") and stored[1]["temperature"] == 40.0
    assert serving.input_rows(serving.predict(loaded(spec), items[1:]))[0] == stored[1]


def test_a_request_item_names_what_is_wrong():
    request = Machines.Serving.Request
    with pytest.raises(ValidationError, match="oil pressure"):
        request.model_validate({"temperature": 1.0})
    with pytest.raises(ValidationError, match="humidity"):
        request.model_validate({"temperature": 1, "oil pressure": 2, "humidity": 3})
    with pytest.raises(ValidationError, match="finite"):
        request.model_validate({"temperature": float("inf"), "oil pressure": 2})


def test_a_model_reading_a_feature_requests_lack_gets_error_answers_not_a_crash():
    spec = fitted_spec(Machines)
    wider = replace(spec, feature_columns=[*spec.feature_columns, "humidity"])
    serving = Machines.Serving(Machines(), params=None)
    item = Machines.Serving.Request.model_validate({"temperature": 1, "oil pressure": 2})
    (answer,) = serving.predict(loaded(wider), [item])
    assert answer.error and "humidity" in answer.response["error"]


class PlausibleMachines(Machines):
    """Machines whose data contract bounds the temperature."""

    def rules(self, params):
        bound = Rule("temperature_plausible", "between", column="temperature", min=-50, max=500)
        return [*super().rules(params), bound]


def test_a_bad_item_fails_alone_naming_its_rule_or_its_non_finite_input():
    spec = fitted_spec(Machines)
    # A row task's rules read no params: any stands in for the service's.
    serving = PlausibleMachines.Serving(PlausibleMachines(), params="the service's params")
    request = Machines.Serving.Request.model_validate
    items = [
        request({"id": "m1", "temperature": 80, "oil pressure": 4}),
        request({"id": "m2", "temperature": 900, "oil pressure": 4}),
        request({"id": "m3", "temperature": 40, "oil pressure": 1e300}),
        request({"id": "m4", "temperature": 40, "oil pressure": 4}),
    ]
    answers = serving.predict(loaded(spec), items)
    assert [a.error for a in answers] == [False, True, True, False]
    assert answers[1].response == {
        "id": "m2",
        "error": "refused by the data contract: temperature=900 breaks temperature_plausible",
    }
    assert answers[1].refused == ("temperature_plausible",)
    assert answers[2].response["error"] == (
        "oil pressure=1e+300 gives a non-finite model input (out of any plausible range)"
    )
    assert [a.response["label"] for a in (answers[0], answers[3])] == ["worn", "ok"]


def test_standardisation_is_fitted_on_training_rows_and_can_be_turned_off():
    spec = fitted_spec(Machines)
    assert spec.mean == {"temperature": 60.0, "oil pressure": 4.5}
    assert spec.std == {"temperature": 10.0, "oil pressure": 0.5}
    plain = replace(spec, options=RowOptions(standardize=False), mean={}, std={})
    rows = pd.DataFrame({"temperature": [50.0, 70.0], "oil pressure": [4.0, 5.0], "state": "ok"})
    refitted = Machines().fit_features(plain, rows)
    assert refitted.mean == {"temperature": 0.0, "oil pressure": 0.0}
    assert refitted.options.standardize is False


def test_the_baselines_ignore_the_features():
    spec = fitted_spec(Machines)
    shares = Machines().baselines(np.array([0, 0, 0, 1]), 2, spec)["majority_class_baseline"]
    assert shares.tolist() == [[0.75, 0.25], [0.75, 0.25]]
    prices = replace(spec, labels=None)
    mean = Prices().baselines(np.array([[1.0], [3.0]]), 1, prices)["training_mean_baseline"]
    assert mean.tolist() == [[2.0]]
