"""The Flink engine: a pipeline as a streaming Beam job on a Flink session cluster.

==========  ==============================================================
operation   Flink's own calls (``runners.flink_rest``)
==========  ==============================================================
launch      submit the Beam job (FlinkRunner through Beam's job server),
            then find its Flink job id by name in ``/jobs/overview``
pause       ``POST /jobs/{id}/stop {"drain": false, "targetDirectory"}``,
            poll ``/jobs/{id}/savepoints/{trigger}``: the handle names
            the savepoint
resume      launch with ``--savepoint_path``: state and Kafka offsets return
drain       stop with ``"drain": true``, wait for FINISHED
update      stop with a savepoint, submit the new SQL from it
cancel      ``PATCH /jobs/{id}?mode=cancel``
view        ``GET /jobs/{id}``, its state in ``JobState``'s words
==========  ==============================================================

``submit_jar`` is the lower-level path: a job jar uploaded and run through
REST from an optional savepoint. A user with a Beam job packaged as a jar
(``--output_executable_path``) can use it; the tests drive the lifecycle
with it on a real cluster, because Beam's Flink job server is published only
on Maven Central.

Settings come from the definition's ``runner.options`` first, then the
environment (``runners.flink_submit.resolve_settings``). The calls after
launch get only a ``JobHandle``, so each handle the engine returns carries
its cluster (``location``: the REST URL and savepoint directory, as JSON):
whichever process asks later (another API worker, the job watcher in
``serve``, a server restarted with other settings) reaches the job's own
cluster. Only a handle recorded without one falls back to the environment's.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from beam_pipelines.errors import (
    ConflictError,
    DefinitionError,
    NotFoundError,
    PipelineDoError,
    TimeoutExceeded,
)
from beam_pipelines.runners.base import JobHandle, JobRequest, JobState, JobView, Transport
from beam_pipelines.runners.flink_rest import FlinkRest, flink_state_to_job_state
from beam_pipelines.runners.flink_submit import FlinkSettings, beam_pipeline_args, resolve_settings
from beam_pipelines.runners.process_clients import ProcessClients
from beam_pipelines.settings import FLINK_ENV, missing_setting

__all__ = ["FlinkEngine"]


_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Cluster:
    """Where a job runs: its cluster's REST API and where its savepoints go."""

    rest: FlinkRest
    savepoint_dir: str | None


def cluster_location(rest_url: str, savepoint_dir: str | None) -> str:
    """A handle's ``location``: ``{"rest_url": ..., "savepoint_dir": ...}`` (the latter when set)."""
    where = {"rest_url": rest_url, **({"savepoint_dir": savepoint_dir} if savepoint_dir else {})}
    return json.dumps(where, sort_keys=True, separators=(",", ":"))


# Submits the Beam job: (request, settings, pipeline args) → None; see ``_submit_beam``.
BeamSubmit = Callable[[JobRequest, FlinkSettings, list[str]], None]


class FlinkEngine:
    """``Engine`` for ``runner.type: flink``: Flink REST plus Beam's Flink runner."""

    type = "flink"

    def __init__(self, transport: Transport, *, env: Mapping[str, str] | None = None,
                 submit_beam: BeamSubmit | None = None, timeout_s: float = 30.0,
                 savepoint_timeout_s: float = 120.0, find_job_timeout_s: float = 60.0) -> None:
        self.transport = transport
        self._env = dict(os.environ if env is None else env)
        self._submit_beam = submit_beam or _submit_beam
        self._timeout_s = timeout_s
        self._savepoint_timeout_s = savepoint_timeout_s
        self._find_job_timeout_s = find_job_timeout_s
        self._rests: ProcessClients[str, FlinkRest] = ProcessClients()  # by REST URL

    # -- settings ----------------------------------------------------------
    def check(self, options: Mapping[str, Any]) -> None:
        self.settings(options)

    def settings(self, options: Mapping[str, Any]) -> FlinkSettings:
        """The resolved settings; a job-server jar named by path must exist on this server."""
        settings = resolve_settings(options, self._env)
        jar = settings.job_server_jar
        if (settings.job_endpoint is None and jar and "://" not in jar
                and not os.path.isfile(jar)):
            raise DefinitionError("runner.options.job_server_jar", "the Flink job server jar is "
                                  "not a file on this server: download Beam's "
                                  "beam-runners-flink-<version>-job-server jar and set "
                                  "runner.options.job_server_jar or "
                                  "PIPELINE_DO_FLINK_JOB_SERVER_JAR to its path")
        return settings

    def _cluster(self, handle: JobHandle) -> _Cluster:
        """The handle's cluster; the environment's only for a handle recorded without one."""
        if handle.location is not None:
            try:
                where = json.loads(handle.location)
                return _Cluster(self._rest(str(where["rest_url"])), where.get("savepoint_dir"))
            except (ValueError, TypeError, KeyError):
                _LOG.error("job %s has an unreadable location %r", handle.job_id,
                           handle.location[:200])
                raise PipelineDoError(f"the recorded location of Flink job {handle.job_id} "
                                      "is unreadable; the server log has it") from None
        url = self._env.get(FLINK_ENV["rest_url"])
        if not url:
            raise missing_setting("Flink", "rest_url", FLINK_ENV["rest_url"],
                                  "the JobManager's REST URL")
        return _Cluster(self._rest(url), self._env.get(FLINK_ENV["savepoint_dir"]))

    def _rest(self, url: str) -> FlinkRest:
        url = url.rstrip("/")
        return self._rests.get(url, lambda: FlinkRest(url, timeout_s=self._timeout_s))

    # -- the Beam job --------------------------------------------------------
    def launch(self, request: JobRequest) -> JobHandle:
        return self._launch(request, allow_non_restored_state=False)

    def _launch(self, request: JobRequest, *, allow_non_restored_state: bool) -> JobHandle:
        settings = self.settings(_runner_options(request.definition))
        rest = self._rest(settings.rest_url)
        before = {job["jid"] for job in rest.jobs()}
        args = beam_pipeline_args(settings, request.job_name, savepoint=request.savepoint,
                                  allow_non_restored_state=allow_non_restored_state)
        self._submit_beam(request, settings, args)
        job_id = self._find_job(rest, request.job_name, exclude=before)
        return JobHandle(job_id=job_id, job_name=request.job_name,
                         location=cluster_location(rest.base_url, settings.savepoint_dir))

    def _find_job(self, rest: FlinkRest, job_name: str, *, exclude: set[str]) -> str:
        """The new job named ``job_name``: the Beam job server gives no Flink job id back.

        Any state counts (a job that failed at once is still ours, and ``view`` says so);
        ``exclude`` holds the jobs that were there before the submission.
        """
        deadline = time.monotonic() + self._find_job_timeout_s
        while True:
            found = [job for job in rest.jobs()
                     if job.get("name") == job_name and job.get("jid") not in exclude]
            if found:
                return str(max(found, key=lambda job: job.get("start-time", 0))["jid"])
            if time.monotonic() >= deadline:
                raise TimeoutExceeded(f"no Flink job named {job_name!r} appeared within "
                                      f"{self._find_job_timeout_s:.0f}s of the submission")
            time.sleep(0.5)

    def update(self, handle: JobHandle, request: JobRequest) -> JobHandle:
        """Savepoint, then the new SQL from it: a changed SQL may drop a stateful step, so
        state that maps onto nothing is allowed to go (``allow_non_restored_state``)."""
        paused = self.pause(handle)
        try:
            return self._launch(replace(request, savepoint=paused.savepoint),
                                allow_non_restored_state=True)
        except PipelineDoError as exc:
            # The old job is gone: say where its state is, so a resume can use it.
            exc.message = (f"{exc.message} (the previous job stopped with savepoint "
                           f"{paused.savepoint})")
            exc.details["savepoint"] = paused.savepoint
            exc.args = (exc.message,)
            raise

    # -- a job jar through REST ------------------------------------------------
    def submit_jar(self, rest_url: str, jar_path: str, entry_class: str, args: list[str], *,
                   job_name: str, savepoint_dir: str | None = None, savepoint: str | None = None,
                   allow_non_restored_state: bool = False) -> JobHandle:
        """Upload ``jar_path`` and run ``entry_class`` (from ``savepoint`` when given).

        ``job_name`` is the name the jar's job gives itself; savepoints go under
        ``savepoint_dir/<job_name>`` (None: the cluster's ``state.savepoints.dir``).
        """
        rest = self._rest(rest_url)
        jar_id = rest.upload_jar(jar_path)
        try:
            job_id = rest.run_jar(jar_id, entry_class, args, savepoint=savepoint,
                                  allow_non_restored_state=allow_non_restored_state)
        finally:
            rest.delete_jar(jar_id)  # the job keeps its own copy
        return JobHandle(job_id=job_id, job_name=job_name,
                         location=cluster_location(rest.base_url, savepoint_dir))

    # -- the job's lifecycle ------------------------------------------------------
    def pause(self, handle: JobHandle) -> JobHandle:
        """Stop with a savepoint; a handle recorded without a location comes back with the
        cluster that worked."""
        cluster = self._cluster(handle)
        savepoint = self._stop(cluster, handle, drain=False)
        return replace(handle, savepoint=savepoint, location=cluster_location(
            cluster.rest.base_url, cluster.savepoint_dir))

    def drain(self, handle: JobHandle) -> None:
        self._stop(self._cluster(handle), handle, drain=True)

    def _stop(self, cluster: _Cluster, handle: JobHandle, *, drain: bool) -> str:
        """Stop with a savepoint; wait until it is written and the job FINISHED; its location."""
        rest = cluster.rest
        # Flink accepts a stop of an ended job (HTTP 202) and only its savepoint's status
        # says it failed; asking first gives the user the reason in words.
        state = rest.job(handle.job_id).get("state")
        if state != "RUNNING":
            raise ConflictError(f"cannot stop Flink job {handle.job_id}: it is {state}, "
                                "not RUNNING")
        target = (f"{cluster.savepoint_dir.rstrip('/')}/{handle.job_name}"
                  if cluster.savepoint_dir else None)
        trigger = rest.stop(handle.job_id, drain=drain, target_directory=target)
        location = rest.wait_savepoint(handle.job_id, trigger, timeout_s=self._savepoint_timeout_s)
        state = rest.wait_state(handle.job_id, frozenset({"FINISHED", "FAILED", "CANCELED"}),
                                timeout_s=self._timeout_s)
        if state != "FINISHED":
            raise ConflictError(f"Flink job {handle.job_id} ended {state} while it was stopped")
        return location

    def cancel(self, handle: JobHandle) -> None:
        rest = self._cluster(handle).rest
        try:
            rest.cancel(handle.job_id)
        except NotFoundError:
            return  # already gone: what cancel wants
        rest.wait_state(handle.job_id, frozenset({"CANCELED", "FAILED", "FINISHED"}),
                        timeout_s=self._timeout_s)

    def view(self, handle: JobHandle) -> JobView:
        try:
            job = self._cluster(handle).rest.job(handle.job_id)
        except NotFoundError:
            return JobView(state=JobState.UNKNOWN,
                           message=f"the Flink cluster does not know job {handle.job_id}")
        metrics: dict[str, float] = {}
        # Flink counts records per operator, and a record here is a whole ingest batch,
        # not an event: events_out and bytes_out are not derivable, so they stay absent.
        if isinstance(job.get("duration"), int | float) and job["duration"] >= 0:
            metrics["uptime_seconds"] = job["duration"] / 1000.0
        state = str(job.get("state"))
        return JobView(state=flink_state_to_job_state(state), metrics=metrics,
                       message=f"Flink job state {state}")


def _runner_options(definition: Mapping[str, Any]) -> Mapping[str, Any]:
    runner = definition.get("runner") or {}
    options = runner.get("options") if isinstance(runner, Mapping) else None
    return options if isinstance(options, Mapping) else {}


def _submit_beam(request: JobRequest, settings: FlinkSettings, args: list[str]) -> None:
    """Build the streaming graph on a Kafka source and submit it (returns once submitted).

    Imported here: Beam and the graph load only when a Flink job is launched.
    """
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_pipelines.compiler.streaming_graph import (
        StreamSpec,
        build_streaming_pipeline,
        kafka_source,
    )
    from beam_pipelines.model.definition import definition_from_dict
    from beam_pipelines.runners.transports import topic_name

    definition = definition_from_dict(dict(request.definition))
    options = _runner_options(request.definition)
    spec = StreamSpec(
        pipeline_id=request.pipeline_id, sql=request.sql, input_schema=request.input_schema,
        sink=definition.sink, window_seconds=definition.sink.roll.interval_seconds,
        allowed_lateness_seconds=float(options.get("allowed_lateness_seconds", 0)))
    source = kafka_source(settings.kafka_bootstrap, topic_name(request.pipeline_id),
                          expansion_service=settings.kafka_expansion_service)
    pipeline = beam.Pipeline(options=PipelineOptions(args))
    # Stages at the root: Flink's operator uids are the transforms' names, which a
    # restore from a savepoint matches by.
    build_streaming_pipeline(pipeline, spec, source)
    pipeline.run()  # streaming: returns once the job server accepted the job
