"""The ``replay`` operation's parameters: which range, which SQL, which target.

    {"name": "clicks", "since": "2026-12-03T09:00:00Z", "until": "2026-12-03T10:00:00Z",
     "sql": "SELECT ...", "target": {"prefix": "clicks-v2"}}

* range: ``since``/``until`` (ISO-8601 ingest times, ``since`` inclusive,
  ``until`` exclusive, as ``dead_letters`` filters), or ``first_offset``/
  ``last_offset`` (the log's offsets, both inclusive: one offset per accepted
  ingest request, as ``monitor``'s ``replays`` show ranges); not both kinds.
  Left open, a bound is the oldest (newest) event the log retains.
* SQL: ``sql_version`` (a version ``versions`` lists) or ``sql`` (new SQL,
  planned and sandboxed exactly as ``transform``'s); neither: the current one.
* target: ``{"prefix": "path"}`` beside the sink (relative to the sink's
  parent: sink ``gs://b/lake/clicks``, prefix ``clicks-v2`` →
  ``gs://b/lake/clicks-v2``), never inside or around the sink; left out, the
  pipeline's own sink (files named by the replay id, so no live file is
  ever replaced).
* ``dry_run``: the SQL's output on the range's first ``limit`` retained
  events, nothing written.
* ``{"cancel": "rp_..."}`` instead: cancel a running replay.

Only the local runner keeps a log to replay (``retention``); Dataflow and
Flink pipelines are refused, and so are Iceberg sinks (a replay writes files).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from sqlalchemy import select

from beam_pipelines.catalog.store import SqlVersion, Store
from beam_pipelines.dead_letters import parse_time
from beam_pipelines.errors import ConflictError, DefinitionError
from beam_pipelines.model.definition import PipelineDefinition
from beam_pipelines.model.layout import is_local, join_uri
from beam_pipelines.runners.local.replays import (
    ReplayRange,
    cancel_replay,
    plan_replay,
    sample_range,
)
from beam_pipelines.storage.roots import check_local_sink
from transforms.decode import arrow_schema

__all__ = ["ReplayRequest", "parse_replay", "start_replay", "target_uri"]

_KNOWN = {"name", "pipeline_id", "since", "until", "first_offset", "last_offset", "sql",
          "sql_version", "target", "dry_run", "limit"}
_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_PREFIX = re.compile(rf"{_SEGMENT}(/{_SEGMENT}){{0,7}}")


@dataclass(frozen=True)
class ReplayRequest:
    wanted: ReplayRange
    sql: str | None
    sql_version: int | None
    prefix: str | None
    dry_run: bool
    limit: int


def parse_replay(params: dict[str, Any]) -> ReplayRequest:
    """The parameters, each checked: a bad one is an error naming it and what is allowed."""
    unknown = sorted(set(params) - _KNOWN)
    if unknown:
        raise DefinitionError(unknown[0], f"unknown parameter {unknown[0]!r}: replay takes "
                              + ", ".join(sorted(_KNOWN)))
    since, until = parse_time(params, "since"), parse_time(params, "until")
    first, last = _offset(params, "first_offset"), _offset(params, "last_offset")
    if (since is not None or until is not None) and (first is not None or last is not None):
        raise DefinitionError("since", "give the range by time (since, until) or by offsets "
                              "(first_offset, last_offset), not both")
    if since is not None and until is not None and until <= since:
        raise DefinitionError("until", "until must be later than since")
    if first is not None and last is not None and last < first:
        raise DefinitionError("last_offset", "last_offset must not be below first_offset")
    sql, version = params.get("sql"), params.get("sql_version")
    if sql is not None and version is not None:
        raise DefinitionError("sql", "give sql (new SQL) or sql_version (an existing version), "
                              "not both")
    if sql is not None and (not isinstance(sql, str) or not sql.strip()):
        raise DefinitionError("sql", "sql must be a non-empty string")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)
                                or version < 1):
        raise DefinitionError("sql_version", "sql_version must be a version number (an "
                              "integer from 1, see the versions operation)")
    dry_run = params.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise DefinitionError("dry_run", "dry_run must be true or false")
    limit = params.get("limit", 100)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
        raise DefinitionError("limit", "limit must be an integer from 1 to 10000")
    return ReplayRequest(ReplayRange(since, until, first, last), sql, version,
                         _prefix(params.get("target")), dry_run, limit)


def _cancel(store: Store, pipeline_id: str, params: dict[str, Any]) -> dict[str, Any]:
    """``{"cancel": "rp_..."}``: cancel a running replay (nothing else goes with it)."""
    replay_id = params["cancel"]
    if not isinstance(replay_id, str) or not replay_id.startswith("rp_"):
        raise DefinitionError("cancel", "cancel must be a replay id (rp_..., as monitor's "
                              "replays list them)")
    other = sorted(set(params) - {"name", "pipeline_id", "cancel"})
    if other:
        raise DefinitionError(other[0], "cancel takes no other parameter than the pipeline")
    return cancel_replay(store, pipeline_id, replay_id)


def _offset(params: dict[str, Any], name: str) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DefinitionError(name, f"{name} must be an offset of the log (an integer from 1)")
    return value


def _prefix(target: Any) -> str | None:
    if target is None:
        return None
    if not isinstance(target, dict) or set(target) - {"prefix"} or "prefix" not in target:
        raise DefinitionError("target", "target must be an object {\"prefix\": \"path\"}; "
                              "leave it out to replay into the pipeline's sink")
    prefix = target["prefix"]
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix.rstrip("/")):
        raise DefinitionError("target.prefix", "target.prefix must be a relative path of 1 to "
                              "8 segments of letters, digits, '.', '_' and '-' (each starting "
                              "with a letter or digit)")
    return prefix.rstrip("/")


def check_replayable(definition: PipelineDefinition) -> None:
    if definition.runner.type != "direct":
        raise ConflictError(f"a {definition.runner.type} pipeline keeps no retained log to "
                            "replay (its events are consumed from its topic): replay needs "
                            "runner.type direct", {"runner": definition.runner.type})
    if definition.sink.table:
        raise ConflictError("replay writes files: a pipeline whose sink is an Iceberg table "
                            "cannot be replayed", {"sink": "iceberg"})


def target_uri(sink_uri: str, prefix: str | None) -> str:
    """Where the replay writes: the sink itself, or ``prefix`` beside it (not inside it)."""
    if prefix is None:
        return sink_uri
    root = sink_uri.rstrip("/")
    if is_local(root):
        parent = os.path.dirname(root)
    else:
        scheme, _, rest = root.partition("://")
        if "/" not in rest:
            raise DefinitionError("target.prefix", "the sink is its bucket's root, so every "
                                  "prefix lies inside it: leave target out to replay into the "
                                  "sink (the files are named by the replay)")
        parent = f"{scheme}://{rest.rpartition('/')[0]}"
    uri = join_uri(parent, prefix)
    if uri == root or uri.startswith(root + "/") or root.startswith(uri + "/"):
        raise DefinitionError("target.prefix", f"target.prefix {prefix!r} overlaps the "
                              "pipeline's sink: it is relative to the sink's parent folder "
                              "and must name a folder beside the sink")
    return uri


def replay_sql(store: Store, pipeline_id: str, request: ReplayRequest,
               current: PipelineDefinition) -> tuple[str, int | None]:
    """The SQL text to run and its version (None for new SQL)."""
    if request.sql is not None:
        return request.sql, None
    if request.sql_version is None:
        with store.reading() as s:
            latest = s.execute(select(SqlVersion.sql, SqlVersion.version)
                               .where(SqlVersion.pipeline_id == pipeline_id)
                               .order_by(SqlVersion.version.desc())).first()
        return (current.sql, None) if latest is None else (latest[0], latest[1])
    with store.reading() as s:
        found = s.scalars(select(SqlVersion.sql).where(
            SqlVersion.pipeline_id == pipeline_id,
            SqlVersion.version == request.sql_version)).first()
        versions = list(s.scalars(select(SqlVersion.version).where(
            SqlVersion.pipeline_id == pipeline_id).order_by(SqlVersion.version)))
    if found is None:
        raise DefinitionError("sql_version", f"the pipeline has no SQL version "
                              f"{request.sql_version}: its versions are "
                              + ", ".join(map(str, versions)))
    return found, request.sql_version


def start_replay(store: Store, data_dir: str, pipeline_id: str, definition: PipelineDefinition,
                 params: dict[str, Any], *, plan_sql: PlanSql, preview: Preview,
                 local_sink_roots: Sequence[str]) -> dict[str, Any]:
    """Check everything, then plan the replay (or, with ``dry_run``, show its SQL's output
    on a sample of the range). ``plan_sql`` and ``preview`` are ``transform``'s: the
    same planning, sandbox and errors."""
    if "cancel" in params:
        return _cancel(store, pipeline_id, params)
    request = parse_replay(params)
    check_replayable(definition)
    sql, version = replay_sql(store, pipeline_id, request, definition)
    planned = definition.with_sql(sql)
    output_schema = plan_sql(planned, planned.sql)
    target = target_uri(definition.sink.uri, request.prefix)
    if is_local(target):
        check_local_sink(target, local_sink_roots, field="target.prefix")
    if request.dry_run:
        schema = arrow_schema(definition.schema, definition.unknown_fields)
        sample = sample_range(data_dir, pipeline_id, request.wanted, request.limit, schema)
        return {"dry_run": True, "output_schema": output_schema,
                "rows": preview(planned.sql, sample, request.limit)}
    return plan_replay(store, data_dir, pipeline_id, request.wanted, sql=planned.sql,
                       sql_version=version, target_uri=target, target_prefix=request.prefix)


PlanSql = Callable[[PipelineDefinition, str], list[dict[str, str]]]
Preview = Callable[[str, pa.Table, int], list[dict[str, Any]]]
