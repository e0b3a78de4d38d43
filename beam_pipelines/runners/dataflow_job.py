"""One pipeline's streaming job for Dataflow: what it runs, and its submission through Beam.

``JobSpec`` is everything the job needs, as plain JSON-able data (the input
schema as base64 Arrow IPC), so the same job is built by two callers:

* ``runners.dataflow.DataflowEngine`` (the control plane) submits it with
  Beam's own ``DataflowRunner`` (:func:`submit`): Beam stages ``pipeline.pb``
  and creates the job with the API's ``jobs.create``;
* the Flex Template launcher (``templates/dataflow/main.py``) reads a spec
  file written by the control plane and runs :func:`submit` inside Google's
  launcher container, with the options the Flex Template service passes.

The graph is ``compiler.streaming_graph``'s, read from the pipeline's Pub/Sub
subscription: the same transforms as the epoch graph. Its top-level names
(``STAGE_NAMES``) are the job's identity for ``--update``:
:func:`update_name_mapping` maps each onto itself, so a replacement job takes
over every stage's state (the windows in flight) by name.
"""

from __future__ import annotations

import argparse
import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import pyarrow as pa

from beam_pipelines.model.definition import definition_from_dict
from transforms.batches import BATCH_ID, EVENT_TIME_MS

__all__ = ["JobSpec", "build_job_graph", "launcher_main", "read_spec", "run", "submit",
           "update_name_mapping", "write_spec"]


@dataclass(frozen=True)
class JobSpec:
    """A pipeline's streaming job: definition, SQL, input schema and the subscription it reads."""

    pipeline_id: str
    definition: Mapping[str, Any]
    sql: str
    version: int
    input_schema: pa.Schema
    subscription: str

    def to_json(self) -> str:
        """The spec as JSON (secrets of the definition included: store it privately)."""
        return json.dumps({
            "pipeline_id": self.pipeline_id, "definition": dict(self.definition),
            "sql": self.sql, "version": self.version, "subscription": self.subscription,
            "input_schema": base64.b64encode(self.input_schema.serialize().to_pybytes()).decode(),
        })

    @classmethod
    def from_json(cls, text: str | bytes) -> JobSpec:
        data = json.loads(text)
        schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(data["input_schema"])))
        return cls(pipeline_id=data["pipeline_id"], definition=data["definition"],
                   sql=data["sql"], version=int(data["version"]), input_schema=schema,
                   subscription=data["subscription"])


def stream_spec(job: JobSpec) -> Any:
    """The streaming graph's ``StreamSpec``: window = ``sink.roll.interval_seconds``,
    allowed lateness = ``runner.options.allowed_lateness_seconds`` (default 0)."""
    from beam_pipelines.compiler.streaming_graph import StreamSpec

    definition = definition_from_dict(dict(job.definition))
    lateness = float(definition.runner.options.get("allowed_lateness_seconds") or 0.0)
    return StreamSpec(pipeline_id=job.pipeline_id, sql=job.sql, input_schema=job.input_schema,
                      sink=definition.sink, window_seconds=definition.sink.roll.interval_seconds,
                      allowed_lateness_seconds=lateness)


def build_job_graph(pipeline: Any, job: JobSpec, *, id_label: str | None = BATCH_ID) -> Any:
    """Apply the pipeline's streaming graph, reading ``job.subscription``, to ``pipeline``.

    ``id_label=None`` for Beam's DirectRunner, which refuses it (the graph's
    ``Dedupe`` stage then drops a re-published batch alone).
    """
    from beam_pipelines.compiler.streaming_graph import build_streaming_pipeline, pubsub_source

    return build_streaming_pipeline(pipeline, stream_spec(job), pubsub_source(
        job.subscription, id_label=id_label, timestamp_attribute=EVENT_TIME_MS))


def update_name_mapping() -> dict[str, str]:
    """``--transform_name_mapping`` for an update: every stage onto itself (names never change)."""
    from beam_pipelines.compiler.streaming_graph import STAGE_NAMES

    return {name: name for name in STAGE_NAMES}


def run(job: JobSpec, flags: Sequence[str]) -> Any:
    """Build the job's graph and run it with Beam's ``DataflowRunner``; Beam's result.

    ``flags`` are Beam's own command-line options (``--streaming``,
    ``--project``, ``--update``...). Beam's ``FileSystems`` options are
    process-wide: callers run one submission at a time.
    """
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.dataflow.dataflow_runner import DataflowRunner

    pipeline = beam.Pipeline(runner=DataflowRunner(), options=PipelineOptions(list(flags)))
    build_job_graph(pipeline, job)
    return pipeline.run()


def submit(job: JobSpec, flags: Sequence[str]) -> str:
    """:func:`run`, and the id of the job the service created."""
    result = cast(Any, run(job, flags))  # a DataflowPipelineResult
    job_id = result.job_id() if result.has_job else None
    if not job_id:
        raise RuntimeError("Dataflow created no job (a template location was set?)")
    return str(job_id)


def write_spec(job: JobSpec, uri: str) -> None:
    """Store the spec at ``uri`` (gs://) for a Flex Template launch: through Beam's filesystems,
    so with the credentials Beam uses for staging."""
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(uri, mime_type="application/json") as out:
        out.write(job.to_json().encode())


def read_spec(uri: str) -> JobSpec:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(uri, mime_type="application/json") as src:
        return JobSpec.from_json(src.read())


def launcher_main(argv: Sequence[str] | None = None) -> None:
    """The Flex Template launcher (``templates/dataflow/main.py``).

    ``--job_spec=gs://...`` names the spec the control plane wrote; every other
    argument is Beam's (the Flex Template service passes ``--project``,
    ``--region``, ``--job_name``, ``--temp_location``, ``--update``...).
    """
    parser = argparse.ArgumentParser(description="pipeline.do's Dataflow Flex Template launcher")
    parser.add_argument("--job_spec", required=True,
                        help="gs:// URI of the pipeline's job spec (JSON) written by pipeline.do")
    known, beam_args = parser.parse_known_args(argv)
    run(read_spec(known.job_spec), ["--runner=DataflowRunner", "--streaming", *beam_args])
