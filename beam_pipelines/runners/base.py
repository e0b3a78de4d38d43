"""The runner seam: what ``PipelineService`` asks of an engine, and what an engine announces.

``Runner`` is one engine's side of the lifecycle (ARCHITECTURE.md's table):

==========  =======================================  ==================================
operation   DirectRunner (``runners.local``)         Dataflow / Flink (issue #8)
==========  =======================================  ==================================
start       schedule its epochs on the worker pool   launch job / submit job
pause       stop planning epochs; ingest buffers     drain / stop with savepoint
resume      plan epochs again                        relaunch / submit from savepoint
stop        flush all buffered events, then exit     drain / stop with drain
transform   new SQL from the next epoch              update job / savepoint, resubmit
delete      unschedule, drop buffer and dead letters cancel, delete subscription
describe    status and epochs in flight              the engine's job view
==========  =======================================  ==================================

The service checks an operation against ``beam_pipelines.model.lifecycle`` (the
one table of statuses) and calls the runner inside the same catalog
transaction (``session``, ``row``), so the move and its check are one
transaction: the runner sets ``row.status`` to the operation's target and
does its own bookkeeping. Work that must wait for the commit (a stop's
flush, freeing a deleted pipeline's buffer) has its own method.

Ingest reaches the engine through the runner too (``ingest``): the local
runner appends to its durable buffer; a distributed one will publish.

``RunnerEvents`` is how an engine's scheduler announces what happened
(an epoch committed, a pipeline failed or finished its stop's flush) to
whoever listens (control_api's webhook outbox), so nothing imports upward.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa

from beam_pipelines.errors import DefinitionError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from beam_pipelines.catalog.store import PipelineRow
    from beam_pipelines.runners.local.epochs import EpochResult

__all__ = ["DeadLetterQuery", "Engine", "JobHandle", "JobRequest", "JobState", "JobView",
           "NoEvents", "Rejected", "Runner", "RunnerEvents", "RunnerRegistry", "Transport"]

# A record refused at decode: (index in the request, code, message, raw record).
Rejected = tuple[int, str, str, str | None]


@dataclass(frozen=True)
class DeadLetterQuery:
    """Which dead letters to read, newest first: by ``ids``, or by ``code`` and the
    time of their last rejection (``since`` <= t < ``until``, Unix seconds); at most
    ``limit``, each with an id below ``before_id`` (the page after a cursor)."""

    ids: tuple[int, ...] | None = None
    code: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 100
    before_id: int | None = None


class RunnerEvents(Protocol):
    """What a runner's scheduler announces; each is called once per event."""

    def on_committed(self, result: EpochResult) -> None:
        """An epoch committed: its files are in the sink and in the catalog."""

    def on_failed(self, pipeline_id: str, epoch: int, message: str, attempts: int) -> None:
        """An epoch used up its attempts: the pipeline is now ``failed``."""

    def on_stopped(self, pipeline_id: str) -> None:
        """A stop's flush ended: the pipeline is now ``stopped``."""


class NoEvents:
    """``RunnerEvents`` nobody listens to (a runner built without an outbox)."""

    def on_committed(self, result: EpochResult) -> None:
        pass

    def on_failed(self, pipeline_id: str, epoch: int, message: str, attempts: int) -> None:
        pass

    def on_stopped(self, pipeline_id: str) -> None:
        pass


class Runner(Protocol):
    """One engine: the lifecycle's operations on it, ingest into it, and its view."""

    def create(self, pipeline_id: str) -> None:
        """Make room for a new pipeline's events (inside the create transaction)."""

    def start(self, session: Session, row: PipelineRow, target: str) -> None:
        """Run the pipeline: ``row.status`` becomes ``target``."""

    def pause(self, session: Session, row: PipelineRow, target: str) -> None:
        """Stop running it; its events keep being accepted."""

    def resume(self, session: Session, row: PipelineRow, target: str) -> None:
        """Run it again after a pause, a failure, or a stop that timed out."""

    def stop(self, session: Session, row: PipelineRow, target: str) -> None:
        """Begin the flush of every accepted event (see ``wait_stopped``)."""

    def wait_stopped(self, pipeline_id: str, timeout_s: float) -> None:
        """After ``stop`` committed: wait until the flush ended (``stopped``), or raise."""

    def transform(self, session: Session, row: PipelineRow, version: int) -> None:
        """Make SQL version ``version`` the one the pipeline's next work runs."""

    def delete(self, session: Session, row: PipelineRow) -> None:
        """Inside the delete transaction: unschedule, refuse further ingest."""

    def release(self, pipeline_id: str) -> None:
        """After the delete committed: free what the pipeline held."""

    def describe(self, pipeline_id: str) -> dict[str, Any]:
        """The engine's view of the pipeline: its status and its work in flight."""

    def ingest(self, pipeline_id: str, table: pa.Table, rejected: Iterable[Rejected], *,
               raw_bytes: int) -> None:
        """Accept decoded events durably (raises ``NotFoundError`` once deleted)."""

    def sample(self, pipeline_id: str, limit: int, schema: pa.Schema) -> pa.Table:
        """The newest accepted events, at most ``limit``: for SQL dry runs."""

    def ingest_counters(self, pipeline_id: str, committed_seq: int) -> dict[str, Any]:
        """Events and bytes accepted and rejected, and the backlog after ``committed_seq``."""

    def monitor(self, pipeline_id: str, counters: dict[str, Any],
                window_seconds: float) -> dict[str, Any]:
        """The monitor block: counters, throughput and latency over the window."""

    def dead_letters(self, pipeline_id: str, query: DeadLetterQuery) -> list[dict[str, Any]]:
        """The rejected records ``query`` selects: id, index, code, message, record,
        received_at, rejected_at (Unix seconds) and attempts."""

    def replay_dead_letters(self, pipeline_id: str, accepted: Sequence[int], table: pa.Table,
                            rejected: Sequence[tuple[int, str, str]]) -> tuple[list[int], list[int]]:
        """Accept the dead letters ``accepted`` (their events are ``table``'s rows, in
        that order) exactly once, like an ingest, and record each of ``rejected``'s
        (id, code, message) as rejected again; ids another replay took already are
        skipped. Returns (the ids accepted, the ids rejected again)."""


class RunnerRegistry:
    """The runners a server has, by a definition's ``runner.type``.

    ``run`` is asked when a pipeline is to run (``start``, ``resume``,
    ``stop``): a type with no runner here is refused. Everything else
    (create, ingest, pause, transform, delete, reads) goes to ``holding``:
    the pipeline's own runner, or the ``buffering`` one, where a pipeline
    whose engine is not configured on this server keeps its events.
    """

    def __init__(self, runners: Mapping[str, Runner], *, buffering: str = "direct") -> None:
        self._runners = dict(runners)
        self._buffering = self._runners[buffering]

    def run(self, runner_type: str) -> Runner:
        runner = self._runners.get(runner_type)
        if runner is None:
            # Never run a dataflow/flink definition locally behind the user's back.
            raise DefinitionError("runner.type", f"runner {runner_type!r} is not available on "
                                  "this server: it runs the 'direct' runner only (no Dataflow or "
                                  "Flink launcher is configured)")
        return runner

    def holding(self, runner_type: str) -> Runner:
        return self._runners.get(runner_type, self._buffering)


# -- distributed engines (issue #8) -------------------------------------------
#
# ``runners.distributed.DistributedRunner`` is the ``Runner`` for both
# distributed engines: it keeps the catalog's status, the job record and the
# transport (ingest publishes each accepted batch), and asks an ``Engine``
# (``runners.dataflow.DataflowEngine``, ``runners.flink.FlinkEngine``) for the
# engine's own calls. An engine knows nothing of the catalog.

class JobState:
    """An engine job's state, in Dataflow's words (Flink's are mapped onto them)."""

    PENDING = "JOB_STATE_PENDING"
    RUNNING = "JOB_STATE_RUNNING"
    DRAINING = "JOB_STATE_DRAINING"
    DRAINED = "JOB_STATE_DRAINED"
    CANCELLING = "JOB_STATE_CANCELLING"
    CANCELLED = "JOB_STATE_CANCELLED"
    FAILED = "JOB_STATE_FAILED"
    DONE = "JOB_STATE_DONE"
    UPDATED = "JOB_STATE_UPDATED"
    UNKNOWN = "JOB_STATE_UNKNOWN"

    TERMINAL = frozenset({DRAINED, CANCELLED, FAILED, DONE, UPDATED})


@dataclass(frozen=True)
class JobRequest:
    """What an engine needs to run one pipeline as a streaming job.

    ``definition`` is the pipeline's whole definition (``to_dict`` form, secrets
    included: it goes to the engine, never to a reply); ``sql`` and ``version``
    the SQL to run; ``input_schema`` the decoded events' Arrow schema;
    ``savepoint`` where a Flink job resumes from (None: a fresh start).
    """

    pipeline_id: str
    job_name: str
    definition: Mapping[str, Any]
    sql: str
    version: int
    input_schema: pa.Schema
    savepoint: str | None = None


@dataclass(frozen=True)
class JobHandle:
    """The catalog's record of a pipeline's engine job.

    ``location`` is where the job lives, in a form only the engine that wrote
    it reads (Dataflow: project, region and endpoint; Flink: the cluster's
    REST URL and savepoint directory). The job is addressed there by every
    later call, in whichever process makes it (an API worker, the job watcher
    in ``serve``, a server restarted with other settings): the settings in
    the environment are only a fallback for a handle recorded without one.
    """

    job_id: str
    job_name: str
    savepoint: str | None = None
    location: str | None = None


@dataclass(frozen=True)
class JobView:
    """An engine job as the engine reports it: its state and the metrics it can give.

    ``metrics`` uses the monitor's names (``events_out``, ``bytes_out``,
    ``files_written``...) for what the engine reports; anything it cannot
    report is absent, never zero.
    """

    state: str
    metrics: Mapping[str, float] = field(default_factory=dict)
    message: str | None = None


class Transport(Protocol):
    """Where ingest publishes a pipeline's accepted batches (one topic per pipeline)."""

    def ensure(self, pipeline_id: str) -> None:
        """Create the pipeline's topic (and subscription) if missing; idempotent."""

    def publish(self, pipeline_id: str, data: bytes, attributes: Mapping[str, str],
                timeout_s: float) -> None:
        """Publish one message; return only once the broker confirmed it, else raise."""

    def remove(self, pipeline_id: str) -> None:
        """Delete the pipeline's topic and subscription (missing ones are fine)."""


class Engine(Protocol):
    """One distributed engine's own calls, for ``DistributedRunner``."""

    type: str  # the definition's runner.type: "dataflow" | "flink"
    transport: Transport

    def check(self, options: Mapping[str, Any]) -> None:
        """Raise ``DefinitionError`` naming each missing/invalid setting (runner.options + env)."""

    def launch(self, request: JobRequest) -> JobHandle:
        """Start (or, with ``request.savepoint``, resume) the streaming job."""

    def pause(self, handle: JobHandle) -> JobHandle:
        """Dataflow: drain (the subscription keeps what is not read). Flink: stop with a
        savepoint, no drain; the returned handle names the savepoint."""

    def drain(self, handle: JobHandle) -> None:
        """Ask the job to finish everything it has read and end (stop's flush)."""

    def update(self, handle: JobHandle, request: JobRequest) -> JobHandle:
        """Run ``request.sql`` in place of the job's (Dataflow: update; Flink: savepoint,
        resubmit)."""

    def cancel(self, handle: JobHandle) -> None:
        """End the job now, without draining (delete)."""

    def view(self, handle: JobHandle) -> JobView:
        """The job's state and metrics as the engine reports them now."""
