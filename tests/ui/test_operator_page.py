"""Issue 17's acceptance: the operator page in real headless Chromium against a real
`loopline ui` and a real `loopline serve` over a project with a served champion.

The page shows the champion, the services and the history; a prediction sent to the
service appears on the live panel within 2 s; a rollback from the page with the token
moves the alias, the service follows and the history shows the operator and the reason;
without the token it is refused. Each panel's screenshot lands in the test output folder.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from loopline import registry
from loopline.paths import ProjectPaths
from tests.serving.conftest import SITE, raw_readings
from tests.ui.conftest import (
    BIN,
    TOKEN,
    clean_environment,
    monitored_day,
    needs_chromium,
    operated_project,
    screenshot,
    service_process,
    ui_process,
)

pytestmark = [needs_chromium(), pytest.mark.e2e]
PANELS = ("#now", "#live", "#health", "#history", "#act")


def monitored_windows(root) -> None:
    """Rows in the project's monitoring table as `loopline monitor` writes them: four
    daily windows of live quality, the last two over the threshold (an alarm)."""
    from loopline.params import load_params
    from loopline.watch.monitor import MonitoringStore

    paths = ProjectPaths.at(root)
    store = MonitoringStore(paths.prediction_log_url(load_params(paths.params_file)))
    start = datetime(2021, 3, 1, tzinfo=UTC)
    rows = [
        monitored_day(
            "live_quality",
            start + timedelta(days=day),
            ratio,
            streak=max(0, day - 1),
            alarm=day == 3,
            note="live rmse over 1.0x the test split's" if ratio > 1 else None,
        )
        for day, ratio in enumerate([0.4, 0.7, 1.3, 1.6])
    ]
    store.add(rows)
    store.close()


@pytest.fixture(scope="module")
def site(registry_template, tmp_path_factory):
    """(project root, service URL, page URL): a service that has streamed four days of
    readings (forecasts and the readings that measure them), and its page."""
    from loopline.online.stream_client import stream_readings

    root = operated_project(registry_template, tmp_path_factory.mktemp("ui"))
    monitored_windows(root)
    with service_process(root) as service, ui_process(root, [service]) as ui:
        answers: list[dict] = []
        asyncio.run(stream_readings(service, raw_readings("2021-03-01", 96), answers.append))
        assert any("forecast" in a for a in answers), answers[:3]
        monitor_pass(root)
        yield root, service, ui


def monitor_pass(root) -> None:
    """A real `loopline monitor` pass over what the service logged (its report: a link)."""
    done = subprocess.run(
        [str(BIN / "loopline"), "monitor"],
        cwd=root,
        env=clean_environment(root),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode in (0, 3), done.stderr


def open_page(page, ui: str) -> None:
    page.goto(f"{ui}/models/solar")
    for panel in ("#now .body", "#now .services", "#history .body", "#live .body"):
        page.wait_for_selector(f"{panel}:not([data-state=loading])", timeout=30_000)


def test_the_page_shows_the_champion_services_history_and_live_picture(site, page):
    _root, _service, ui = site
    open_page(page, ui)
    now = page.locator("#now-cards").inner_text()
    assert "Champion v2" in now and "fixture seed 2" in now and "fixture-2" in now
    served = page.locator("#services tbody tr")
    served.first.wait_for()
    assert served.first.locator("td.served").inner_text() == "v2"
    assert "ready" in served.first.inner_text()
    history = page.locator("#history .timeline li")
    assert history.count() == 2
    assert "v1 → v2" in history.first.inner_text()
    page.wait_for_selector("#live-chart .uplot")  # the forecast against measured power
    assert "forecast one step ahead" in page.locator("#live .picture-head").inner_text()
    page.wait_for_selector("#health-chart .uplot")
    assert "live_quality v2" in page.locator("#health .alarms").inner_text()
    report = page.locator("#health .reports a").first
    assert report.get_attribute("href").startswith("/reports/")
    opened = httpx.get(f"{ui}{report.get_attribute('href')}")
    assert opened.status_code == 200 and "Monitor pass" in opened.text
    page.wait_for_selector("#diff-table")  # champion v2 against v1, before any move
    changed = page.locator("#diff-table").inner_text()
    assert "fixture-2" in changed and "fixture-1" in changed
    for panel in PANELS:
        assert screenshot(page, panel, panel.strip("#")).stat().st_size > 5_000
    page.screenshot(path=str(screenshot(page, "body", "page")), full_page=True)
    assert page.problems == []


def test_a_prediction_appears_on_the_live_panel_within_two_seconds(site, page):
    _root, service, ui = site
    open_page(page, ui)
    page.wait_for_selector("#stream-state:text('live')", timeout=10_000)
    newest = int(page.locator("#predictions tbody tr").first.get_attribute("data-id"))
    window = [
        {k: v for k, v in r.items() if k != "site_id"} for r in raw_readings("2021-03-05", 48)
    ]
    answered = httpx.post(
        f"{service}/predict", json={"windows": [{"site_id": SITE, "readings": window}]}, timeout=30
    )
    assert answered.status_code == 200, answered.text
    sent = time.monotonic()
    page.wait_for_selector(f"#predictions tbody tr[data-id='{newest + 1}']", timeout=2_000)
    assert time.monotonic() - sent < 2.0
    row = page.locator(f"#predictions tbody tr[data-id='{newest + 1}']").inner_text()
    assert "v2" in row and "predict" in row


def test_moves_need_the_token_and_a_rollback_is_followed_and_recorded(site, page):
    root, service, ui = site
    uri = ProjectPaths.at(root).tracking_uri()
    open_page(page, ui)
    page.select_option("#action", "rollback")
    page.fill("#reason", "<b>v2</b> drifts since March")
    page.fill("#operator", "alice")
    page.click("#move-button")  # no token
    page.wait_for_selector("#move-result.error")
    assert "401" in page.locator("#move-result").inner_text()
    assert str(registry.champion_version(uri, "solar").version) == "2"

    page.fill("#token", TOKEN)
    page.click("#move-button")
    page.wait_for_selector("#move-result.good")
    assert "v2 → v1" in page.locator("#move-result").inner_text()
    assert str(registry.champion_version(uri, "solar").version) == "1"
    entry = registry.champion_history(uri, "solar")[-1]
    assert (entry["who"], entry["via"], entry["why"]) == (
        "alice",
        "loopline ui",
        "<b>v2</b> drifts since March",
    )
    # The service follows within its poll; the page shows it, and the move in the history
    # as text: what an operator types is never markup.
    page.wait_for_selector("#services td.served:text('v1')", timeout=15_000)
    latest = page.locator("#history .timeline li").first
    page.wait_for_function(
        "document.querySelector('#history .timeline li').innerText.includes('alice')"
    )
    assert "by alice via loopline ui: <b>v2</b> drifts since March" in latest.inner_text()
    assert page.locator("#history .timeline b").count() == 0
    screenshot(page, "#history", "history-after-rollback")
    assert httpx.get(f"{service}/metadata").json()["model"]["version"] == "1"


def test_a_move_decided_on_a_stale_page_is_refused(site, page):
    root, _service, ui = site
    uri = ProjectPaths.at(root).tracking_uri()
    open_page(page, ui)
    champion = str(registry.champion_version(uri, "solar").version)
    other = "1" if champion == "2" else "2"
    # Another operator moves the champion after this page was drawn.
    registry.move_champion(uri, "solar", other, "bob's promotion", who="bob")
    page.select_option("#action", "promote")
    page.select_option("#version", champion)
    page.fill("#reason", "stale decision")
    page.fill("#operator", "carol")
    page.fill("#token", TOKEN)
    page.evaluate(f"state.champion = '{champion}'")  # what the page showed before bob moved
    page.click("#move-button")
    page.wait_for_selector("#move-result.error")
    assert "409" in page.locator("#move-result").inner_text()
    assert str(registry.champion_version(uri, "solar").version) == other


def test_each_panel_says_what_is_missing_and_the_page_still_loads(tmp_path, page):
    """No model, no history, an empty prediction log, a service that does not answer, no
    token: every panel says what is missing; nothing fails."""
    from loopline.health import free_port
    from tests.conftest import TINY, write_project

    root = write_project(tmp_path / "empty", TINY)
    dead = f"http://127.0.0.1:{free_port()}"
    with ui_process(root, [dead], token=None) as ui:
        page.goto(f"{ui}/models/solar")
        for panel in ("#now .body", "#live .body", "#health .body", "#history .body"):
            page.wait_for_selector(f"{panel}[data-state=missing]", timeout=30_000)
        assert "no registered model 'solar'" in page.locator("#now .body").inner_text()
        assert "holds no prediction of 'solar'" in page.locator("#live .body").inner_text()
        assert "monitor has not run" in page.locator("#health .body").inner_text()
        page.wait_for_selector("#services span.bad:text('not answering')")
        assert page.locator("#move-button").is_disabled()
        assert "Actions are off" in page.locator("#act").inner_text()
        refused = httpx.post(
            f"{ui}/api/models/solar/moves",
            json={"action": "rollback", "reason": "try it", "operator": "eve"},
            headers={"authorization": "Bearer anything"},
        )
        assert refused.status_code == 403 and "actions are off" in refused.json()["detail"]
        index = httpx.get(ui, follow_redirects=False)
        assert "no registered model yet" in index.text
        assert page.problems == []
