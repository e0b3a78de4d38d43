"""Suites on the real server: hostile input and faults.

Each module starts its own server(s) with the limits it needs; every test
that records outcomes gets its verdict added here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.outcomes import OutcomeLog, note_verdict


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: Any, call: Any) -> Iterator[None]:
    report = (yield).get_result()  # type: ignore[attr-defined]
    if report.when == "call" or report.outcome != "passed":
        note_verdict(item.nodeid, report.outcome)


@pytest.fixture(scope="module")
def outcomes(request: Any) -> Iterator[OutcomeLog]:
    log = OutcomeLog(request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_"))
    yield log
    log.write()
