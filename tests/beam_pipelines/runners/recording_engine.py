"""A test-only ``Engine`` that records every call and plays the job states a test sets.

The real engines (``runners.dataflow``, ``runners.flink``) are tested by
their own suites against a recording Dataflow API and a real Flink cluster;
here the point is what ``DistributedRunner`` asks of an engine, in which
order, with which request, so this engine keeps the calls and lets a test
say what the engine reports next. Its transport is a real one.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from beam_pipelines.errors import DefinitionError
from beam_pipelines.runners.base import JobHandle, JobRequest, JobState, JobView, Transport


@dataclass
class Call:
    name: str
    handle: Any = None  # JobHandle
    request: Any = None  # JobRequest
    options: Mapping[str, Any] = field(default_factory=dict)


class RecordingEngine:
    """Jobs are ``job-1``, ``job-2``... ``savepoints``: pause returns a savepoint (Flink).

    ``location``: what the handles it launches carry (None: none, as an old
    catalog row). Two engines standing for two processes share the service's
    jobs by sharing ``states``.
    """

    def __init__(self, transport: Transport, *, type: str = "dataflow",
                 savepoints: bool = False, location: str | None = None) -> None:
        self.type = type
        self.transport: Any = transport  # the real one a test gave
        self.savepoints = savepoints
        self.location = location
        self.calls: list[Call] = []
        self.states: dict[str, str] = {}
        self.metrics: dict[str, dict[str, float]] = {}
        self.messages: dict[str, str] = {}
        # A drain ends (DRAINED) after this many views of the draining job.
        self.drain_views = 0
        self._drain_seen: dict[str, int] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return [c.name for c in self.calls if c.name != "view"]

    def last(self, name: str) -> Call:
        return [c for c in self.calls if c.name == name][-1]

    def _new_job(self) -> str:
        job_id = f"job-{len(self.states) + 1}"
        self.states[job_id] = JobState.RUNNING
        return job_id

    # -- Engine -------------------------------------------------------------------

    def check(self, options: Mapping[str, Any]) -> None:
        self.calls.append(Call("check", options=dict(options)))
        if not options.get("project"):
            raise DefinitionError("runner.options.project", "Dataflow needs a project: set "
                                  "runner.options.project or PIPELINE_DO_DATAFLOW_PROJECT")

    def launch(self, request: JobRequest) -> JobHandle:
        with self._lock:
            self.calls.append(Call("launch", request=request))
            return JobHandle(self._new_job(), request.job_name, location=self.location)

    def pause(self, handle: JobHandle) -> JobHandle:
        with self._lock:
            self.calls.append(Call("pause", handle=handle))
            if self.savepoints:
                self.states[handle.job_id] = JobState.DONE
                return replace(handle, savepoint=f"file:///sp/{handle.job_id}")
            self.states[handle.job_id] = JobState.DRAINING
            return handle

    def drain(self, handle: JobHandle) -> None:
        with self._lock:
            self.calls.append(Call("drain", handle=handle))
            self.states[handle.job_id] = JobState.DRAINING

    def update(self, handle: JobHandle, request: JobRequest) -> JobHandle:
        with self._lock:
            self.calls.append(Call("update", handle=handle, request=request))
            self.states[handle.job_id] = JobState.UPDATED
            return JobHandle(self._new_job(), handle.job_name, location=self.location)

    def cancel(self, handle: JobHandle) -> None:
        with self._lock:
            self.calls.append(Call("cancel", handle=handle))
            self.states[handle.job_id] = JobState.CANCELLED

    def view(self, handle: JobHandle) -> JobView:
        with self._lock:
            self.calls.append(Call("view", handle=handle))
            state = self.states[handle.job_id]
            if state == JobState.DRAINING:
                seen = self._drain_seen[handle.job_id] = self._drain_seen.get(handle.job_id, 0) + 1
                if seen > self.drain_views:
                    state = self.states[handle.job_id] = JobState.DRAINED
            return JobView(state, self.metrics.get(handle.job_id, {}),
                           self.messages.get(handle.job_id))
