"""A stream chunk's readings are taken together (their data contract checked in one pass,
their raw rows made as they come in) exactly as the same lines pushed one at a time: the
same refusals word for word, events, windows, and rows to store."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.serving.conftest import SITE, raw_readings
from tests.serving.test_isolation import solar_serving
from tests.serving.test_service_api import REQUIRED


@pytest.fixture
def champion(served_project):
    from loopline.online.models import load_version, resolve_alias
    from loopline.paths import ProjectPaths

    uri = ProjectPaths.at(served_project).tracking_uri()
    found = resolve_alias(uri, "solar", "champion")
    return load_version(uri, found, "champion", served_project / "cache", threads=1)


def awkward_lines(serving) -> list:
    """A series with, among good readings: one out of range, one an hour late in another
    zone, a repeat, an unknown site, a gap, and one far in the future."""
    rows = raw_readings("2021-02-01", REQUIRED + 12)
    rows[REQUIRED + 1] = dict(rows[REQUIRED + 1], ghi=-5.0)
    east = pd.Timestamp(rows[REQUIRED + 3]["timestamp"]).tz_convert("Etc/GMT-2").isoformat()
    rows[REQUIRED + 3] = dict(rows[REQUIRED + 3], timestamp=east)
    rows.insert(REQUIRED + 5, rows[REQUIRED + 4])  # the same reading again
    rows.insert(REQUIRED + 7, dict(rows[REQUIRED + 6], site_id="nowhere"))
    del rows[REQUIRED + 9]  # a gap
    rows.append(dict(rows[-1], timestamp="2150-01-01T00:00:00+00:00"))
    return [serving.StreamLine.model_validate(r) for r in rows]


def taken(result) -> list:
    """What `push` returned for one line, comparable: events, refusals, windows."""
    from loopline.online.adapter import Refused

    items, events = result
    out = [("event", event) for event in events]
    for line, item in items:
        if isinstance(item, Refused):
            out.append((line, "refused", item.answer.response, item.answer.refused))
        else:
            rows = {c: v.tolist() for c, v in item.rows.items()}
            out.append((line, "window", item.key, item.fresh, item.readings, rows))
    return out


def test_a_chunk_is_taken_as_its_lines_one_at_a_time(champion):
    from loopline.tasks.forecast.serving import CHUNK_CHECK_MIN

    serving = solar_serving([])
    lines = list(enumerate(awkward_lines(serving), start=1))
    assert len(lines) >= CHUNK_CHECK_MIN  # checked in one pass
    together = serving.open_stream(champion).push_many(lines)
    alone = serving.open_stream(champion)
    assert [taken(r) for r in together] == [taken(alone.push(n, item)) for n, item in lines]
    refusals = [t[2]["error"] for r in together for t in taken(r) if t[1] == "refused"]
    assert refusals == [
        "refused by the data contract: ghi=-5 breaks ghi_in_range",
        "refused by the data contract: timestamp=2150-01-01T00:00:00+00:00 breaks "
        "timestamp_not_in_future",
    ]
    events = [t[1] for r in together for t in taken(r) if t[0] == "event"]
    assert ["notice" if "notice" in e else "error" for e in events] == [
        "notice",  # after the refused reading
        "error",  # the repeat
        "error",  # the unknown site
        "notice",  # the gap
    ]
    # The one pass flagged the refused two and the unknown site's (refused before the
    # contract), so the others were not checked again.
    flagged = serving.open_stream(champion)._flagged([item for _, item in lines])
    assert flagged == {REQUIRED + 1, REQUIRED + 7, len(lines) - 1}


def test_a_streams_rows_are_the_rows_its_windows_hold(champion):
    """The rows a stream made as its readings came in are the ones read back from its
    windows' arrays (how a `/predict` window's rows are made)."""
    from loopline.online.adapter import Answer
    from loopline.tasks.forecast.serving import StreamWindow, Window

    serving = solar_serving([])
    lines = list(enumerate(awkward_lines(serving), start=1))
    windows = [
        item
        for items, _ in serving.open_stream(champion).push_many(lines)
        for _, item in items
        if isinstance(item, StreamWindow)
    ]
    made = serving.input_rows([Answer({}, source=w) for w in windows])
    arrays = [Window(w.key, w.rows, w.fresh) for w in windows]
    read = solar_serving([]).input_rows([Answer({}, source=w) for w in arrays])
    assert made == read and len(made) == sum(w.fresh for w in windows)
    assert {r["site_id"] for r in made} == {SITE}
    stamps = pd.to_datetime([r["timestamp"] for r in made], utc=True)
    assert stamps.is_monotonic_increasing and stamps.is_unique
