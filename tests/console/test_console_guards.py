"""What the console must never do, in a real browser: offer a key more than its scope
allows, or run markup that came from the API."""

from __future__ import annotations

import glob
import json
import os
from typing import Any

import pytest

from tests.conftest import ADMIN_KEY
from tests.console.conftest import Watched, make_key, sign_in
from tests.live import LiveServer, wait_for

pytestmark = pytest.mark.browser

MARKUP_EVENT = "<script>alert('event')</script><img src=x onerror=alert('img')>"
MARKUP_SQL = "SELECT page, '<img src=y onerror=alert(1)>' AS tag FROM events"


def _pipeline(server: LiveServer, name: str, sql: str = "SELECT * FROM events") -> None:
    server.ok("create", {"name": name, "sql": sql,
                         "schema": [{"name": "page", "type": "string"}]})


def _forced(page: Any, operation: str, name: str) -> Any:
    """Call the API from the page with the key the console holds, as a user could."""
    return page.evaluate("""async ([operation, name]) => {
        const key = window.sessionStorage.getItem("pipeline-do.key");
        const response = await fetch("/pipeline", {method: "POST",
            headers: {"Authorization": "Bearer " + key, "Content-Type": "application/json"},
            body: JSON.stringify({operation, parameters: {name}})});
        return [response.status, (await response.json()).error];
    }""", [operation, name])


def test_a_read_key_sees_no_controls_and_the_api_refuses_it(server: LiveServer,
                                                           watched: Watched) -> None:
    page = watched.page
    _pipeline(server, "read_only_view")
    key = make_key(server, "read")
    sign_in(page, server, key)
    assert page.inner_text("#who").endswith("scope read")
    page.wait_for_selector("#pipelines-table a:text-is('read_only_view')")
    assert page.locator("#new-pipeline").count() == 0
    assert page.is_hidden("#nav-create")

    page.click("#pipelines-table a:text-is('read_only_view')")
    page.wait_for_selector("#pipeline-status[data-status=created]")
    page.wait_for_selector("[data-chart=throughput]")
    page.wait_for_selector("#sql-versions button[data-version='1']")
    for control in ("#btn-start", "#btn-pause", "#btn-resume", "#btn-stop", "#btn-delete",
                    "#sql-editor", "#btn-apply"):
        assert page.locator(control).count() == 0, control

    status, error = _forced(page, "start", "read_only_view")
    assert status == 403 and error["code"] == "AUTHORIZATION_ERROR"
    status, error = _forced(page, "delete", "read_only_view")
    assert status == 403 and error["code"] == "AUTHORIZATION_ERROR"
    assert server.ok("get", {"name": "read_only_view"})["status"] == "created"

    # The key travels in headers only: no URL the page asked for, no server log, holds it.
    assert not [u for u in watched.urls if key in u]
    for log in glob.glob(os.path.join(server.data_dir, "**", "*.log"), recursive=True):
        if os.path.isdir(log):  # a pipeline's event log (buffers/<id>.log/), not a text log
            continue
        with open(log, errors="replace") as fh:
            assert key not in fh.read(), log
    assert not watched.dialogs and not watched.errors, (watched.dialogs, watched.errors)


def test_an_ingest_key_signs_in_and_is_told_it_can_only_send_events(server: LiveServer,
                                                                watched: Watched) -> None:
    page = watched.page
    sign_in(page, server, make_key(server, "ingest"))
    assert page.inner_text("#who").endswith("scope ingest")
    page.wait_for_selector("#list-status:has-text('only lets it send events')")
    assert page.locator("#pipelines-table").count() == 0
    assert page.is_hidden("#nav-create")


def test_a_wrong_key_is_refused_at_sign_in(server: LiveServer, watched: Watched) -> None:
    page = watched.page
    page.goto(server.url + "/console")
    page.fill("#key", "pdo_not_a_key")
    page.click("#sign-in-form button[type=submit]")
    page.wait_for_selector("#sign-in-error:has-text('AUTHENTICATION_ERROR')")
    assert page.evaluate("window.sessionStorage.length") == 0


def test_markup_from_the_api_shows_as_text_and_never_runs(server: LiveServer,
                                                          watched: Watched) -> None:
    page = watched.page
    _pipeline(server, "markup_probe", MARKUP_SQL)
    # Buffered (the pipeline is not started): the dry run's sample.
    server.ok("ingest", {"name": "markup_probe", "events": [{"page": MARKUP_EVENT}]})
    sign_in(page, server, ADMIN_KEY)
    page.goto(server.url + "/console#/p/markup_probe")
    page.wait_for_selector("#pipeline-status[data-status=created]")
    assert page.text_content("#sql-current") == MARKUP_SQL
    page.wait_for_selector("#sql-versions code")
    assert page.text_content("#sql-versions code") == MARKUP_SQL

    page.fill("#sql-editor", MARKUP_SQL + " WHERE page LIKE '<script>%'")
    page.wait_for_selector("#dry-run .rows-table")
    cells = page.locator("#dry-run .rows-table tbody td").all_text_contents()
    assert cells == [MARKUP_EVENT, "<img src=y onerror=alert(1)>"]

    # Nothing of it became an element, and no script of it ran.
    assert page.evaluate("document.querySelectorAll('script').length") == 1
    assert page.evaluate("document.querySelectorAll('img').length") == 0
    assert not watched.dialogs
    assert not watched.errors, watched.errors


def test_an_outage_shows_as_a_message_and_a_gap_in_the_charts(tmp_path: Any,
                                                              watched: Watched) -> None:
    page = watched.page
    own = LiveServer(str(tmp_path), api_key=ADMIN_KEY, args=("--job-workers", "1")).start()
    try:
        _pipeline(own, "outage_probe")
        sign_in(page, own, ADMIN_KEY)
        page.goto(own.url + "/console#/p/outage_probe")
        page.wait_for_selector("[data-chart=throughput] .s-in")
        own.kill()
        page.wait_for_selector("#poll-error:has-text('monitor has failed since')")
        own.start()
        page.wait_for_selector("#poll-error", state="hidden")
        wait_for(lambda: page.locator("[data-chart=throughput] polyline.s-in, "
                                      "[data-chart=throughput] circle.s-in").count() >= 2,
                 message="the line broken by the outage")
    finally:
        own.kill()
    assert not watched.dialogs


def test_dead_letters_appear_from_the_real_operation_and_show_as_text(
        server: LiveServer, watched: Watched) -> None:
    """A record rejected with markup in it shows in the dead-letters panel, as text."""
    page = watched.page
    server.ok("create", {"name": "dead_letter_probe",
                         "schema": [{"name": "page", "type": "int64"}]})
    record = {"page": "<script>alert('dead')</script>"}
    reply = server.ok("ingest", {"name": "dead_letter_probe", "events": [record]})
    assert [r["code"] for r in reply["rejected"]] == ["type_mismatch"]

    sign_in(page, server, ADMIN_KEY)
    page.goto(server.url + "/console#/p/dead_letter_probe")
    page.wait_for_selector("#dead-letters-table")
    assert page.locator("#dead-letters-unavailable").count() == 0
    assert page.locator("#dead-letters-table th").all_text_contents()[:3] == [
        "code", "message", "record"]
    cells = page.locator("#dead-letters-table td").all_text_contents()
    assert "type_mismatch" in cells
    assert [json.loads(c) for c in cells if c.startswith("{")] == [record]
    assert page.evaluate("document.querySelectorAll('script').length") == 1
    assert not watched.dialogs


def test_without_the_operation_the_dead_letters_panel_says_so(server: LiveServer,
                                                              watched: Watched) -> None:
    """An older server (no ``dead_letters``): ``whoami`` is made to leave it out, the one
    answer changed in the browser; the panel says so and never calls it."""
    page = watched.page
    _pipeline(server, "no_dead_letters")

    def handle(route: Any) -> None:
        if (route.request.post_data_json or {}).get("operation") == "whoami":
            response = route.fetch()
            body = response.json()
            body["data"]["operations"].remove("dead_letters")
            route.fulfill(response=response, json=body)
        else:
            route.continue_()

    page.route("**/pipeline", handle)
    sign_in(page, server, ADMIN_KEY)
    page.goto(server.url + "/console#/p/no_dead_letters")
    page.wait_for_selector("#dead-letters-unavailable")
    assert page.locator("#dead-letters-table").count() == 0
    # Playwright's sync API hears of requests only while one of its calls runs:
    # the wait drives it (a plain sleep would never see the poll).
    wait_for(lambda: page.wait_for_timeout(100) or "monitor" in watched.operations,
             message="the page's first poll")
    assert "dead_letters" not in watched.operations
