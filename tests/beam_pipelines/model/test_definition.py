"""The definition model names the bad field and what is allowed."""

from __future__ import annotations

from typing import Any

import pytest

from beam_pipelines.errors import DefinitionError
from beam_pipelines.model.definition import parse_definition

LAKE_ROOTS = ("/lake",)


def parse(**params: Any):  # type: ignore[no-untyped-def]
    return parse_definition({"name": "p", **params}, default_sink_uri="/lake/{name}",
                            local_sink_roots=LAKE_ROOTS)


def test_defaults() -> None:
    d = parse()
    assert d.sql == "SELECT * FROM events"
    assert d.schema is None
    assert d.sink.uri == "/lake/p"
    assert (d.sink.format, d.sink.compression) == ("parquet", "zstd")
    assert d.sink.roll.interval_seconds == 60
    assert d.runner.type == "direct"
    assert d.retention.until_committed


def test_retention_round_trips_through_the_store() -> None:
    from beam_pipelines.model.definition import Retention, definition_from_dict

    d = parse(retention={"seconds": 86_400, "bytes": 1 << 30})
    assert d.retention == Retention(seconds=86_400.0, bytes=1 << 30)
    assert definition_from_dict(d.to_dict()).retention == d.retention
    assert d.public()["retention"] == {"seconds": 86_400.0, "bytes": 1 << 30}
    legacy = d.to_dict()
    del legacy["retention"]  # stored before retention existed
    assert definition_from_dict(legacy).retention.until_committed


@pytest.mark.parametrize(("params", "field", "text"), [
    ({"name": "1bad"}, "name", "start with a letter"),
    ({"name": "pl_x"}, "name", "pl_"),
    ({"schema": [{"name": "a", "type": "int"}]}, "schema[0].type",
     "allowed string, int64, float64, bool, timestamp, date, json"),
    ({"schema": [{"name": "_a", "type": "string"}]}, "schema[0].name", "reserved"),
    ({"schema": [{"name": "a", "type": "string"}, {"name": "A", "type": "string"}]},
     "schema[1].name", "duplicate"),
    ({"schema": [{"name": "a", "type": "string", "required": "yes"}]}, "schema[0].required",
     "true or false"),
    ({"event_time_field": "ts"}, "event_time_field", "needs a schema"),
    ({"schema": [{"name": "ts", "type": "string"}], "event_time_field": "ts"},
     "event_time_field", "must be a timestamp"),
    ({"sink": {"format": "orc"}}, "sink.format", "unknown format 'orc': allowed parquet, jsonl, csv"),
    ({"sink": {"format": "jsonl", "compression": "zstd"}}, "sink.compression", "gzip, none"),
    ({"sink": {"uri": "ftp://x/y"}}, "sink.uri", "allowed file, gs, s3"),
    ({"sink": {"uri": "relative/path"}}, "sink.uri", "file:///absolute"),
    ({"sink": {"partition_by": "a/../b"}}, "sink.partition_by", "'..'"),
    ({"sink": {"roll": {"interval_seconds": 0}}}, "sink.roll.interval_seconds", "from 0.1"),
    ({"sink": {"options": {"password": "x"}}}, "sink.options", "allowed endpoint_url"),
    ({"runner": {"type": "spark"}}, "runner.type", "allowed direct, dataflow, flink"),
    ({"sql": ""}, "sql", "non-empty"),
    ({"retention": 3600}, "retention", "must be an object"),
    ({"retention": {"days": 1}}, "retention", "allowed seconds, bytes"),
    ({"retention": {"seconds": -1}}, "retention.seconds", "from 0 to"),
    ({"retention": {"bytes": 1.5}}, "retention.bytes", "a whole number"),
    ({"retention": {"bytes": True}}, "retention.bytes", "a whole number"),
])
def test_errors_name_the_field_and_what_is_allowed(params: dict[str, Any], field: str,
                                                   text: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_definition({"name": "p", **params} if "name" not in params else params,
                         default_sink_uri="/lake/{name}", local_sink_roots=LAKE_ROOTS)
    assert caught.value.field == field
    assert text in caught.value.message


def test_secrets_are_kept_but_never_public() -> None:
    d = parse(sink={"uri": "s3://bucket/prefix", "options": {
        "access_key_id": "AKIA", "secret_access_key": "s3cr3t", "region": "eu-west-1"}})
    assert d.to_dict()["sink"]["options"]["secret_access_key"] == "s3cr3t"
    public = d.public()["sink"]["options"]
    assert public == {"region": "eu-west-1"}
    assert "s3cr3t" not in str(d.public())
