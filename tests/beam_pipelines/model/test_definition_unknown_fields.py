"""The definition's ``unknown_fields`` policy: parsed, validated, stored, restored."""

from __future__ import annotations

import pytest

from beam_pipelines.errors import DefinitionError
from beam_pipelines.model.definition import definition_from_dict, parse_definition

SCHEMA = [{"name": "id", "type": "int64"}]


@pytest.mark.parametrize("policy", ["drop", "reject", "keep"])
def test_each_policy_round_trips_through_the_store(policy: str) -> None:
    definition = parse_definition({"name": "p", "schema": SCHEMA, "unknown_fields": policy},
                                  default_sink_uri="/tmp/lake/{name}",
                                  local_sink_roots=("/tmp",))
    assert definition.unknown_fields == policy
    assert definition_from_dict(definition.to_dict()) == definition
    assert definition.public()["unknown_fields"] == policy


def test_default_is_drop_and_old_stored_definitions_read_as_drop() -> None:
    definition = parse_definition({"name": "p", "schema": SCHEMA}, default_sink_uri="/tmp/x",
                                  local_sink_roots=("/tmp",))
    assert definition.unknown_fields == "drop"
    stored = definition.to_dict()
    del stored["unknown_fields"]
    assert definition_from_dict(stored).unknown_fields == "drop"


@pytest.mark.parametrize("value", ["ignore", "", None, 1, ["keep"], "KEEP"])
def test_other_values_are_refused_naming_the_field_and_the_allowed(value: object) -> None:
    with pytest.raises(DefinitionError) as err:
        parse_definition({"name": "p", "schema": SCHEMA, "unknown_fields": value},
                         default_sink_uri="/tmp/x",
                         local_sink_roots=("/tmp",))
    assert err.value.field == "unknown_fields"
    assert "allowed drop, reject, keep" in str(err.value)


def test_reject_and_keep_need_a_schema() -> None:
    with pytest.raises(DefinitionError, match="needs a schema"):
        parse_definition({"name": "p", "unknown_fields": "keep"}, default_sink_uri="/tmp/x",
                         local_sink_roots=("/tmp",))
