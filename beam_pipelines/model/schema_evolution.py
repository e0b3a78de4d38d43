"""Additive schema evolution: what ``transform``'s ``schema`` may change.

A new schema is the old one with optional fields appended, nothing else.
That is the one change every part already holds without a migration: events
buffered under the old schema are read with the new one (the new columns
null, see ``runners.local.buffer``), SQL that planned against the old
schema still plans against the new one (a column is only added), files
already written keep their columns, and an Iceberg table takes the new
columns as optional ones. Anything else (a field removed, renamed, retyped,
made required, reordered, or a new required field) would make old events or
old files disagree with the schema, so it is refused with the field and why.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from beam_pipelines.errors import ConflictError, DefinitionError
from beam_pipelines.model.definition import Field, PipelineDefinition, parse_schema

__all__ = ["added_fields", "check_schema_unchanged", "evolve_schema", "transformed"]


def transformed(current: PipelineDefinition, sql: Any, raw_schema: Any) -> PipelineDefinition:
    """The definition ``transform`` makes: new ``sql`` (None: the current SQL) and/or the
    schema ``raw_schema`` (None: unchanged), checked by ``evolve_schema``."""
    if sql is None and raw_schema is None:
        raise DefinitionError("sql", "transform needs sql, schema (only optional fields "
                              "added) or both")
    return evolve_schema(current.with_sql(current.sql if sql is None else sql), raw_schema)


def added_fields(old: PipelineDefinition, new: PipelineDefinition) -> list[str]:
    """The names of the fields ``new`` appends to ``old``'s schema."""
    return [f.name for f in (new.schema or ())[len(old.schema or ()):]]


def check_schema_unchanged(stored: PipelineDefinition, planned_on: PipelineDefinition) -> None:
    """Refuse a transform when another one changed the schema since it was read: writing
    it would take that change back, which is never additive."""
    if stored.schema != planned_on.schema:
        raise ConflictError("the pipeline's schema changed while this transform was "
                            "planned: send it again", {"field": "schema"})


def evolve_schema(definition: PipelineDefinition, raw: Any) -> PipelineDefinition:
    """The definition with schema ``raw`` (API shape), if it only adds optional fields.

    Raises ``DefinitionError`` on ``schema`` (or ``schema[i]...``) naming the
    field and the reason otherwise.
    """
    if raw is None:
        return definition
    new = parse_schema(raw)
    assert new is not None  # parse_schema answers None only for None
    old = definition.schema
    if old is None:
        raise DefinitionError("schema", "this pipeline has no schema (events are kept whole "
                              "in 'value'): a schema cannot be added later, only optional "
                              "fields to an existing schema")
    _check_additive(old, new)
    return replace(definition, schema=new)


def _check_additive(old: tuple[Field, ...], new: tuple[Field, ...]) -> None:
    new_by_name = {f.name: (i, f) for i, f in enumerate(new)}
    for i, was in enumerate(old):
        found = new_by_name.get(was.name)
        if found is None:
            taker = new[i] if i < len(new) else None
            if taker is not None and taker.name not in {f.name for f in old} \
                    and taker.type == was.type:
                raise DefinitionError(f"schema[{i}].name", f"field '{was.name}' is renamed to "
                                      f"'{taker.name}': a schema change may only add optional "
                                      "fields; renaming a field is not allowed")
            raise DefinitionError("schema", f"field '{was.name}' is removed: a schema change "
                                  "may only add optional fields; every existing field stays")
        at, now = found
        if now.type != was.type:
            raise DefinitionError(f"schema[{at}].type", f"field '{was.name}' changes type from "
                                  f"{was.type} to {now.type}: existing fields keep their type")
        if now.required != was.required:
            change = "made required" if now.required else "made optional"
            raise DefinitionError(f"schema[{at}].required", f"field '{was.name}' is {change}: "
                                  "existing fields keep their required flag")
        if at != i:
            raise DefinitionError(f"schema[{at}].name", f"field '{was.name}' moves from "
                                  f"position {i} to {at}: existing fields come first, in their "
                                  "order, and new fields after them")
    for at in range(len(old), len(new)):
        if new[at].required:
            raise DefinitionError(f"schema[{at}].required", f"new field '{new[at].name}' is "
                                  "required: events already accepted lack it, so a new field "
                                  "must be optional (required: false)")
