"""What the hostile-input and fault suites saw, kept for the README's table.

Each suite records one row per attack or fault: what the contract says
should happen, what the server did, and the event counts (acknowledged,
delivered, lost, duplicated). ``OutcomeLog.write`` puts them in
``tests/artifacts/<suite>.json`` (git-ignored);
``scripts/outcomes_table.py`` renders those files as Markdown.

A row remembers the test that recorded it (pytest's ``PYTEST_CURRENT_TEST``),
and ``tests/integration/conftest.py`` adds that test's result as the verdict.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["ARTIFACTS_DIR", "Outcome", "OutcomeLog", "note_verdict"]

ARTIFACTS_DIR = Path(__file__).resolve().parents[1] / "artifacts"
_verdicts: dict[str, str] = {}  # pytest node id -> "passed" | "failed" | "skipped"


def note_verdict(nodeid: str, outcome: str) -> None:
    """Called from the conftest's report hook; a failure is never overwritten."""
    if _verdicts.get(nodeid) != "failed":
        _verdicts[nodeid] = outcome


@dataclass
class Outcome:
    case: str  # the attack or fault
    expected: str  # what the contract says
    observed: str = ""  # what the server did
    acknowledged: int | None = None
    delivered: int | None = None
    lost: int | None = None
    duplicated: int | None = None
    test: str = ""  # the node id of the test that recorded the row
    verdict: str = "not run"

    def count(self, acknowledged: Iterable[int], delivered: Counter[int]) -> None:
        """Counts of one case from its acknowledged ids and the ids read back."""
        acked = set(acknowledged)
        self.acknowledged = len(acked)
        self.delivered = sum(1 for i in acked if delivered[i])
        self.lost = self.acknowledged - self.delivered
        self.duplicated = sum(delivered[i] - 1 for i in acked if delivered[i] > 1)


class OutcomeLog:
    """The rows of one suite, by case; recording a case again updates its row."""

    def __init__(self, suite: str) -> None:
        self.suite = suite
        self.rows: dict[str, Outcome] = {}

    def record(self, case: str, expected: str, observed: str = "", **counts: Any) -> Outcome:
        row = self.rows.get(case)
        if row is None:
            row = self.rows[case] = Outcome(case, expected, test=_current_test())
        row.expected, row.observed = expected or row.expected, observed or row.observed
        for name, value in counts.items():
            setattr(row, name, value)
        return row

    def write(self) -> Path:
        for row in self.rows.values():
            row.verdict = _verdicts.get(row.test, "not run")
        ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS_DIR / f"{self.suite}.json"
        path.write_text(json.dumps({
            "suite": self.suite,
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "outcomes": [asdict(row) for row in self.rows.values()],
        }, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        return path


def _current_test() -> str:
    # "tests/integration/test_x.py::test_y[case] (call)"
    return os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
