"""The ``dead_letters`` and ``replay_dead_letters`` operations' parameters and batches.

``parse_query`` turns the operation's parameters into a ``DeadLetterQuery``
(a clear error naming the bad one); a page's ``next_cursor`` is opaque to
the client and names the last id it saw. ``replay_batch`` puts the selected
records through the pipeline's current schema the way NDJSON ingest does,
all in one decode: the stored records are JSON texts, one per line once
their line breaks (whitespace between JSON tokens) are made spaces.

``page`` and ``replay`` are the two operations' work on the runner that
holds the pipeline's events, once ``PipelineService`` has found it.

A record cannot be replayed as kept when the store holds less than was
sent: cut at ``MAX_DEAD_LETTER_CHARS``, or not UTF-8 (kept with
replacement characters). Such records are rejected again with their own
code and a message saying to send them again; nothing is decoded from them.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from beam_pipelines.errors import DefinitionError
from beam_pipelines.model.definition import PipelineDefinition
from beam_pipelines.model.times import iso
from beam_pipelines.runners.base import DeadLetterQuery, Runner
from transforms.decode import REJECTION_CODES, arrow_schema, decode_json_lines
from transforms.decode_records import MAX_DEAD_LETTER_CHARS

__all__ = ["MAX_LIMIT", "ReplayBatch", "next_cursor", "page", "parse_query", "parse_time", "public",
           "replay", "replay_batch"]

MAX_LIMIT = 1000
_CURSOR_PREFIX = "dl1:"


def parse_time(params: dict[str, Any], name: str) -> float | None:
    """An ISO-8601 time parameter as Unix seconds (UTC when it names no zone)."""
    value = params.get(name)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise DefinitionError(name, f"{name} must be an ISO-8601 time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def parse_query(params: dict[str, Any], *, allow_ids: bool) -> DeadLetterQuery:
    limit = params.get("limit", 100)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise DefinitionError("limit", f"limit must be an integer from 1 to {MAX_LIMIT}")
    code = params.get("code")
    if code is not None and code not in REJECTION_CODES:
        raise DefinitionError("code", f"unknown code {code!r}: allowed "
                              + ", ".join(REJECTION_CODES))
    ids = params.get("ids") if allow_ids else None
    if ids is not None:
        if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_LIMIT or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 1 for i in ids):
            raise DefinitionError("ids", "ids must be a list of 1 to "
                                  f"{MAX_LIMIT} dead-letter ids (positive integers)")
        limit = len(ids)  # every one named, whatever the page size
    return DeadLetterQuery(ids=None if ids is None else tuple(dict.fromkeys(ids)),
                           code=code, since=parse_time(params, "since"),
                           until=parse_time(params, "until"), limit=limit,
                           before_id=_cursor_id(params.get("cursor")))


def _cursor_id(cursor: Any) -> int | None:
    if cursor is None:
        return None
    try:
        text = base64.urlsafe_b64decode(str(cursor).encode("ascii")).decode("ascii")
        if not text.startswith(_CURSOR_PREFIX):
            raise ValueError(text)
        value = int(text.removeprefix(_CURSOR_PREFIX))
    except (ValueError, UnicodeError, binascii.Error):
        raise DefinitionError("cursor", "cursor must be a next_cursor from an earlier "
                              "dead_letters reply") from None
    return value


def next_cursor(rows: Sequence[dict[str, Any]], limit: int) -> str | None:
    """The cursor of the page after ``rows`` (fetched with ``limit + 1``), or None."""
    if len(rows) <= limit:
        return None
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{rows[limit - 1]['id']}".encode()
                                    ).decode("ascii")


def public(row: dict[str, Any]) -> dict[str, Any]:
    """A dead letter as the API shows it: times in ISO-8601."""
    return {"id": row["id"], "index": row["index"], "code": row["code"],
            "message": row["message"], "record": row["record"],
            "received_at": iso(row["received_at"]), "rejected_at": iso(row["rejected_at"]),
            "attempts": row["attempts"]}


def page(runner: Runner, pipeline_id: str, query: DeadLetterQuery) -> dict[str, Any]:
    """A page of the pipeline's rejected records, newest first, and the next page's cursor."""
    rows = runner.dead_letters(pipeline_id, replace(query, limit=query.limit + 1))
    return {"dead_letters": [public(r) for r in rows[:query.limit]],
            "next_cursor": next_cursor(rows, query.limit)}


def replay(runner: Runner, definition: PipelineDefinition, pipeline_id: str,
           query: DeadLetterQuery, *, max_record_bytes: int) -> tuple[int, dict[str, Any]]:
    """Put the selected dead letters through the pipeline's current schema again, in one
    decode: each is accepted once (as an ingest) or rejected again with its new reason.
    How many were accepted, and the operation's reply."""
    rows = runner.dead_letters(pipeline_id, query)
    if not rows:
        return 0, {"accepted": 0, "rejected": []}
    batch = replay_batch(rows, definition, now=datetime.now(timezone.utc),
                         max_record_bytes=max_record_bytes)
    accepted, again = runner.replay_dead_letters(pipeline_id, batch.accepted, batch.table,
                                                 batch.rejected)
    still = set(again)
    return len(accepted), {"accepted": len(accepted),
                           "rejected": [{"id": i, "code": code, "message": message}
                                        for i, code, message in batch.rejected if i in still]}


@dataclass(frozen=True)
class ReplayBatch:
    """The selected dead letters after one decode: the accepted ids with their
    events (``table``, row for row) and each rejected id's new (code, message)."""

    accepted: list[int]
    table: pa.Table
    rejected: list[tuple[int, str, str]]


def replay_batch(rows: Sequence[dict[str, Any]], definition: PipelineDefinition, *,
                 now: datetime, max_record_bytes: int) -> ReplayBatch:
    ids = [int(r["id"]) for r in rows]
    records = pa.array([r["record"] for r in rows], pa.string())
    codes = pa.array([r["code"] for r in rows], pa.string())
    text = pc.replace_substring_regex(pc.fill_null(records, ""), r"[\r\n]", " ")
    blank = pc.equal(pc.utf8_trim_whitespace(text), "")
    cut = pc.greater_equal(pc.utf8_length(text), MAX_DEAD_LETTER_CHARS)
    lossy = pc.equal(codes, "invalid_utf8")
    unusable = pc.or_(pc.or_(blank, cut), lossy).to_pylist()
    rejected: list[tuple[int, str, str]] = []
    for i, bad, is_blank, is_cut in zip(ids, unusable, blank.to_pylist(), cut.to_pylist()):
        if bad:
            rejected.append(_unreplayable(i, is_blank, is_cut))
    usable = [i for i, bad in zip(ids, unusable) if not bad]
    lines = text.filter(pc.invert(pa.array(unusable, pa.bool_()))).to_pylist()
    if not lines:
        return ReplayBatch([], arrow_schema(definition.schema,
                                            definition.unknown_fields).empty_table(), rejected)
    decoded = decode_json_lines("\n".join(lines).encode("utf-8"), definition.schema,
                                definition.event_time_field, now=now,
                                max_record_bytes=max_record_bytes,
                                unknown_fields=definition.unknown_fields)
    refused = {r.index: r for r in decoded.rejected}
    rejected.extend((usable[k], r.code, r.message) for k, r in refused.items())
    accepted = [i for k, i in enumerate(usable) if k not in refused]
    return ReplayBatch(accepted, decoded.table, rejected)


def _unreplayable(dead_letter_id: int, blank: bool, cut: bool) -> tuple[int, str, str]:
    if blank:
        return dead_letter_id, "parse_failure", "the dead letter holds no record to replay"
    if cut:
        return dead_letter_id, "too_large", (
            f"only the first {MAX_DEAD_LETTER_CHARS} characters of this record were kept: "
            "it cannot be replayed; send it again")
    return dead_letter_id, "invalid_utf8", ("the record was not UTF-8 and was kept with "
                                            "replacement characters: send it again")
