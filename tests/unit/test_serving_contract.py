"""The data contract at serving time (`ServingContract`): a task's rules evaluated on request
rows in plain numpy, per row, under the names validation quarantines with."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd

from loopline.offline.validate import Rule, ServingContract
from loopline.online.adapter import nonfinite_items

RULES = [
    Rule("ghi_not_null", "not_null", column="ghi"),
    Rule("ghi_in_range", "between", column="ghi", min=0, max=1500),
    Rule("power_w_in_range", "between", column="power_w", min=0, max=6000),
    Rule("pixels_in_range", "between", columns=("a", "b"), min=0, max=1),
    Rule("image_readable", "complete", columns=("a", "b")),
    Rule("site_id_known", "in_set", column="site_id", values=("x", "y")),
    Rule("timestamp_not_in_future", "not_future", column="timestamp"),
    Rule("document_not_blank", "not_blank", column="document"),
    Rule("reading_not_duplicated", "unique", columns=("site_id", "timestamp")),
    Rule("timestamp_in_order", "in_order", column="timestamp", group="site_id"),
    Rule("label_is_0_or_1", "in_set", column="label", values=(0.0, 1.0)),
]
COLUMNS = ["ghi", "power_w", "a", "b", "site_id", "timestamp", "document"]


def rows() -> dict[str, np.ndarray]:
    return {
        "ghi": np.array([100.0, np.nan, -1e6, 2000.0]),
        "power_w": np.array([10.0, 5.0, -1e12, 0.0]),
        "a": np.array([0.5, 2.0, np.nan, 0.0]),
        "b": np.array([0.5, 0.5, 0.2, -1.0]),
        "site_id": np.array(["x", "atlantis", None, "y"], dtype=object),
        "timestamp": np.array(
            ["2021-01-01", "2099-01-01", "2021-01-01", "2021-01-01"], dtype="datetime64[ns]"
        ),
        "document": np.array(["good", "  ", None, "fine"], dtype=object),
    }


EXPECTED = {
    1: [
        "ghi=nan breaks ghi_not_null",
        "a=2 breaks pixels_in_range",
        "site_id='atlantis' breaks site_id_known",
        "timestamp=2099-01-01T00:00:00 breaks timestamp_not_in_future",
        "document='  ' breaks document_not_blank",
    ],
    2: [
        "ghi=-1e+06 breaks ghi_in_range",
        "power_w=-1e+12 breaks power_w_in_range",
        "a=nan breaks image_readable",
    ],
    3: ["ghi=2000 breaks ghi_in_range", "b=-1 breaks pixels_in_range"],
}


def shown(found) -> dict[int, list[str]]:
    return {row: [str(b) for b in broken] for row, broken in found.items()}


def test_each_row_gets_the_rules_it_broke_by_validations_names_with_field_and_value():
    contract = ServingContract(RULES, COLUMNS)
    assert shown(contract.check(rows())) == EXPECTED  # row 0 broke none: left out
    assert shown(contract.check(pd.DataFrame(rows()))) == EXPECTED


def test_rules_across_a_dataset_or_on_columns_a_request_lacks_are_skipped_and_said_so():
    contract = ServingContract(RULES, COLUMNS)
    assert contract.skipped == {
        "reading_not_duplicated": "compares rows across a dataset",
        "timestamp_in_order": "compares rows across a dataset",
        "label_is_0_or_1": "a request does not hold its column(s)",
    }
    assert [r.name for r in contract.rules] == [r.name for r in RULES[:8]]


def test_one_row_in_plain_python_agrees_with_the_vectorised_check():
    contract = ServingContract(RULES, COLUMNS)
    columns = rows()
    for n in range(4):
        row = {c: v[n].item() if isinstance(v[n], np.generic) else v[n] for c, v in columns.items()}
        row["timestamp"] = pd.Timestamp(columns["timestamp"][n]).to_pydatetime()
        assert [str(b) for b in contract.check_row(row)] == EXPECTED.get(n, [])


def test_an_aware_time_and_missing_values_follow_validation():
    contract = ServingContract(RULES, COLUMNS)
    row = {c: None for c in COLUMNS} | {"timestamp": datetime(2999, 1, 1, tzinfo=UTC)}
    broken = [b.rule for b in contract.check_row(row)]
    # A missing value breaks only not_null / complete, as Great Expectations counts it.
    assert broken == ["ghi_not_null", "image_readable", "timestamp_not_in_future"]


def test_solar_readings_impossible_in_physics_break_the_rules_validation_quarantines():
    from loopline.params import parse_params
    from loopline.tasks import get_task
    from tests.conftest import TINY

    task = get_task("solar")
    contract = ServingContract(task.rules(parse_params(TINY)), [*task.schema])
    reading = {
        "site_id": "greensboro",
        "timestamp": datetime(2021, 2, 1, tzinfo=UTC),
        "ghi": -1e6,
        "dni": 0.0,
        "dhi": 0.0,
        "temp_air": 5.0,
        "wind_speed": 2.0,
        "power_w": -1e12,
    }
    assert [str(b) for b in contract.check_row(reading)] == [
        "ghi=-1e+06 breaks ghi_in_range",
        "power_w=-1e+12 breaks power_w_in_range",
    ]
    assert set(contract.skipped) == {"reading_not_duplicated", "timestamp_in_order"}


def test_no_items_hold_no_nonfinite_value():
    """An empty batch (a request `{"<input_name>": []}`) is none bad, not a reshape error."""
    assert nonfinite_items(np.zeros((0, 24, 3), dtype=np.float32)).tolist() == []
    found = nonfinite_items(np.array([[1.0, np.nan], [2.0, 3.0]]))
    assert found.tolist() == [True, False]


def test_a_non_finite_input_of_an_item_of_rows_names_its_column_and_row():
    """An item of several rows (a sequence, a set of items) is named by the column of its
    last axis and the row, not by a flat index past the column names."""
    from loopline.online.adapter import input_problem

    one_row = np.array([1.0, np.inf, 2.0])
    assert input_problem(one_row, ["a", "b", "c"], {"b": 1e300}).startswith("b=1e+300 gives")
    rows = np.ones((4, 3))
    rows[2, 1] = np.nan
    assert input_problem(rows, ["a", "b", "c"], {}).startswith("b (row 2 of the item) gives")
    assert input_problem(rows, ["x"], {}).startswith("model input (2, 1) gives")
