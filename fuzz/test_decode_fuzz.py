"""Fuzz the decode path for a time budget: ``make fuzz``.

Runs the properties of :mod:`tests.transforms.decode_fuzzing` (never
raises or crashes, every record accepted or rejected exactly once, accepted
rows survive Parquet and DuckDB) on freshly generated bodies until
``PIPELINE_DO_FUZZ_SECONDS`` (default 60) have passed. Not part of
``make test``: its length is its point. A crash kills the process, and
faulthandler (``-X faulthandler`` in the Makefile) prints where.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings

from tests.transforms.decode_fuzzing import (
    json_array_bodies,
    ndjson_bodies,
    policies,
    run_json_array,
    run_json_lines,
    schemas,
)

BUDGET_SECONDS = float(os.environ.get("PIPELINE_DO_FUZZ_SECONDS", "60"))
_ROUND = settings(max_examples=20, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
_MAX_ROUNDS = 10_000


def _for_budget(share: float, round_: Callable[[], Any]) -> int:
    """Run hypothesis rounds (fresh random examples each) until the budget share ends."""
    deadline = time.monotonic() + BUDGET_SECONDS * share
    rounds = 0
    while time.monotonic() < deadline and rounds < _MAX_ROUNDS:
        round_()
        rounds += 1
    return rounds


def test_fuzz_ndjson() -> None:
    @_ROUND
    @given(ndjson_bodies, schemas, policies)
    def one(body: bytes, fields: Any, policy: str) -> None:
        run_json_lines(body, fields, policy)

    assert _for_budget(0.5, one) >= 1


def test_fuzz_json_array() -> None:
    @_ROUND
    @given(json_array_bodies, schemas, policies)
    def one(body: bytes, fields: Any, policy: str) -> None:
        run_json_array(body, fields, policy)

    assert _for_budget(0.5, one) >= 1
