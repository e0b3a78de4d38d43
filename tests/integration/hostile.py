"""Hostile inputs for ``test_hostile_input.py``, generated, and the checks of the replies.

Generators are seeded: the same run sends the same bytes, so a failure can be
replayed; the test ids name each variant.
"""

from __future__ import annotations

import gzip
import json
import random
from collections import Counter
from collections.abc import Iterator
from functools import cache
from typing import Any

import zstandard

from tests.integration.lake import Ledger

__all__ = ["AROUND", "ENCODERS", "SEED", "assert_error", "assert_per_record", "bomb", "chunks",
           "extra_fields", "invalid_utf8", "nested", "observed", "partition_values", "sized_records"]

SEED = 6


def observed(status: int | None, body: dict[str, Any]) -> str:
    """A reply in a few words for the outcomes table: ``413 PAYLOAD_TOO_LARGE``,
    ``200: 4 accepted, rejected 1 too_deep``."""
    if status == 200 and body.get("success"):
        data = body["data"]
        if "accepted" not in data:
            return "200 OK"
        codes = Counter(r["code"] for r in data.get("rejected", []))
        rejected = ", ".join(f"{n} {code}" for code, n in sorted(codes.items()))
        return f"200: {data['accepted']} accepted" + (f", rejected {rejected}" if rejected else "")
    return f"{status} {body.get('error', {}).get('code')}"


def assert_per_record(status: int | None, body: dict[str, Any], ids: list[int],
                      bad: dict[int, set[str]], ledger: Ledger, case: str) -> None:
    """200; exactly the records at ``bad``'s indexes rejected, with one of the codes given."""
    assert status == 200, body
    data = body["data"]
    got = {r["index"]: r["code"] for r in data["rejected"]}
    ledger.refuse(ids[i] for i in got)
    ledger.ack(case, (ids[i] for i in range(len(ids)) if i not in got))
    assert set(got) == set(bad), data["rejected"]
    for index, code in got.items():
        assert code in bad[index], (index, code, bad[index])
    assert data["accepted"] == len(ids) - len(bad)


def assert_error(status: int | None, body: dict[str, Any], want_status: int, want_code: str,
                 field: str | None = None) -> dict[str, Any]:
    assert (status, body.get("error", {}).get("code")) == (want_status, want_code), body
    assert body["success"] is False
    error: dict[str, Any] = body["error"]
    if field is not None:
        assert error.get("details", {}).get("field") == field, error
    return error


def chunks(body: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    return (body[i:i + size] for i in range(0, len(body), size))


def sized_records(ids: list[int], size: int, head: bytes, sep: bytes, tail: bytes) -> bytes:
    """``head + records joined by sep + tail``, exactly ``size`` bytes long."""
    bare = [json.dumps({"id": i, "s": ""}, separators=(",", ":")).encode() for i in ids]
    spare = size - len(head) - len(sep.join(bare)) - len(tail)
    assert spare >= 0
    per, extra = divmod(spare, len(ids))
    records = [json.dumps({"id": i, "s": "x" * (per + (k < extra))}, separators=(",", ":")).encode()
               for k, i in enumerate(ids)]
    body = head + sep.join(records) + tail
    assert len(body) == size
    return body


ENCODERS = {"gzip": gzip.compress, "zstd": zstandard.ZstdCompressor(level=10).compress,
            "identity": lambda data: data}


@cache
def bomb(encoding: str) -> bytes:
    """64 MB of valid NDJSON once decoded, a few kB on the wire."""
    line = b'{"id":0,"s":"' + b"a" * 1000 + b'"}\n'
    return ENCODERS[encoding](line * 64_000)


def nested(container: str, depth: int) -> str:
    if container == "arrays":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


def invalid_utf8(rng: random.Random) -> dict[str, bytes]:
    def cont() -> int:
        return rng.randint(0x80, 0xBF)

    return {
        "lone continuation byte": bytes([cont()]),
        "run of continuation bytes": bytes(cont() for _ in range(rng.randint(2, 6))),
        "overlong 2-byte": bytes([rng.choice([0xC0, 0xC1]), cont()]),
        "overlong 3-byte": bytes([0xE0, rng.randint(0x80, 0x9F), cont()]),
        "overlong 4-byte": bytes([0xF0, rng.randint(0x80, 0x8F), cont(), cont()]),
        "encoded surrogate": chr(rng.randint(0xD800, 0xDFFF)).encode("utf-8", "surrogatepass"),
        "truncated 2-byte": bytes([rng.randint(0xC2, 0xDF)]),
        "truncated 3-byte": bytes([rng.randint(0xE1, 0xEC), cont()]),
        "truncated 4-byte": bytes([0xF0, rng.randint(0x90, 0xBF), cont()]),
        "above U+10FFFF": bytes([0xF4, rng.randint(0x90, 0xBF), cont(), cont()]),
        "lead byte F5-F7": bytes([rng.randint(0xF5, 0xF7), cont(), cont(), cont()]),
        "byte FE or FF": bytes([rng.choice([0xFE, 0xFF])]),
    }


AROUND = ["", "abc", "é", "日本", "😀", "x" * 40]
def partition_values() -> dict[str, str]:
    rng = random.Random(SEED)
    return {"300 chars": "x" * 300, "253 chars": "x" * 253, "254 chars": "x" * 254,
            "1000 chars": "y" * 1000, "200 x é (400 bytes)": "é" * 200, "70 emoji": "😀" * 70,
            "random unicode": "".join(chr(rng.randint(0x100, 0x2FFF)) for _ in range(40)),
            "..": "..", ".": ".", "../..": "../..", "/": "/", "a/b": "a/b",
            "../../../etc/passwd": "../../../etc/passwd", "empty": "", "%2e%2e": "%2e%2e",
            "backslashes": "a\\..\\..\\b", "NUL": "a\x00b", "newline": "a\nb", "space": " "}


def extra_fields(variant: str, rng: random.Random) -> dict[str, Any]:
    variants: dict[str, dict[str, Any]] = {
            "plain": {"extra": rng.randint(0, 10**6)},
            "unicode name": {"名前_" + rng.choice("αβγ"): "値"},
            "nested value": {"meta": {"a": [1, 2, {"b": None}], "c": rng.random()}},
            "200-char name": {"z" * 200: True},
            "several": {f"u{rng.randint(0, 99)}_{k}": k for k in range(3)}}
    return variants[variant]
