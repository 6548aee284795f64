import sqlite3

import pandas as pd
import pytest

from loopline.config import IngestParams
from loopline.errors import SourceError
from loopline.offline.datastore import SnapshotStore, atomic_write_text, write_quarantine
from loopline.offline.ingest import batch_watermarks, newer_than, read_source, within_bounds
from loopline.params import parse_params
from loopline.tasks import get_task

SOLAR = get_task("solar")


def rows(hours, site="greensboro"):
    times = pd.date_range("2021-01-01", periods=hours, freq="1h", tz="UTC")
    return pd.DataFrame(
        {
            "site_id": site,
            "timestamp": times,
            "ghi": 1.0,
            "dni": 1.0,
            "dhi": 1.0,
            "temp_air": 5.0,
            "wind_speed": 1.0,
            "power_w": 10.0,
        }
    )


def test_commit_appends_partitions_and_moves_watermarks(tmp_path):
    store = SnapshotStore(tmp_path / "solar")
    first = rows(5)
    store.commit(first, batch_watermarks(first, SOLAR), {})
    fresh = newer_than(rows(8), store.watermarks(), SOLAR)
    assert len(fresh) == 3  # only the hours after the watermark
    store.commit(fresh, batch_watermarks(fresh, SOLAR), {})
    assert len(store.load()) == 8
    assert sorted(p.name for p in (tmp_path / "solar").glob("part-*")) == [
        "part-00000.parquet",
        "part-00001.parquet",
    ]


def test_a_crash_before_the_manifest_moves_never_duplicates_rows(tmp_path):
    store = SnapshotStore(tmp_path / "solar")
    store.commit(rows(3), {}, {})
    # A crashed run wrote its partition but never recorded it.
    rows(3).to_parquet(tmp_path / "solar" / "part-00001.parquet")
    assert len(store.load()) == 3
    store.commit(rows(2), {}, {})
    assert len(store.load()) == 5


def test_atomic_write_leaves_no_temp_files(tmp_path):
    target = tmp_path / "x" / "manifest.json"
    atomic_write_text(target, "{}")
    atomic_write_text(target, '{"a": 1}')
    assert target.read_text() == '{"a": 1}'
    assert [p.name for p in target.parent.iterdir()] == ["manifest.json"]


def test_quarantine_is_written_with_reasons(tmp_path):
    bad = pd.DataFrame({"ghi": ["abc"], "_reasons": ["type:ghi"]})
    path = write_quarantine(bad, tmp_path / "quarantine", "batch1")
    assert "type:ghi" in path.read_text()
    assert write_quarantine(bad.iloc[:0], tmp_path, "empty") is None


def test_missing_file_source_is_named(tmp_path):
    params = parse_params({"ingest": {"source": "incoming/*.csv"}})
    with pytest.raises(SourceError, match=r"incoming/\*\.csv"):
        read_source(params, SOLAR, tmp_path)


def test_unreadable_file_source_is_named(tmp_path):
    (tmp_path / "broken.parquet").write_text("not parquet")
    params = parse_params({"ingest": {"source": "broken.parquet"}})
    with pytest.raises(SourceError, match=r"broken\.parquet"):
        read_source(params, SOLAR, tmp_path)


def test_csv_glob_source_reads_every_file(tmp_path):
    (tmp_path / "in").mkdir()
    rows(3).to_csv(tmp_path / "in" / "a.csv", index=False)
    rows(2, site="sand_point").to_csv(tmp_path / "in" / "b.csv", index=False)
    frame = read_source(parse_params({"ingest": {"source": "in/*.csv"}}), SOLAR, tmp_path)
    assert len(frame) == 5 and set(frame.site_id) == {"greensboro", "sand_point"}


def test_a_csv_reads_as_the_same_text_whichever_parser_takes_it(tmp_path):
    """Missing-value spellings, quoted separators and line breaks read alike by pyarrow's
    parser and pandas' own; a row short of fields (which pyarrow refuses) is still read,
    its missing cells empty, for validation to quarantine."""
    from loopline.offline.ingest import read_text_table

    tricky = 'a,b,c\n1,,x\n"",NA,null\n 3 ,NaN,"q,r"\n4,n/a,"two\nlines"\n5,None,#N/A\n'
    (tmp_path / "tricky.csv").write_text(tricky)
    fast = read_text_table(str(tmp_path / "tricky.csv"), ",")
    plain = pd.read_csv(tmp_path / "tricky.csv", dtype=str, keep_default_na=True)
    pd.testing.assert_frame_equal(fast, plain)
    (tmp_path / "short.csv").write_text("a,b\n1,2\n3\n")
    short = read_text_table(str(tmp_path / "short.csv"), ",")
    assert short["a"].tolist() == ["1", "3"] and short["b"].isna().tolist() == [False, True]


def test_sql_source_reads_a_query(tmp_path):
    db = tmp_path / "weather.db"
    with sqlite3.connect(db) as connection:
        rows(4).assign(timestamp=lambda f: f.timestamp.astype(str)).to_sql(
            "readings", connection, index=False
        )
    params = parse_params(
        {"ingest": {"source": f"sqlite:///{db}", "query": "select * from readings where ghi > 0"}}
    )
    assert len(read_source(params, SOLAR, tmp_path)) == 4


def test_sql_source_error_names_the_source_without_password(tmp_path):
    params = parse_params(
        {"ingest": {"source": "postgresql+psycopg://u:secret@127.0.0.1:1/x", "query": "select 1"}}
    )
    with pytest.raises(SourceError) as info:
        read_source(params, SOLAR, tmp_path)
    assert "127.0.0.1:1/x" in str(info.value) and "secret" not in str(info.value)


def test_builtin_source_must_match_the_task(tmp_path):
    with pytest.raises(SourceError, match="builtin:digits"):
        read_source(parse_params({"ingest": {"source": "builtin:digits"}}), SOLAR, tmp_path)


def test_bounds_keep_unparseable_times_for_validation():
    frame = rows(4).assign(timestamp=lambda f: f.timestamp.astype(str))
    frame.loc[1, "timestamp"] = "not a time"
    kept = within_bounds(frame, IngestParams(start="2021-01-01 02:00"), SOLAR)
    assert kept["timestamp"].tolist() == ["not a time", frame.timestamp[2], frame.timestamp[3]]


def test_a_retried_commit_adds_nothing(tmp_path):
    store = SnapshotStore(tmp_path / "solar")
    store.commit(rows(3), {}, {"batch_id": "b1"})
    store.commit(rows(3), {}, {"batch_id": "b1"})  # the same batch again (a retry)
    assert len(store.load()) == 3


def test_an_untimed_bad_row_is_quarantined_once(tmp_path):
    from loopline.offline.ingest import untimed_fingerprints
    from loopline.offline.validate import validate_rows

    source = rows(3).astype(str)
    source.loc[1, "timestamp"] = "yesterday-ish"
    store = SnapshotStore(tmp_path / "solar")
    params = parse_params({"solar": {"sites": ["greensboro"]}})
    report = validate_rows(source, SOLAR.schema, SOLAR.rules(params), "solar")
    assert len(report.bad) == 1
    store.commit(
        report.good,
        batch_watermarks(source, SOLAR),
        {"untimed_quarantined": untimed_fingerprints(report.bad, SOLAR)},
    )
    again = newer_than(source, store.watermarks(), SOLAR, store.untimed_quarantined())
    assert again.empty  # neither the good rows nor the bad one come back


def test_a_source_without_the_group_column_is_left_to_validation():
    frame = rows(2).drop(columns="site_id")
    assert len(newer_than(frame, {"greensboro": "2021-01-01T00:00:00+00:00"}, SOLAR)) == 2


def test_snapshot_version_ignores_quarantine_and_follows_commits(tmp_path):
    store = SnapshotStore(tmp_path / "data" / "solar")
    assert store.version() == "empty"
    store.commit(rows(2), batch_watermarks(rows(2), SOLAR), {})
    first = store.version()
    write_quarantine(pd.DataFrame({"a": ["x"], "_reasons": ["r"]}), tmp_path / "data" / "q", "b")
    assert store.version() == first
    store.commit(rows(4).iloc[2:], batch_watermarks(rows(4), SOLAR), {})
    assert store.version() != first
