"""Property tests of decoding: generated hostile bodies, bounded examples.

``make fuzz`` runs the same properties for a time budget instead.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.json as pa_json
from hypothesis import HealthCheck, given, settings

from beam_pipelines.model.definition import Field
from tests.transforms.decode_fuzzing import (
    json_array_bodies,
    ndjson_bodies,
    policies,
    run_json_array,
    run_json_lines,
    schemas,
)
from transforms.decode import _read_ndjson
from transforms.decode_records import screen_lines
from transforms.json_depth import MAX_JSON_DEPTH

_BOUNDED = settings(max_examples=40, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@_BOUNDED
@given(ndjson_bodies, schemas, policies)
def test_every_ndjson_record_is_accepted_or_rejected_once(
        body: bytes, fields: tuple[Field, ...] | None, policy: str) -> None:
    run_json_lines(body, fields, policy)


@_BOUNDED
@given(json_array_bodies, schemas, policies)
def test_every_json_array_record_is_accepted_or_rejected_once(
        body: bytes, fields: tuple[Field, ...] | None, policy: str) -> None:
    run_json_array(body, fields, policy)


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(ndjson_bodies)
def test_the_streaming_reader_reads_what_read_json_reads(body: bytes) -> None:
    """decode reads a body with pyarrow's streaming JSON reader (no thread per call):
    on every body the screen lets through, it returns read_json's table, or both refuse."""
    screened, objects = screen_lines(body, MAX_JSON_DEPTH)
    if screened is not None or objects is None:
        return  # never given to a pyarrow reader
    options = pa_json.ReadOptions(block_size=1 << 26, use_threads=False)
    expected: pa.Table | type[Exception]
    got: pa.Table | type[Exception]
    try:
        expected = pa_json.read_json(pa.BufferReader(body), read_options=options)
    except pa.ArrowException as err:
        expected = type(err)
    try:
        got = _read_ndjson(body, objects)
    except pa.ArrowException as err:
        got = type(err)  # the same kind: decode catches the same classes for both
    if isinstance(expected, pa.Table) and isinstance(got, pa.Table):
        assert _ipc(got) == _ipc(expected)  # bytes: NaN equals NaN, chunks count
    else:
        assert got == expected


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()
