"""The epoch graph's local source: the epoch's frames from this machine's event log.

The one piece of the epoch graph that only runs where the buffer file is
(the local runner's workers); a remote runner gives ``EpochGraph`` a source
of its own.
"""

from __future__ import annotations

from collections.abc import Iterator

import apache_beam as beam
import pyarrow as pa

from beam_pipelines.compiler.epoch_graph import EpochSpec
from beam_pipelines.runners.local.buffer import EventBuffer
from transforms.coders import ArrowTableCoder  # noqa: F401  (registers the coder)

__all__ = ["ReadBufferRange"]


class _ReadBufferRangeFn(beam.DoFn):
    def process(self, spec: EpochSpec) -> Iterator[pa.Table]:
        buffer = EventBuffer(spec.buffer_path)
        try:
            yield buffer.read_range(spec.range_start, spec.range_end, spec.input_schema)
        finally:
            buffer.close()


class ReadBufferRange(beam.PTransform):
    """Each ``EpochSpec`` element → its buffer frames ``(range_start, range_end]`` as one
    Arrow table, zero-copy from the memory-mapped segments."""

    def expand(self, specs: beam.PCollection) -> beam.PCollection:
        return specs | beam.ParDo(_ReadBufferRangeFn()).with_output_types(pa.Table)
