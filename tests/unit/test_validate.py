import pandas as pd
import pytest

from loopline.errors import SourceError, ValidationFailed
from loopline.offline.validate import check_bad_fraction, validate_rows
from loopline.params import parse_params
from loopline.tasks import get_task

SOLAR = get_task("solar")
PARAMS = parse_params({})


def readings():
    times = pd.date_range("2021-06-01", periods=6, freq="1h", tz="UTC").astype(str)
    return pd.DataFrame(
        {
            "site_id": "greensboro",
            "timestamp": times,
            "ghi": "100",
            "dni": "200",
            "dhi": "50",
            "temp_air": "20",
            "wind_speed": "2",
            "power_w": "800",
        }
    )


def test_clean_rows_pass():
    report = validate_rows(readings(), SOLAR.schema, SOLAR.rules(PARAMS), "solar")
    assert len(report.good) == 6 and report.bad.empty and report.ge_success
    assert str(report.good["timestamp"].dtype).startswith("datetime64")


def test_each_broken_row_is_quarantined_with_the_rules_it_broke():
    frame = readings()
    frame.loc[1, "ghi"] = "abc"  # not a number
    frame.loc[2, "power_w"] = "-5"  # out of range
    frame.loc[3, "timestamp"] = frame.loc[2, "timestamp"]  # duplicate reading
    frame.loc[4, "site_id"] = "atlantis"  # unknown site
    frame.loc[5, "temp_air"] = None  # null
    report = validate_rows(frame, SOLAR.schema, SOLAR.rules(PARAMS), "solar")
    reasons = dict(zip(report.bad["ghi"].index, report.bad["_reasons"], strict=True))
    assert len(report.bad) == 5 and len(report.good) == 1
    text = " | ".join(reasons.values())
    for rule in (
        "type:ghi",
        "power_w_in_range",
        "reading_not_duplicated",
        "site_id_known",
        "temp_air_not_null",
    ):
        assert rule in text
    assert report.bad.loc[0, "ghi"] == "abc"  # raw value kept for people to fix


def test_out_of_order_readings_are_flagged():
    frame = readings().iloc[[0, 2, 1, 3]].reset_index(drop=True)
    report = validate_rows(frame, SOLAR.schema, SOLAR.rules(PARAMS), "solar")
    assert report.bad["_reasons"].tolist() == ["timestamp_in_order"]


def test_missing_column_names_it():
    with pytest.raises(SourceError, match="power_w"):
        validate_rows(readings().drop(columns="power_w"), SOLAR.schema, SOLAR.rules(PARAMS), "s")


def test_too_many_bad_rows_stop_the_run_with_counts():
    frame = readings()
    frame.loc[:2, "ghi"] = "-1"
    report = validate_rows(frame, SOLAR.schema, SOLAR.rules(PARAMS), "solar")
    with pytest.raises(ValidationFailed, match=r"3 of 6 rows .*ghi_in_range: 3.*quarantine.csv"):
        check_bad_fraction(report, 0.05, "quarantine.csv")
    check_bad_fraction(report, 0.5, "quarantine.csv")  # within the limit: carries on


def test_a_reading_from_the_future_is_quarantined():
    frame = readings()
    frame.loc[5, "timestamp"] = "2921-06-01 05:00:00+00:00"  # a mistyped year
    report = validate_rows(frame, SOLAR.schema, SOLAR.rules(PARAMS), "solar")
    assert report.bad["_reasons"].tolist() == ["timestamp_not_in_future"]


def test_image_rules_give_one_reason_per_image():
    """`between` over many columns and `complete`: an image with one bright pixel breaks
    `pixels_in_range` once; an unreadable one (no pixels) breaks `image_readable` once."""
    from loopline.offline.validate import Rule

    columns = tuple(f"px_{i}" for i in range(16))
    frame = pd.DataFrame([[str(v % 16) for v in range(16)]] * 3, columns=list(columns))
    frame.insert(0, "id", ["ok", "bright", "unreadable"])
    frame.loc[1, "px_7"] = "99"
    frame.loc[2, list(columns)] = None
    schema = {"id": "string", **dict.fromkeys(columns, "float")}
    rules = [
        Rule("image_readable", "complete", columns=columns),
        Rule("pixels_in_range", "between", columns=columns, min=0, max=16),
    ]
    report = validate_rows(frame, schema, rules, "images")
    assert list(report.good["id"]) == ["ok"]
    reasons = dict(zip(report.bad["id"], report.bad["_reasons"], strict=True))
    assert reasons == {"bright": "pixels_in_range", "unreadable": "image_readable"}


def test_the_serving_contract_refuses_what_validation_quarantines_under_the_same_names():
    from loopline.offline.validate import ServingContract, coerce_types

    frame = readings()
    frame.loc[1, "ghi"] = "-1000000"
    frame.loc[2, "power_w"] = "-1e12"
    frame.loc[3, "site_id"] = "atlantis"
    frame.loc[4, "temp_air"] = None
    frame.loc[5, "timestamp"] = "2999-01-01T00:00:00+00:00"
    rules = SOLAR.rules(PARAMS)
    report = validate_rows(frame, SOLAR.schema, rules, "solar")
    typed, _ = coerce_types(frame, SOLAR.schema)
    served = ServingContract(rules, typed.columns).check(typed)
    assert [{b.rule for b in broken} for broken in served.values()] == [
        set(reasons.split("; ")) for reasons in report.bad["_reasons"]
    ]
    assert list(served) == [1, 2, 3, 4, 5]


def test_a_wide_table_is_validated_without_a_fragmented_frame():
    """386 columns (a team's wide table): pandas' PerformanceWarning, raised here as an
    error, would say the frame was built one column at a time."""
    import warnings

    from loopline.offline.validate import Rule

    columns = tuple(f"c{i}" for i in range(385))
    schema = {"id": "string", **dict.fromkeys(columns, "float")}
    frame = pd.DataFrame({"id": ["a", "b", "c"], **{c: [1.0, 2.0, "x"] for c in columns}})
    rules = [Rule("complete", "complete", columns=columns)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.PerformanceWarning)
        report = validate_rows(frame, schema, rules, "wide")
    assert len(report.good) == 2 and len(report.bad) == 1
