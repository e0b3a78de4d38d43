"""The streaming graph's semantics, driven by ``TestStream`` on the BundleBasedDirectRunner.

One stream covers on-time data in two windows, a batch spanning both, a
re-published batch, late data within and beyond the allowed lateness, a
batch without ``_event_time``, empty windows and a watermark jump across
several windows; every file written is read back with DuckDB.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.testing.test_stream import TestStream as ScriptedStream  # not collected by pytest
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from beam_pipelines.compiler.streaming_graph import (
    METRICS_NAMESPACE,
    _SliceByWindowFn,
    build_streaming_pipeline,
)
from beam_pipelines.model.layout import window_file_name
from tests.beam_pipelines.compiler.stream_fixtures import (
    PIPELINE_ID,
    at,
    batch,
    read_files,
    stream_spec,
    utc,
)
from transforms.decode import EVENT_TIME, INGESTED_AT, TIMESTAMP

T0 = utc(2026, 3, 1, 12, 58)  # windows of 60 s: W0 = 12:58, W1 = 12:59, W2 = 13:00, ...
LATENESS = 120.0


def _us(seconds: float) -> int:
    return int(at(T0, seconds).timestamp() * 1_000_000)


def _ts(seconds: float) -> Timestamp:
    return Timestamp.from_utc_datetime(at(T0, seconds))


def _message(batch_id: str, data: bytes, arrival: float) -> TimestampedValue:
    return TimestampedValue((batch_id, data), _ts(arrival))


def _the_stream() -> ScriptedStream:
    """The scenario; the comments say where each row must end up."""
    a = batch([(1, at(T0, 1)), (2, at(T0, 10)), (3, at(T0, 30)), (4, at(T0, 59)),
               (5, at(T0, 60)), (6, at(T0, 90))], ingested=at(T0, 95))   # W0 and W1
    b = batch([(7, at(T0, 100)), (8, at(T0, 119)), (13, at(T0, 110))],   # W1; 13 is filtered
              ingested=at(T0, 119))
    late = batch([(9, at(T0, 20))], ingested=at(T0, 130))                # W0, within lateness
    too_late = batch([(10, at(T0, 40))], ingested=at(T0, 250))           # W0, past lateness
    on_time = batch([(11, at(T0, 245))], ingested=at(T0, 250))           # W4
    no_event_time = batch([(12, None)], ingested=at(T0, 255), event_time=False)  # W4 by ingest
    jump = batch([(14, at(T0, 370)), (15, at(T0, 490))], ingested=at(T0, 495))  # W6 and W8
    return (ScriptedStream()
            .advance_watermark_to(_ts(0))
            .add_elements([_message("a", a, 95)])
            .add_elements([_message("a", a, 96)])   # the same batch published again
            .add_elements([_message("b", b, 119)])
            .advance_watermark_to(_ts(120))         # W0 and W1 fire on time
            .add_elements([_message("c", late, 130)])
            .advance_watermark_to(_ts(240))         # W0 + lateness (13:01) has passed
            .add_elements([_message("d", too_late, 250), _message("e", on_time, 250)])
            .add_elements([_message("f", no_event_time, 255)])
            .add_elements([_message("g", jump, 495)])
            .advance_watermark_to(_ts(1200))        # W4, W6, W8 fire; W5, W7 are empty
            .advance_watermark_to_infinity())


def _run(sink: Path, source: beam.PTransform, *, streaming: bool = True,
         **spec_args: Any) -> dict[str, int]:
    """Run the graph over ``source``; return its counters (``pipeline_do`` namespace)."""
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = streaming
    spec = stream_spec(str(sink), **spec_args)
    pipeline = beam.Pipeline(runner=BundleBasedDirectRunner(), options=options)
    build_streaming_pipeline(pipeline, spec, source)
    result = pipeline.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    return {c.key.metric.name: c.committed for c in counters["counters"]}


def _name(window_start_s: float, pane: int, partition: str) -> str:
    return window_file_name(PIPELINE_ID, at(T0, window_start_s), pane, 0, "parquet", partition)


def test_windows_panes_lateness_and_a_republished_batch(tmp_path: Path) -> None:
    """Rows past the allowed lateness (n=10) are dropped by Beam without a
    count: the API layer, which knows what it published, must count them."""
    sink = tmp_path / "lake"
    _run(sink, _the_stream(), allowed_lateness_seconds=LATENESS)

    def row(n: int, seconds: float) -> tuple[int, str, int, int]:
        return n, "x" if n % 2 == 0 else "y", n * 10, _us(seconds)

    assert read_files(sink) == {
        # W0 on time: a's first four rows, written once though a came twice.
        _name(0, 0, "h=12/k=x"): [row(2, 10), row(4, 59)],
        _name(0, 0, "h=12/k=y"): [row(1, 1), row(3, 30)],
        # W0's late pane, within the lateness: its own file, next to the on-time one.
        _name(0, 1, "h=12/k=y"): [row(9, 20)],
        # W1: a's last two rows and b's, without n=13 (the WHERE).
        _name(60, 0, "h=12/k=x"): [row(6, 90), row(8, 119)],
        _name(60, 0, "h=12/k=y"): [row(5, 60), row(7, 100)],
        # W4: an on-time row and a row timed by its ingest time (13:02:15).
        _name(240, 0, "h=13/k=x"): [row(12, 255)],
        _name(240, 0, "h=13/k=y"): [row(11, 245)],
        # The watermark jump fired W6 and W8 at once; W2, W3, W5, W7 had no rows, no files.
        _name(360, 0, "h=13/k=x"): [row(14, 370)],
        _name(480, 0, "h=13/k=y"): [row(15, 490)],
    }


def test_without_lateness_late_rows_are_dropped_and_names_are_stable(tmp_path: Path) -> None:
    """Allowed lateness 0: W0's late row (n=9) is dropped too. A second run of
    the same stream into the same sink writes the same names with the same rows."""
    sink = tmp_path / "lake"
    _run(sink, _the_stream())
    first = read_files(sink)
    assert _name(0, 1, "h=12/k=y") not in first
    assert sorted(n for rows in first.values() for n, *_ in rows) == [1, 2, 3, 4, 5, 6, 7, 8,
                                                                     11, 12, 14, 15]
    _run(sink, _the_stream())
    assert read_files(sink) == first



class _Messages(beam.PTransform):
    """A bounded source of ``(batch_id, bytes)`` messages, each at ``arrival`` seconds."""

    def __init__(self, messages: list[tuple[str, bytes]], arrival: float) -> None:
        super().__init__()
        self._messages = messages
        self._arrival = arrival

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return (pbegin | beam.Create(self._messages)
                | beam.Map(TimestampedValue, _ts(self._arrival)))


def test_the_counters_a_job_reports(tmp_path: Path) -> None:
    """Events written, files written, batches dropped as re-published.

    Counted on a bounded run: the streaming DirectRunner's ``metrics()`` loses
    counts (seen: 8 of 12 events, 4 of 9 files, no ``batches_republished``).
    """
    a = batch([(1, at(T0, 5)), (2, at(T0, 65)), (13, at(T0, 66))], ingested=at(T0, 70))
    b = batch([(3, at(T0, 125)), (4, at(T0, 130))], ingested=at(T0, 130))
    counters = _run(tmp_path / "lake", _Messages([("a", a), ("a", a), ("b", b)], 200),
                    streaming=False)
    assert counters == {"events_out": 4, "files_written": 4, "batches_republished": 1}
    assert sorted(n for rows in read_files(tmp_path / "lake").values() for n, *_ in rows) \
        == [1, 2, 3, 4]


def test_event_time_slices_a_batch_by_window() -> None:
    """Null event times take the ingest time; times before 1970 floor into their window."""
    def micros(*values: int) -> pa.Array:
        return pa.array(values, pa.int64()).cast(TIMESTAMP)

    table = pa.table({"n": [1, 2, 3, 4],
                      INGESTED_AT: micros(0, 0, 0, 61_000_000),
                      EVENT_TIME: pa.array([-1, 59_999_999, 5, None], pa.int64()).cast(TIMESTAMP)})
    slices = list(_SliceByWindowFn(60.0).process(("b", table), Timestamp(0)))
    got = [(s.timestamp.micros, s.value.column("n").to_pylist(),
            s.value.column(EVENT_TIME).cast(pa.int64()).to_pylist()) for s in slices]
    assert got == [(-1, [1], [-1]),                               # window [-60 s, 0)
                   (5, [2, 3], [59_999_999, 5]),                  # window [0, 60 s), in order
                   (61_000_000, [4], [61_000_000])]               # its ingest time
