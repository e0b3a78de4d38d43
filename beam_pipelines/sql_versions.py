"""A pipeline's SQL versions: planning SQL against its schema, dry runs, and the stored versions.

``create`` stores version 1 and each ``transform`` the next (new SQL and/or
optional fields added to the schema, ``model.schema_evolution``). Every
version is planned before it is stored, in a bounded child process
(``transforms.isolation``: planning folds constants, so user SQL never runs
in the API's own process), and kept with its output schema and the input
schema it was planned against, which ``versions`` lists.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import select
from sqlalchemy.orm import Session

from beam_pipelines.catalog.store import SqlVersion
from beam_pipelines.errors import DefinitionError, Unavailable
from beam_pipelines.model.definition import PipelineDefinition
from beam_pipelines.model.times import iso
from transforms.decode import arrow_schema
from transforms.isolation import dry_run_isolated, plan_isolated
from transforms.sql_policy import SqlError

__all__ = ["dry_run", "dry_run_flag", "dry_run_limit", "list_versions", "plan", "sql_failure",
           "version_row"]

MAX_DRY_RUN_ROWS = 10_000


def dry_run_flag(params: Any) -> bool:
    """``create``'s and ``transform``'s ``dry_run`` parameter (default false)."""
    dry = params.get("dry_run", False) if isinstance(params, dict) else False
    if not isinstance(dry, bool):
        raise DefinitionError("dry_run", "dry_run must be true or false")
    return dry


def dry_run_limit(params: dict[str, Any]) -> int:
    """How many sample events a ``transform`` dry run puts through the SQL."""
    limit = params.get("limit", 100)
    if isinstance(limit, bool) or not isinstance(limit, int) \
            or not 1 <= limit <= MAX_DRY_RUN_ROWS:
        raise DefinitionError("limit", f"limit must be an integer from 1 to {MAX_DRY_RUN_ROWS}")
    return limit


def plan(definition: PipelineDefinition, sql: str) -> list[dict[str, str]]:
    """The output schema of ``sql`` over the definition's input, as the API shows it;
    a ``DefinitionError`` on ``sql`` when it cannot run or its output cannot be written."""
    try:  # planning folds constants, so it is bounded like a run
        schema = plan_isolated(sql, arrow_schema(definition.schema, definition.unknown_fields))
    except SqlError as err:
        raise sql_failure(err) from None
    if definition.sink.format == "parquet":
        _check_parquet_types(schema)
    return [{"name": f.name, "type": str(f.type)} for f in schema]


def dry_run(definition: PipelineDefinition, sample: pa.Table, limit: int,
            output_schema: list[dict[str, str]]) -> dict[str, Any]:
    """The dry run's reply: the definition's SQL over ``sample``, in a bounded child
    process (user SQL never runs in the API's own)."""
    return {"dry_run": True, "output_schema": output_schema,
            "rows": preview_rows(definition.sql, sample, limit)}


def preview_rows(sql: str, sample: pa.Table, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` rows of ``sql`` over ``sample`` as JSON values (dry runs of
    ``transform`` and ``replay``), run in a bounded child process."""
    try:
        rows = dry_run_isolated(sql, sample, limit).to_pylist()
    except SqlError as err:
        raise sql_failure(err) from None
    return json.loads(json.dumps(rows, default=_json_default))  # type: ignore[no-any-return]


def version_row(pipeline_id: str, version: int, definition: PipelineDefinition,
                output_schema: list[dict[str, str]], now: float) -> SqlVersion:
    """The stored version: its SQL, output schema, and the input schema it was planned on."""
    schema = definition.to_dict()["schema"]
    return SqlVersion(pipeline_id=pipeline_id, version=version, sql=definition.sql,
                      output_schema=json.dumps(output_schema), created_at=now,
                      input_schema=None if schema is None else json.dumps(schema))


def list_versions(session: Session, pipeline_id: str) -> list[dict[str, Any]]:
    """Every version of the pipeline, oldest first, each with its schema."""
    found = session.scalars(select(SqlVersion).where(SqlVersion.pipeline_id == pipeline_id)
                            .order_by(SqlVersion.version)).all()
    return [{"version": v.version, "sql": v.sql,
             "output_schema": json.loads(v.output_schema),
             # None: a version stored before schemas were versioned
             "schema": None if v.input_schema is None else json.loads(v.input_schema),
             "created_at": iso(v.created_at)} for v in found]


def sql_failure(err: SqlError) -> Exception:
    """The API's answer to SQL that was refused, failed or hit its bounds.

    A bound (``memory_limit``, ``timeout``, ``output_limit``) is a property
    of the SQL, so it is a 400 on ``sql`` like a syntax error, with
    ``details.reason`` saying which; only ``busy`` is the server's (503).
    """
    if err.code == "busy":
        return Unavailable(str(err), {"field": "sql", "reason": err.code})
    text = f"invalid SQL: {err}" if err.code in ("invalid_sql", "refused") else str(err)
    return DefinitionError("sql", text, reason=err.code)


def _check_parquet_types(schema: pa.Schema) -> None:
    """Refuse at create/transform an output no epoch could ever write."""
    for f in schema:
        try:
            pq.write_table(pa.schema([f]).empty_table(), pa.BufferOutputStream())
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
            raise DefinitionError("sql", f"output column {f.name!r} has type {f.type}, which "
                                  "Parquet cannot store: cast it (e.g. to VARCHAR)") from None


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return str(value)
