"""The console end to end in headless Chromium against the real server: sign in, create
through the form, start, ingest over HTTP, watch the charts and files, dry-run and apply
new SQL, pause, resume, stop with its flush result, delete."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
import requests

from tests.conftest import ADMIN_KEY
from tests.console.conftest import Watched, screenshot, sign_in
from tests.live import LiveServer, wait_for

pytestmark = pytest.mark.browser

BATCH = 200


def _ingest(server: LiveServer, name: str, start: int, count: int = BATCH) -> None:
    events: list[Any] = [{"user_id": i, "page": f"/p/{i % 7}", "ts": "2026-12-03T12:00:00Z"}
              for i in range(start, start + count)]
    response = requests.post(f"{server.url}/pipelines/{name}/events", json=events, timeout=60,
                             headers={"Authorization": f"Bearer {server.api_key}"})
    assert response.status_code == 200 and response.json()["data"]["accepted"] == count


def _legend(page: Any, chart: str, series: str) -> float:
    value = page.get_attribute(f"[data-chart={chart}] [data-series={series}]", "data-last")
    return float(value) if value else 0.0


def _fill_create_form(page: Any, name: str) -> None:
    page.click("#nav-create")
    page.wait_for_selector("#create-form")
    page.fill("#f-name", name)
    page.click("#f-add-field")
    rows = page.locator(".schema-row")
    rows.nth(2).locator(".f-field-name").fill("page")
    page.select_option("#f-event-time", "ts")
    page.fill("#f-sql", "SELECT user_id, page, _event_time FROM events")
    page.fill("#f-partition", "dt=%Y-%m-%d")
    page.fill("#f-roll", "1")


def test_a_pipeline_from_form_to_delete(server: LiveServer, watched: Watched) -> None:
    page = watched.page
    sign_in(page, server, ADMIN_KEY)
    assert page.inner_text("#who").endswith("scope admin")
    name = "console_clicks"
    _fill_create_form(page, name)

    # The form shows the request it will send, and checks it (SQL included) as one types.
    page.wait_for_selector("#create-check-ok")
    sent = json.loads(page.inner_text("#definition-json"))
    assert sent["operation"] == "create"
    assert sent["parameters"] == {
        "name": name,
        "schema": [{"name": "user_id", "type": "int64", "required": True},
                   {"name": "ts", "type": "timestamp"}, {"name": "page", "type": "string"}],
        "event_time_field": "ts", "sql": "SELECT user_id, page, _event_time FROM events",
        "sink": {"format": "parquet", "partition_by": "dt=%Y-%m-%d",
                 "roll": {"interval_seconds": 1}}}
    assert "_event_time" in page.inner_text("#create-check .schema-table")
    page.fill("#f-sql", "SELECT nope FROM events")
    page.wait_for_selector("#create-check-error")
    assert "VALIDATION_ERROR (sql)" in page.inner_text("#create-check-error")
    page.fill("#f-sql", "SELECT user_id, page, _event_time FROM events")
    page.wait_for_selector("#create-check-ok")
    screenshot(page, "create-form")
    assert server.call("get", {"name": name}).status_code == 404  # a dry run creates nothing

    page.click("#f-submit")
    page.wait_for_selector("#pipeline-status[data-status=created]")
    assert server.ok("get", {"name": name})["schema"][2] == {"name": "page", "type": "string",
                                                            "required": False}

    page.click("#btn-start")
    page.wait_for_selector("#pipeline-status[data-status=running]")
    sent_events = 0

    def throughput_shows() -> bool:
        nonlocal sent_events
        _ingest(server, name, sent_events)
        sent_events += BATCH
        return _legend(page, "throughput", "in_eps") > 0 and page.locator(
            "#files-table tbody tr").count() > 0

    wait_for(throughput_shows, timeout=90, interval=0.5, message="throughput and files on the page")
    assert "dt=" in page.inner_text("#files-table")
    assert "dt=%Y-%m-%d/<file>" in page.inner_text("#partition-layout")
    for _ in range(12):  # a few more seconds of load, so the screenshot's charts have a shape
        _ingest(server, name, sent_events)
        sent_events += BATCH
        time.sleep(0.5)
    screenshot(page, "pipeline-under-load")

    # The list shows it with its counters.
    page.click("nav a[href='#/']")
    page.wait_for_selector(f"#pipelines-table a:text-is('{name}')")
    wait_for(lambda: page.locator("#pipelines-table tbody tr td").nth(3).inner_text() != "—",
             message="events in on the list")
    screenshot(page, "pipelines-list")
    page.click(f"#pipelines-table a:text-is('{name}')")
    page.wait_for_selector("#pipeline-status[data-status=running]")

    page.click("#btn-pause")
    page.wait_for_selector("#pipeline-status[data-status=paused]")
    _ingest(server, name, sent_events)  # buffered while paused: the dry run's sample
    sent_events += BATCH
    # Dry-run new SQL on the buffered events, then apply it: version 2 in the history.
    page.fill("#sql-editor", "SELECT user_id * 10 AS tenfold, page FROM events")
    page.wait_for_selector("#dry-run .rows-table")
    assert page.locator("#dry-run .rows-table th").all_text_contents() == ["tenfold", "page"]
    assert "int64" in page.inner_text("#dry-run .schema-table")
    page.fill("#sql-editor", "SELECT missing_column FROM events")
    page.wait_for_selector("#dry-run-error")
    assert "missing_column" in page.inner_text("#dry-run-error")
    assert page.is_disabled("#btn-apply")
    page.fill("#sql-editor", "SELECT user_id * 10 AS tenfold, page, _event_time FROM events")
    page.wait_for_selector("#dry-run .rows-table")
    page.click("#btn-apply")
    page.wait_for_selector("#apply-result")
    assert "SQL version 2" in page.inner_text("#apply-result")
    page.wait_for_selector("#sql-versions button[data-version='2']")
    page.click("#sql-versions button[data-version='1']")
    assert "SELECT user_id, page, _event_time" in page.inner_text("#sql-version-view")
    assert server.ok("get", {"name": name})["version"] == 2

    page.click("#btn-resume")
    page.wait_for_selector("#pipeline-status[data-status=running]")
    page.click("#btn-stop")
    page.wait_for_selector("#stop-result")
    page.wait_for_selector("#pipeline-status[data-status=stopped]")
    stopped = server.ok("get", {"name": name})
    assert stopped["events_in"] == sent_events
    assert re.fullmatch(r"Stopped: flushed \d+ events into \d+ files\.",
                        page.inner_text("#stop-result strong"))

    # The logs show the lifecycle; filtering by level hides the info lines.
    page.wait_for_selector("#log-lines li:has-text('pipeline stop')")
    page.select_option("#log-level", "error")
    page.wait_for_selector("#log-lines li[data-level=info]", state="detached")

    page.click("#btn-delete")
    assert name in page.inner_text("#delete-confirm")
    assert page.is_disabled("#delete-yes")
    page.fill("#delete-name", name)
    page.click("#delete-yes")
    page.wait_for_selector("#pipelines")
    assert server.call("get", {"name": name}).status_code == 404

    assert not watched.dialogs
    assert not watched.errors, watched.errors
    assert not [u for u in watched.urls if ADMIN_KEY in u]
