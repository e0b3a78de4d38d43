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

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa

from beam_pipelines.errors import DefinitionError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from beam_pipelines.catalog.store import PipelineRow
    from beam_pipelines.runners.local.epochs import EpochResult

__all__ = ["Rejected", "Runner", "RunnerEvents", "RunnerRegistry"]

# A record refused at decode: (index in the request, code, message, raw record).
Rejected = tuple[int, str, str, str | None]


class RunnerEvents(Protocol):
    """What a runner's scheduler announces; each is called once per event."""

    def on_committed(self, result: EpochResult) -> None:
        """An epoch committed: its files are in the sink and in the catalog."""

    def on_failed(self, pipeline_id: str, epoch: int, message: str, attempts: int) -> None:
        """An epoch used up its attempts: the pipeline is now ``failed``."""

    def on_stopped(self, pipeline_id: str) -> None:
        """A stop's flush ended: the pipeline is now ``stopped``."""


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
