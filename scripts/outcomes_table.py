"""Render the hostile-input and fault suites' outcomes as a Markdown table for the README.

    python scripts/outcomes_table.py            # one row per kind of attack or fault
    python scripts/outcomes_table.py --cases    # one row per generated case
    python scripts/outcomes_table.py tests/artifacts/faults.json

Reads the JSON files the suites write (``tests/integration/outcomes.py``),
by default every ``tests/artifacts/*.json``, and prints a table: attack or
fault, what the contract says, what the server did, the event counts, and
whether it held. A case holds when its test passed and it lost and
duplicated nothing. By default the generated variants of one attack (one
test function) share a row, with how many held and the outcomes seen.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

ARTIFACTS_DIR = Path(__file__).resolve().parents[1] / "tests" / "artifacts"
COLUMNS = ("Suite", "Attack or fault", "Expected", "Outcome", "Acknowledged", "Delivered", "Lost",
           "Duplicated", "Held")


def held(row: dict[str, Any]) -> str:
    if row.get("verdict") != "passed":
        return "no" if row.get("verdict") == "failed" else row.get("verdict") or "not run"
    return "yes" if not row.get("lost") and not row.get("duplicated") else "no"


def _cell(value: Any) -> str:
    text = "-" if value is None or value == "" else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _kind(row: dict[str, Any]) -> str:
    """The test function's name, as words: the attack or fault all its variants share."""
    function = row["test"].split("::")[-1].split("[")[0] or row["case"]
    return function.removeprefix("test_").replace("_", " ")


def render_kinds(paths: list[Path]) -> str:
    columns = ("Suite", "Attack or fault", "Variants held", "Outcomes seen", "Acknowledged",
               "Delivered", "Lost", "Duplicated")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for path in paths:
        document = json.loads(path.read_text(encoding="utf-8"))
        kinds: dict[str, list[dict[str, Any]]] = {}
        for row in document["outcomes"]:
            kinds.setdefault(_kind(row), []).append(row)
        for kind, rows in kinds.items():
            seen = Counter(row["observed"] for row in rows)
            outcomes = "; ".join(f"{text} (x{n})" if n > 1 else text
                                 for text, n in seen.most_common(3))
            if len(seen) > 3:
                outcomes += f"; {len(seen) - 3} more"
            sums = [sum(row.get(key) or 0 for row in rows) if any(
                row.get(key) is not None for row in rows) else None
                for key in ("acknowledged", "delivered", "lost", "duplicated")]
            held_count = sum(held(row) == "yes" for row in rows)
            lines.append("| " + " | ".join(_cell(v) for v in (
                document["suite"].replace("_", " "), kind, f"{held_count} of {len(rows)}",
                outcomes, *sums)) + " |")
    return "\n".join(lines)


def render(paths: list[Path]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    totals = {"cases": 0, "held": 0, "acknowledged": 0, "delivered": 0, "lost": 0, "duplicated": 0}
    for path in paths:
        document = json.loads(path.read_text(encoding="utf-8"))
        suite = document["suite"].replace("_", " ")
        for row in document["outcomes"]:
            verdict = held(row)
            totals["cases"] += 1
            totals["held"] += verdict == "yes"
            for key in ("acknowledged", "delivered", "lost", "duplicated"):
                totals[key] += row.get(key) or 0
            lines.append("| " + " | ".join(_cell(v) for v in (
                suite, row["case"], row["expected"], row["observed"], row.get("acknowledged"),
                row.get("delivered"), row.get("lost"), row.get("duplicated"), verdict)) + " |")
    lines.append("")
    lines.append(f"{totals['held']} of {totals['cases']} cases held; events acknowledged "
                 f"{totals['acknowledged']}, delivered {totals['delivered']}, lost {totals['lost']}, "
                 f"duplicated {totals['duplicated']}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path,
                        help="outcome JSON files (default: tests/artifacts/*.json)")
    parser.add_argument("--cases", action="store_true",
                        help="one row per case instead of one per kind of attack or fault")
    args = parser.parse_args(argv)
    paths = args.files or sorted(ARTIFACTS_DIR.glob("*.json"))
    if not paths:
        print(f"no outcome files in {ARTIFACTS_DIR}: run the suites first "
              "(pytest tests/integration)", file=sys.stderr)
        return 1
    print(render(paths) if args.cases else render_kinds(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
