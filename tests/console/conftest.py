"""The console in a real browser: Debian's headless Chromium, driven by Playwright.

Playwright's own browser download cannot work on these machines, so the
browser is the system's ``/usr/bin/chromium`` (``.ci/run`` installs it) with
a fresh empty profile per test module. The server is the real one, started
as ``serve`` does (:class:`tests.live.LiveServer`). Every page records the
dialogs it opened (an ``alert`` from injected markup would be one), the
browser console's errors (a Content-Security-Policy violation is one) and
every URL it requested, for the tests to assert on.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ADMIN_KEY
from tests.live import LiveServer

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
WAIT_MS = 60_000  # the longest a page may take to show what a step expects


@dataclass
class Watched:
    """A page and what it did: dialogs opened, errors (scripts', CSP violations), URLs
    requested and the API operations called."""

    page: Any
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    operations: list[str] = field(default_factory=list)  # of the POST /pipeline calls


@pytest.fixture(scope="module")
def server(tmp_path_factory: Any) -> Iterator[LiveServer]:
    data_dir = tmp_path_factory.mktemp("console-server")
    live = LiveServer(str(data_dir), api_key=ADMIN_KEY, args=("--job-workers", "1")).start()
    try:
        yield live
    finally:
        live.kill()


@pytest.fixture(scope="module")
def browser_context() -> Iterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium chromium-driver "
                    "(.ci/run does)")
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="pdo-chromium-")
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=FLAGS,
                viewport={"width": 1280, "height": 900})
            context.set_default_timeout(WAIT_MS)
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def watched(browser_context: Any) -> Iterator[Watched]:
    page = browser_context.new_page()
    seen = Watched(page)

    def on_dialog(dialog: Any) -> None:
        seen.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    page.on("dialog", on_dialog)
    def on_console(message: Any) -> None:
        # A refused API call (a 4xx the test provoked) is logged as a failed load: not an error here.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            seen.errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: seen.errors.append(str(exc)))
    def on_request(request: Any) -> None:
        seen.urls.append(request.url)
        if request.method == "POST" and request.url.endswith("/pipeline"):
            seen.operations.append(json.loads(request.post_data or "{}").get("operation"))

    page.on("request", on_request)
    try:
        yield seen
    finally:
        page.close()


def sign_in(page: Any, server: LiveServer, key: str) -> None:
    page.goto(server.url + "/console")
    page.fill("#key", key)
    page.click("#sign-in-form button[type=submit]")
    page.wait_for_selector("#who:not(:empty)")


def screenshot(page: Any, name: str) -> Path:
    """Save the whole page under tests/artifacts/ (git-ignored)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"console-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def make_key(server: LiveServer, scope: str) -> str:
    """``pipeline-do keys create`` on the server's data dir; the key is the last line."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "control_api.cli", "keys", "create",
                          "--scope", scope, "--data-dir", server.data_dir],
                         check=True, capture_output=True, text=True, timeout=60).stdout
    return out.strip().splitlines()[-1]
