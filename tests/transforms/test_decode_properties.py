"""Property tests of decoding: generated hostile bodies, bounded examples.

``make fuzz`` runs the same properties for a time budget instead.
"""

from __future__ import annotations

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
