"""The text family (`loopline.tasks.text`): settings, label sets, quarantine, evaluation.

Fixtures are written here (a few made-up tickets); no model is trained.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from loopline.errors import ConfigError
from loopline.offline.evaluate import evaluate_classifier, score_classes
from loopline.params import parse_params
from loopline.tasks.text.task import TextOptions, label_order

COLUMNS = {"key_column": "ticket_id", "text_column": "body", "label_column": "team"}


def params(**section):
    return parse_params({"task": "text", "text": {**COLUMNS, **section}})


def tickets(teams: list) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ticket_id": [f"t{i}" for i in range(len(teams))],
            "body": [f"ticket number {i} 결제 문의" for i in range(len(teams))],
            "team": teams,
        }
    )


def test_bind_takes_columns_split_and_labels_from_the_section():
    task = params(group_column="customer", labels=["billing", "bug", 3]).plugin
    assert task.schema == {
        "ticket_id": "string",
        "body": "string",
        "team": "string",
        "customer": "string",
    }
    assert (task.key_columns, task.target_column, task.text_column) == (
        ["ticket_id"],
        "team",
        "body",
    )
    assert task.split_kind == "grouped" and task.group_column == "customer"
    assert task.fixed_labels == ("billing", "bug", "3")  # integers are stored as text
    assert params().plugin.split_kind == "stratified"
    # The discovered task is not changed by binding.
    assert params().discovered.key_columns == ["id"]


@pytest.mark.parametrize(
    ("section", "named"),
    [
        ({"text_column": "team"}, "label_column and text_column are both 'team'"),
        ({"group_column": "ticket_id"}, "group_column and key_column are both 'ticket_id'"),
        ({"label_column": "split"}, "label_column 'split' is a column Loopline adds"),
        ({"labels": ["billing"]}, "text.labels"),
        ({"labels": ["bug", "bug", "billing"]}, "labels ['bug'] are given more than once"),
        ({"label_colum": "team"}, "text.label_colum: unknown key"),
    ],
)
def test_settings_it_cannot_work_with_are_refused_naming_the_key(section, named):
    with pytest.raises(ConfigError) as error:
        params(**section)
    assert named in str(error.value)


def test_labels_null_takes_the_training_splits_sorted_labels():
    task = params().plugin
    spec = task.new_feature_spec(params())
    assert spec.labels is None
    fitted = task.fit_features(spec, tickets(["bug", "account", "billing", "bug", None]))
    assert fitted.labels == ["account", "billing", "bug"]
    assert label_order(["10", "2", "b", "3", "a"]) == ["2", "3", "10", "a", "b"]
    with pytest.raises(ValueError, match="1 distinct label"):
        task.fit_features(spec, tickets(["bug", "bug"]))


def test_a_fixed_label_set_is_kept_and_an_unknown_label_is_named():
    p = params(labels=["billing", "bug", "account"])
    task = p.plugin
    spec = task.fit_features(task.new_feature_spec(p), tickets(["bug", "bug"]))
    assert spec.labels == ["billing", "bug", "account"]  # the given order is the output order
    rows = tickets(["bug", "refund"]).assign(split="test")
    with pytest.raises(ValueError, match=r"\['refund'\] of column 'team'"):
        task.examples(rows, spec, "test")


def test_a_label_outside_a_fixed_set_is_quarantined_naming_the_value():
    from loopline.offline.validate import validate_rows

    p = params(labels=["billing", "bug", "account"])
    task = p.plugin
    rows = tickets(["bug", "refund", None, "billing"])
    report = validate_rows(rows, task.schema_for(p), task.rules(p), suite_name="text-test")
    assert report.bad["_reasons"].tolist() == ["team_in_labels: team='refund'"]
    assert len(report.good) == 3  # an unlabeled row joins the labeling pool, not quarantine


def test_a_champion_with_another_label_set_is_incomparable():
    p = params()
    spec = p.plugin.new_feature_spec(p)
    candidate = spec.__class__(**{**spec.__dict__, "labels": ["account", "billing", "bug"]})
    champion = spec.__class__(**{**spec.__dict__, "labels": ["billing", "bug"]})
    labels = np.array([0, 1, 2, 1])
    evaluation = evaluate_classifier(
        labels,
        {"model": np.eye(3)[labels]},
        candidate,
        ("session", champion),
        lambda session, own: pytest.fail("an incomparable champion is not run"),
        p,
    )
    assert evaluation.decision.promote is False
    assert "champion" not in evaluation.scores
    assert any("labels are ['billing', 'bug']" in r for r in evaluation.decision.reasons)


def test_macro_f1_is_given_beside_accuracy_with_three_classes():
    three = score_classes(np.array([0, 1, 2, 2]), np.eye(3)[[0, 1, 2, 1]])
    assert three.macro_f1 == pytest.approx(three.f1) and three.macro_f1 < 1.0
    two = score_classes(np.array([0, 1]), np.eye(2)[[0, 1]])
    assert two.macro_f1 is None
    assert "macro F1" in three.headline() and "macro" not in two.headline()


def test_options_of_a_model_saved_before_the_text_limit_was_stored_still_load():
    old = {
        "text_column": "document",
        "key_column": "id",
        "max_length": 128,
        "max_repeat": 2,
        "min_count": 2,
        "max_vocab": 6000,
        "pretrained_encoder": None,
        "fine_tuning": "none",
        "vocabulary": None,
    }
    assert TextOptions.from_dict(old).max_text_chars == 2000


def test_reviews_is_the_text_family_on_the_nsmc_columns():
    from loopline.tasks.reviews import ReviewsTask
    from loopline.tasks.text import TextTask

    reviews = parse_params({"task": "reviews"}).plugin
    assert isinstance(reviews, ReviewsTask) and isinstance(reviews, TextTask)
    assert (reviews.text_column, reviews.group_column, reviews.split_kind) == (
        "document",
        "movie_id",
        "grouped",
    )
    names = reviews.label_names(pd.Series([0.0, 1.0, np.nan]))
    assert names.tolist()[:2] == ["negative", "positive"] and names.isna().tolist()[2]
    assert reviews.label_values(["positive", "negative"]) == [1.0, 0.0]


def test_peoples_labels_join_as_label_names_of_the_column():
    p = params(labels=["billing", "bug", "account"], group_column="customer")
    task = p.plugin
    spec = task.new_feature_spec(p)
    rows = tickets(["bug", None]).assign(customer=["c1", "c2"])
    human = pd.DataFrame({"id": ["t1", "outside-1"], "label": [2, 0], "text": ["x", "환불"]})
    merged = task.add_labels(rows, spec, human)
    assert merged["team"].tolist() == ["bug", "account", "billing"]
    assert merged["customer"].tolist() == ["c1", "c2", "labeled:outside-1"]
    pool = task.unlabeled_pool(rows)
    assert pool["id"].tolist() == ["t1"] and pool["origin"].tolist() == ["data"]
    with pytest.raises(ValueError, match=r"text\.labels is null"):
        params().plugin.unlabeled_pool(rows)
