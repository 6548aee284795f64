"""The tabular family (`loopline.tasks.tabular`): its section, encoding, candidates and
serving, on small frames written here."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pydantic import BaseModel

from loopline.errors import ConfigError, SourceError
from loopline.offline.evaluate import incomparable_specs
from loopline.offline.export import export_and_check
from loopline.offline.train import FitsItself, to_tensors
from loopline.offline.validate import coerce_types
from loopline.online.adapter import BadInput
from loopline.online.models import LoadedModel
from loopline.onnx_runtime import onnx_session, run_onnx
from loopline.params import parse_params
from loopline.tasks.tabular import TabularTask
from loopline.tasks.tabular.encoding import (
    OTHER,
    as_category,
    encode,
    input_names,
    unseen,
    vocabulary,
)
from loopline.tasks.tabular.serving import TabularRow, TabularServing, row_values

SECTION = {
    "target": "churned",
    "id_column": "customer_id",
    "numeric": ["tenure", "spend"],
    "categorical": ["plan"],
}


def params(**section) -> object:
    return parse_params({"task": "tabular", "tabular": {**SECTION, **section}})


def customers(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    tenure = rng.integers(1, 60, n).astype(float)
    plan = rng.choice(["basic", "plus", "pro"], n)
    spend = rng.normal(50, 10, n)
    churned = np.where((plan == "basic") & (tenure < 30), "yes", "no")
    return pd.DataFrame(
        {
            "customer_id": [f"c{i}" for i in range(n)],
            "tenure": tenure,
            "spend": spend,
            "plan": plan,
            "churned": churned,
        }
    )


def fitted(frame: pd.DataFrame, **section):
    p = params(**section)
    task = p.plugin
    spec = task.fit_features(task.new_feature_spec(p), frame)
    return task, spec


@pytest.mark.parametrize(
    ("section", "says"),
    [
        ({"target": ""}, "tabular.target is not set"),
        ({"numeric": [], "categorical": []}, "tabular.numeric and tabular.categorical list no"),
        ({"categorical": ["tenure"]}, "name column(s) ['tenure'] twice"),
        ({"numeric": ["tenure", "churned"]}, "hold ['churned']: not a feature"),
        ({"kind": "regression", "labels": [1, 2]}, "tabular.labels is set, but tabular.kind"),
        ({"labels": ["yes", "yes"]}, "two or more distinct labels"),
    ],
)
def test_a_section_it_cannot_work_with_is_refused_naming_the_key(section, says):
    with pytest.raises(ConfigError) as caught:
        params(**section)
    assert "tabular: " in str(caught.value) and says in str(caught.value)


def test_bind_takes_the_columns_from_the_section():
    task = params(kind="regression").plugin
    assert task.schema == {
        "customer_id": "string",
        "tenure": "float",
        "spend": "float",
        "plan": "string",
        "churned": "float",
    }
    assert task.key_columns == ["customer_id"] and task.split_kind == "grouped"
    assert params().plugin.split_kind == "stratified"
    assert TabularTask().schema == {}  # the unbound task keeps no columns


def test_a_column_the_data_lacks_is_named():
    with pytest.raises(SourceError, match=r"missing column\(s\) \['spend'\]"):
        coerce_types(customers().drop(columns="spend"), params().plugin.schema)


def test_a_regression_target_with_text_is_quarantined_naming_column_and_value():
    p = params(kind="regression", target="spend", numeric=["tenure"])
    task = p.plugin
    frame = customers().assign(spend=lambda f: f["spend"].round(1).astype(object))
    frame.loc[3, "spend"] = "unknown"
    # The validate stage quarantines each row with these reasons (the e2e test sees one).
    typed, problems = coerce_types(frame, task.schema)
    assert problems == {3: ["type:spend='unknown' is not a float"]}
    assert typed["spend"].isna().sum() == 1


def test_encoding_standardises_numbers_and_gives_unseen_categories_the_other_slot():
    frame = customers()
    frame.loc[0, "plan"] = "legacy"  # one training row only: rarer than min_category_rows
    task, spec = fitted(frame)
    assert spec.options.vocabulary == {"plan": ["basic", "plus", "pro"]}
    assert spec.labels == ["no", "yes"]  # inferred from the training rows, sorted
    names = input_names(["tenure", "spend"], spec.options.vocabulary)
    assert names[-1] == f"plan={OTHER}"
    x = task.inputs(frame, spec)
    assert x.shape == (len(frame), len(names))
    np.testing.assert_allclose(x[:, :2].mean(axis=0), 0, atol=1e-6)
    new = frame.head(2).assign(plan=["platinum", "plus"])
    encoded = task.inputs(new, spec)
    assert encoded[0, -1] == 1 and encoded[0, 2:-1].sum() == 0  # "other", nothing else
    assert encoded[1, names.index("plan=plus")] == 1
    assert unseen(new, spec.options.vocabulary) == [["plan='platinum'"], []]


def category_text(value) -> str | None:
    """One value as the encoder names it, the slow way: whole numbers without ".0"."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    try:
        number = float(value)
    except ValueError:
        return str(value)
    return str(int(number)) if number == round(number) else str(value)


def test_categories_are_named_and_encoded_as_each_row_alone_would_be():
    # 3, 3.0 and "3" are one category; missing and unseen values go to "other".
    raw = [3, 3.0, "3", "pro", None, np.nan, 2.5, "2.5", "x", "pro", 7, "basic"]
    frame = pd.DataFrame({"plan": pd.Series(raw, dtype=object), "n": np.arange(12.0)})
    texts = [category_text(v) for v in raw]
    assert as_category(frame["plan"]).tolist() == [pd.NA if t is None else t for t in texts]
    assert vocabulary(frame["plan"], 2) == ["2.5", "3", "pro"]
    known = {"plan": ["2.5", "3", "pro"]}
    x = encode(frame, ["n"], {"n": 5.5}, {"n": 2.0}, known)
    assert x.dtype == np.float32 and x.shape == (12, 5)
    np.testing.assert_array_equal(x[:, 0], ((np.arange(12.0) - 5.5) / 2.0).astype(np.float32))
    expected = np.zeros((12, 4), np.float32)
    for row, text in enumerate(texts):
        slot = known["plan"].index(text) if text in known["plan"] else 3
        expected[row, slot] = 1.0
    np.testing.assert_array_equal(x[:, 1:], expected)
    # A column with no value at all, and no rows at all.
    empty = pd.DataFrame({"plan": pd.Series([None, None], dtype=object)})
    assert encode(empty, [], {}, {}, known).tolist() == [[0, 0, 0, 1]] * 2
    assert encode(frame.head(0), ["n"], {"n": 0.0}, {"n": 1.0}, known).shape == (0, 5)


def test_the_spec_travels_through_json_and_a_new_label_set_is_incomparable():
    from loopline.offline.features import FeatureSpec

    _task, spec = fitted(customers())
    assert FeatureSpec.from_json(spec.to_json()) == spec
    other = customers().assign(churned=lambda f: f["churned"].map({"no": "stay", "yes": "go"}))
    _, changed = fitted(other)
    assert "labels" in incomparable_specs(spec, changed)


@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_the_trees_fit_themselves_and_export_with_parity(kind, tmp_path):
    section = {"kind": kind} if kind == "classification" else {"kind": kind, "target": "spend"}
    if kind == "regression":
        section["numeric"] = ["tenure"]
    frame = customers().assign(split="train")
    task, spec = fitted(frame, **section)
    examples = task.examples(frame, spec, "train")
    hp = task.Hyperparameters.from_dict(
        {
            **{k: v.choices[0] if v.choices else v.low for k, v in task.default_space().items()},
            "algorithm": "gbm",
            "trees": 20,
        }
    )
    model = task.build_model(hp, spec)
    assert isinstance(model, FitsItself)
    x, y = to_tensors(examples, spec)
    model.fit_examples(x, y, x, y, seed=0)
    golden = examples.x[:16]
    parity = export_and_check(model, golden, tmp_path / "m.onnx", {}, 1e-5, 1e-5)
    assert parity.passed and parity.max_abs_diff < 1e-4
    out = run_onnx(onnx_session(tmp_path / "m.onnx"), golden)
    assert out.shape == ((16, 2) if kind == "classification" else (16, 1))


class ProbabilitiesOfTheFirstInput:
    def get_inputs(self):
        return [type("Input", (), {"type": "tensor(float)"})()]

    def run(self, _outputs, feeds):
        first = 1 / (1 + np.exp(-feeds["x"][:, :1]))
        return [np.concatenate([1 - first, first], axis=1).astype(np.float32)]


def served_model():
    _task, spec = fitted(customers())
    model = LoadedModel("churn", "1", "champion", ProbabilitiesOfTheFirstInput(), spec, [], "now")
    return TabularServing(TabularTask(), None), model


def item(**values) -> BaseModel:
    row = {"customer_id": "c1", "tenure": 3, "spend": 40.5, "plan": "basic"}
    return TabularRow.model_validate({**row, **values})


def test_serving_checks_an_item_against_the_served_models_spec():
    serving, model = served_model()
    with pytest.raises(BadInput, match=r"feature\(s\) \['plan'\] missing"):
        serving.check(TabularRow.model_validate({"tenure": 3, "spend": 4.0}), model)
    with pytest.raises(BadInput, match="feature 'spend' is a number; got 'forty'"):
        serving.check(item(spend="forty"), model)
    with pytest.raises(BadInput, match="feature 'tenure' is a number; got True"):
        row_values(item(tenure=True), model.spec)


def test_serving_answers_an_unseen_category_and_says_so():
    serving, model = served_model()
    answers = serving.predict(model, [item(), item(customer_id="c2", plan="platinum")])
    first, second = (a.response for a in answers)
    assert first["id"] == "c1" and first["label"] in ("no", "yes") and first["unseen"] is None
    assert second["unseen"] == ["plan='platinum'"]
    assert abs(sum(second["probabilities"].values()) - 1) < 1e-6
    assert serving.describe(model)["categorical"] == {"plan": ["basic", "plus", "pro"]}


def test_serving_answers_the_others_when_one_items_number_overflows_the_model_input():
    serving, model = served_model()
    items = [item(), item(customer_id="c2", spend=1e300), item(customer_id="c3")]
    first, bad, third = serving.predict(model, items)
    assert bad.error and bad.response == {
        "id": "c2",
        "error": "spend=1e+300 gives a non-finite model input (out of any plausible range)",
    }
    assert first.response["label"] in ("no", "yes") and third.response["id"] == "c3"
    stored = serving.input_rows([first, third])  # the service passes accepted answers only
    assert stored[0] == {"id": "c1", "tenure": 3.0, "spend": 40.5, "plan": "basic"}


def test_the_feature_blind_baseline_is_scored_beside_the_model():
    # The linear model is a candidate algorithm (tuning picks it where data is linear), not
    # a baseline: the gate requires beating what ignores the features, and the champion.
    from loopline.offline.train import train_model

    frame = customers(120).assign(split=["train"] * 80 + ["val"] * 20 + ["test"] * 20)
    p = params()
    task = p.plugin
    spec = task.fit_features(task.new_feature_spec(p), frame[frame["split"] == "train"])
    hp = {k: v.choices[0] if v.choices else v.low for k, v in task.default_space().items()}
    result, spec = train_model(task, frame, spec, {**hp, "algorithm": "gbm"}, p)
    evaluation = task.evaluate(frame, spec, result.model, p)
    assert set(evaluation.scores) == {"model", "majority_class_baseline"}


def test_the_report_ranks_features_by_permutation_importance(tmp_path):
    from loopline.tasks.tabular.report import permutation_importance

    frame = customers(120).assign(split="test")
    task, spec = fitted(frame)
    # A stand-in model that knows the rule (reads tenure and plan, never spend).
    table = permutation_importance(task, frame, spec, _Oracle(spec), seed=0)
    assert table["feature"].iloc[-1] == "spend" and table["importance"].iloc[-1] == 0
    assert set(table["feature"]) == {"tenure", "spend", "plan"}


def test_permutation_importance_matches_shuffling_the_raw_column_and_encoding_again():
    """The report encodes the rows once and permutes a column's block of inputs; that is the
    same as shuffling the raw column and encoding the table again, shuffle for shuffle."""
    from loopline.offline.train import predict
    from loopline.tasks.tabular.report import REPEATS, _quality, permutation_importance

    frame = customers(120).assign(split="test")
    task, spec = fitted(frame)
    model = _Oracle(spec)
    table = permutation_importance(task, frame, spec, model, seed=3)
    truth = task.targets(frame, spec, "test")
    quality = _quality(truth, spec)
    reference = quality(predict(model, task.inputs(frame, spec)))
    rng = np.random.default_rng(3)
    for column in spec.feature_columns:
        drops = []
        for _ in range(REPEATS):
            shuffled = frame.assign(**{column: rng.permutation(frame[column].to_numpy())})
            drops.append(reference - quality(predict(model, task.inputs(shuffled, spec))))
        row = table.set_index("feature").loc[column]
        assert row["importance"] == np.mean(drops) and row["std"] == np.std(drops), column


class _Oracle:
    """Predicts the rule the data follows, from its encoded inputs (basic and short)."""

    def __init__(self, spec) -> None:
        self.names = input_names(spec.options.numeric, spec.options.vocabulary)
        self.tenure_cut = (30 - spec.mean["tenure"]) / spec.std["tenure"]

    def eval(self):
        return self

    def predict(self, x):
        import torch

        basic = x[:, self.names.index("plan=basic")] == 1
        short = x[:, 0] < self.tenure_cut
        yes = (basic & short).float()
        return torch.stack([1 - yes, yes], dim=1)
