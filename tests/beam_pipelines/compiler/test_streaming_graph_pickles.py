"""The streaming graph pickles, as a Dataflow or Flink job needs, and keeps its stage names.

A runner ships the graph's transforms and DoFns to workers pickled (Beam's
pickler); a Dataflow update matches the running job's steps by their names.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import apache_beam as beam
from apache_beam.internal import cloudpickle_pickler, pickler
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.testing.test_stream import TestStream as ScriptedStream  # not collected by pytest
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from beam_pipelines.compiler.streaming_graph import (
    STAGE_NAMES,
    StreamingGraph,
    build_streaming_pipeline,
    kafka_source,
    pubsub_source,
)
from tests.beam_pipelines.compiler.stream_fixtures import at, batch, read_files, stream_spec, utc

ROOT = Path(__file__).resolve().parents[3]
SUBSCRIPTION = "projects/test-project/subscriptions/pipeline-events-job"


def _top_level_names(pipeline: beam.Pipeline) -> list[str]:
    """The names under the pipeline's root (one unnamed wrapper holds them)."""
    proto = pipeline.to_runner_api()  # pickles every DoFn with Beam's pickler
    transforms = proto.components.transforms
    (root,) = proto.root_transform_ids
    return [transforms[i].unique_name for i in transforms[root].subtransforms]


def test_the_pubsub_graph_pickles_and_lists_its_stages(tmp_path: Path) -> None:
    graph = StreamingGraph(stream_spec(f"{tmp_path}/lake"), pubsub_source(SUBSCRIPTION))
    # Beam's pickler (cloudpickle by default in 2.77), its cloudpickle, plain pickle.
    for dumps, loads in ((pickler.dumps, pickler.loads),
                         (cloudpickle_pickler.dumps, cloudpickle_pickler.loads),
                         (pickle.dumps, pickle.loads)):
        copy = loads(dumps(graph))
        assert isinstance(copy, StreamingGraph)

    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    pipeline = beam.Pipeline(runner=BundleBasedDirectRunner(), options=options)
    build_streaming_pipeline(pipeline, stream_spec(f"{tmp_path}/lake"),
                             pickler.loads(pickler.dumps(pubsub_source(SUBSCRIPTION))))
    assert tuple(_top_level_names(pipeline)) == STAGE_NAMES
    proto = pipeline.to_runner_api()
    reads = [t for t in proto.components.transforms.values()
             if t.unique_name == "Read/ReadMessages"]
    assert len(reads) == 1


def test_the_kafka_source_is_built_only_when_expanded() -> None:
    """No Maven here: building the source contacts nothing; it only pickles."""
    source = kafka_source("127.0.0.1:9092", "pipeline-events", expansion_service="127.0.0.1:1")
    assert isinstance(pickler.loads(pickler.dumps(source)), beam.PTransform)


_CHILD = """
import pickle, sys
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner

graph = pickle.loads(sys.stdin.buffer.read())
options = PipelineOptions()
options.view_as(StandardOptions).streaming = True
with beam.Pipeline(runner=BundleBasedDirectRunner(), options=options) as p:
    _ = p | graph
"""


def test_the_graph_pickled_here_runs_in_a_fresh_interpreter(tmp_path: Path) -> None:
    """What shipping it to a worker means: only the pickled graph crosses over."""
    t0 = utc(2026, 3, 1, 12, 0)
    data = batch([(1, at(t0, 5)), (2, at(t0, 65))], ingested=at(t0, 70))
    stream = (ScriptedStream()
              .advance_watermark_to(Timestamp.from_utc_datetime(t0))
              .add_elements([TimestampedValue(("only", data),
                                              Timestamp.from_utc_datetime(at(t0, 70)))])
              .advance_watermark_to_infinity())
    spec = stream_spec(str(tmp_path / "lake"), partition_by=None)
    payload = pickle.dumps(StreamingGraph(spec, stream))
    subprocess.run([sys.executable, "-c", _CHILD], input=payload, cwd=ROOT, check=True,
                   timeout=300, capture_output=True)
    files = read_files(tmp_path / "lake")
    assert sorted(files.values()) == [[(1, "y", 10, int(at(t0, 5).timestamp() * 1e6))],
                                      [(2, "x", 20, int(at(t0, 65).timestamp() * 1e6))]]


def test_transport_messages_become_batch_id_and_bytes() -> None:
    """The element contract of ``Read`` for both transports."""
    from apache_beam.io.gcp.pubsub import PubsubMessage

    from beam_pipelines.compiler.streaming_sources import _kafka_pair, _pubsub_pair

    with_id = PubsubMessage(b"ipc", {"batch_id": "b1"}, message_id="m1")
    without_id = PubsubMessage(b"ipc", {}, message_id="m2")
    assert list(_pubsub_pair(with_id)) + list(_pubsub_pair(without_id)) == [
        ("b1", b"ipc"), ("m2", b"ipc")]
    assert list(_kafka_pair((b"b1", b"ipc"))) == [("b1", b"ipc")]
    (anonymous, data), = _kafka_pair((None, b"ipc"))
    assert data == b"ipc" and anonymous.startswith("sha256:") and len(anonymous) == 71
