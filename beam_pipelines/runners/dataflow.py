"""The Dataflow engine: a pipeline as a streaming Dataflow job, its lifecycle the API's own calls.

=========  ==================================================================================
launch     Beam's ``DataflowRunner``, ``--streaming``: stages ``pipeline.pb`` in
           ``staging_location``, then ``POST v1b3/projects/{p}/locations/{r}/jobs``
           (``type`` JOB_TYPE_STREAMING); the job reads the pipeline's Pub/Sub subscription
pause      drain: ``PUT .../jobs/{id}`` ``{"requestedState": "JOB_STATE_DRAINING"}``; what the
           job has not read stays in the subscription (resume = launch again on it)
drain      the same drain; the caller polls ``view`` until JOB_STATE_DRAINED (stop)
update     check that the job runs, then ``DataflowRunner`` with ``--update`` (same job name,
           ``--transform_name_mapping``): the create carries ``replaceJobId`` and
           ``transformNameMapping``; the old job becomes JOB_STATE_UPDATED
cancel     ``PUT .../jobs/{id}`` ``{"requestedState": "JOB_STATE_CANCELLED"}`` (delete)
view       ``GET .../jobs/{id}`` (``currentState``) and ``GET .../jobs/{id}/metrics`` (the
           user counters of namespace ``pipeline_do``)
=========  ==================================================================================

Launch and update take the ``DataflowRunner`` path in this process, unless
``runner.options.flex_template`` names a built Flex Template
(``templates/dataflow/``): then the engine writes the job spec to
``{staging_location}/specs/`` and calls ``POST .../flexTemplates:launch``
(``update`` and ``transformNameMappings`` for an update), and Google's
launcher container runs the same ``dataflow_job`` code. Why the update checks first: Beam
2.77's ``job_id_for_name`` lists jobs until it finds one of that name running
and never stops when there is none (it compares the last page's token, an
empty string, with ``None``). The check here lists the same way, bounded.

Settings: ``runner.options`` first, then ``PIPELINE_DO_DATAFLOW_*``
(``runners.dataflow_settings``). Every handle the engine returns carries the
job's location (``JobLocation.text``: project, region, endpoint), and every
later call addresses the job there, so a job launched by another process
(an API worker; the job watcher runs in ``serve``) or before a restart with
other settings is still found. Only a handle recorded without a location
(a catalog row older than that) is addressed with the environment's settings.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from beam_pipelines.errors import (
    ConflictError,
    DefinitionError,
    PipelineDoError,
    StorageError,
    Unavailable,
)
from beam_pipelines.runners.base import JobHandle, JobRequest, JobState, JobView
from beam_pipelines.runners.dataflow_api import (
    DataflowApi,
    JobLocation,
    api_error,
    response_status,
)
from beam_pipelines.runners.dataflow_job import JobSpec, submit, update_name_mapping, write_spec
from beam_pipelines.runners.dataflow_settings import (
    DataflowSettings,
    env_location,
    resolve_settings,
)
from beam_pipelines.runners.process_clients import ProcessClients

__all__ = ["COUNTERS", "DataflowEngine", "METRICS_NAMESPACE", "job_state"]

METRICS_NAMESPACE = "pipeline_do"
COUNTERS = ("events_out", "bytes_out", "files_written")

# Dataflow states our JobState has no word for, mapped onto the nearest one.
_STATE_ALIASES = {
    "JOB_STATE_QUEUED": JobState.PENDING,
    "JOB_STATE_STOPPED": JobState.PENDING,  # "not yet started"
    "JOB_STATE_RESOURCE_CLEANING_UP": JobState.CANCELLING,  # ending, not yet terminal
}
_KNOWN_STATES = frozenset(v for k, v in vars(JobState).items() if k.isupper() and isinstance(v, str))
_MAX_MESSAGE = 500
_LOGGER = logging.getLogger(__name__)


def job_state(current: str | None) -> str:
    """A Dataflow ``currentState`` as a ``JobState`` (unknown words: JOB_STATE_UNKNOWN)."""
    if current in _KNOWN_STATES:
        return str(current)
    return _STATE_ALIASES.get(str(current), JobState.UNKNOWN)


class DataflowEngine:
    """``Engine`` for ``runner.type: dataflow``; its transport is the pipeline's Pub/Sub.

    ``transport`` needs ``subscription_path(pipeline_id)`` (the job reads it)
    besides the ``Transport`` calls ingest makes. ``env``: where the
    ``PIPELINE_DO_DATAFLOW_*`` settings come from (default ``os.environ``).
    ``timeout_s`` bounds each REST call the engine makes itself;
    ``submit_timeout_s`` a whole Beam submission (staging included).
    """

    type = "dataflow"

    def __init__(self, transport: Any, *, env: Mapping[str, str] | None = None,
                 timeout_s: float = 30.0, submit_timeout_s: float = 300.0) -> None:
        self.transport = transport
        self._env = os.environ if env is None else env
        self._timeout_s = timeout_s
        self._submit_timeout_s = submit_timeout_s
        self._apis: ProcessClients[str | None, DataflowApi] = ProcessClients()  # by endpoint
        # Beam's FileSystems options and credential cache are process-wide: one submission at
        # a time.
        self._submit_lock = threading.Lock()

    # -- Engine -----------------------------------------------------------
    def check(self, options: Mapping[str, Any]) -> None:
        resolve_settings(options, self._env)

    def launch(self, request: JobRequest) -> JobHandle:
        settings = self._settings_of(request)
        if settings.flex_template:
            job_id = self._launch_template(request, settings, request.job_name, update=False)
        else:
            job_id = self._submit(request, settings, settings.beam_flags(request.job_name))
        return JobHandle(job_id=job_id, job_name=request.job_name,
                         location=settings.location.text)

    def pause(self, handle: JobHandle) -> JobHandle:
        """Drain; a handle recorded without a location comes back with the one that worked."""
        where = self._request_state(handle, JobState.DRAINING)
        return replace(handle, location=where.text)

    def drain(self, handle: JobHandle) -> None:
        self._request_state(handle, JobState.DRAINING)

    def cancel(self, handle: JobHandle) -> None:
        self._request_state(handle, JobState.CANCELLED)

    def update(self, handle: JobHandle, request: JobRequest) -> JobHandle:
        settings = self._settings_of(request)
        # A handle recorded without a location: the definition's settings launched it.
        where = settings.location if handle.location is None else self._where(handle)
        if where != settings.location:
            # An update replaces the job in its own location; it cannot move it.
            raise ConflictError(f"cannot update Dataflow job {handle.job_id}: it runs in "
                                f"{where.text}, and runner.options now name "
                                f"{settings.location.text}; stop the pipeline and start it "
                                "again to move it")
        self._check_replaceable(where, handle)
        if settings.flex_template:
            job_id = self._launch_template(request, settings, handle.job_name, update=True)
        else:
            flags = [*settings.beam_flags(handle.job_name), "--update",
                     f"--transform_name_mapping={json.dumps(update_name_mapping())}"]
            job_id = self._submit(request, settings, flags)
        return JobHandle(job_id=job_id, job_name=handle.job_name, location=where.text)

    def view(self, handle: JobHandle) -> JobView:
        where = self._where(handle)
        api = self._api(where)
        job = api.get_job(where, handle.job_id)
        state = job_state(job.get("currentState"))
        try:
            metrics = user_counters(api.metrics(where, handle.job_id))
        except PipelineDoError:
            metrics = {}  # the state is the answer; counters are absent, never zero
        message = None
        if state == JobState.FAILED:
            message = self._last_error(api, where, handle.job_id)
        return JobView(state=state, metrics=metrics, message=message)

    # -- helpers -------------------------------------------------------------
    def _settings_of(self, request: JobRequest) -> DataflowSettings:
        runner = request.definition.get("runner") or {}
        return resolve_settings(runner.get("options") or {}, self._env)

    def _where(self, handle: JobHandle) -> JobLocation:
        """The handle's location; the environment's only for a handle recorded without one."""
        if handle.location is None:
            return env_location(self._env)
        try:
            return JobLocation.parse(handle.location)
        except ValueError:
            _LOGGER.error("job %s has an unreadable location %r", handle.job_id,
                          handle.location[:200])
            raise PipelineDoError(f"the recorded location of Dataflow job {handle.job_id} is "
                                  "unreadable; the server log has it") from None

    def _api(self, where: JobLocation) -> DataflowApi:
        return self._apis.get(where.endpoint, lambda: DataflowApi(
            where.endpoint, auth=not where.no_auth, timeout_s=self._timeout_s))

    def _request_state(self, handle: JobHandle, state: str) -> JobLocation:
        """Drain or cancel; a job that already ended needs neither (delete stays idempotent).
        Where the job was addressed."""
        where = self._where(handle)
        api = self._api(where)
        try:
            api.request_state(where, handle.job_id, state)
        except ConflictError as refused:
            try:
                job = api.get_job(where, handle.job_id)
            except PipelineDoError:
                raise refused from None
            if job_state(job.get("currentState")) not in JobState.TERMINAL:
                raise
        return where

    def _check_replaceable(self, where: JobLocation, handle: JobHandle) -> None:
        """The job must run, and be the one Beam's ``job_id_for_name`` will find by its name."""
        api = self._api(where)
        current = job_state(api.get_job(where, handle.job_id).get("currentState"))
        if current != JobState.RUNNING:
            raise ConflictError(f"cannot update Dataflow job {handle.job_id}: it is {current}, "
                                "and only a running job can be replaced", {"state": current})
        found = next((job for job in api.active_jobs(where)
                      if job.get("name") == handle.job_name
                      and job.get("currentState") in (JobState.RUNNING, JobState.DRAINING)), None)
        if found is None:
            raise ConflictError(f"cannot update: no running Dataflow job is named "
                                f"{handle.job_name!r} in {where.project}/{where.region}")
        if found.get("id") != handle.job_id:
            raise ConflictError(f"cannot update: the running job named {handle.job_name!r} is "
                                f"{found.get('id')}, not this pipeline's {handle.job_id}")

    def _job_spec(self, request: JobRequest) -> JobSpec:
        return JobSpec(pipeline_id=request.pipeline_id, definition=request.definition,
                       sql=request.sql, version=request.version,
                       input_schema=request.input_schema,
                       subscription=self.transport.subscription_path(request.pipeline_id))

    def _launch_template(self, request: JobRequest, settings: DataflowSettings, job_name: str,
                         *, update: bool) -> str:
        """Write the job spec next to the staged files, then launch the Flex Template on it.

        The spec holds the definition with its sink secrets: it lives in the
        staging bucket, which only the project's Dataflow accounts read.
        """
        uri = f"{settings.staging_location.rstrip('/')}/specs/{job_name}-{request.version}.json"
        with self._submit_lock:
            try:
                write_spec(self._job_spec(request), uri)
            except Exception as exc:
                _LOGGER.warning("writing the Dataflow job spec %s failed", uri, exc_info=True)
                raise submit_error(exc, settings) from None
        launch: dict[str, Any] = {"jobName": job_name,
                                  "containerSpecGcsPath": settings.flex_template,
                                  "parameters": {"job_spec": uri},
                                  "environment": settings.flex_environment()}
        if update:
            launch.update(update=True, transformNameMappings=update_name_mapping())
        job = self._api(settings.location).launch_flex_template(settings.location, launch)
        if not job.get("id"):
            raise Unavailable("the Dataflow Flex Template launch answered without a job id")
        return str(job["id"])

    def _submit(self, request: JobRequest, settings: DataflowSettings, flags: list[str]) -> str:
        """Beam's submission, in a thread this call waits for at most ``submit_timeout_s``.

        Why a thread: Beam's Dataflow client calls the API with no timeout
        (google-cloud-dataflow-client's ``default_timeout=None``), so a
        service that accepts the connection and never answers would hold the
        caller forever. On time-out the submission may still complete: the
        error says so.
        """
        job = self._job_spec(request)
        outcome: dict[str, Any] = {}

        def work() -> None:
            with self._submit_lock:
                try:
                    outcome["job_id"] = submit(job, flags)
                except Exception as exc:  # noqa: BLE001 - handed to the waiting caller
                    outcome["error"] = exc

        worker = threading.Thread(target=work, name=f"dataflow-submit-{request.job_name}",
                                  daemon=True)
        worker.start()
        worker.join(self._submit_timeout_s)
        if worker.is_alive():
            raise Unavailable(f"Dataflow did not accept job {request.job_name!r} within "
                              f"{self._submit_timeout_s:.0f} s; it may still be created: look "
                              "for it before starting the pipeline again")
        if "error" in outcome:
            exc = outcome["error"]
            _LOGGER.warning("Dataflow submission of %s failed", request.job_name,
                            exc_info=(type(exc), exc, exc.__traceback__))
            raise submit_error(exc, settings) from None
        return str(outcome["job_id"])

    def _last_error(self, api: DataflowApi, where: JobLocation, job_id: str) -> str | None:
        try:
            messages = api.messages(where, job_id)
        except PipelineDoError:
            return None
        texts = [m.get("messageText", "") for m in messages if m.get("messageText")]
        return texts[-1][:_MAX_MESSAGE] if texts else None


def user_counters(metrics: list[dict[str, Any]]) -> dict[str, float]:
    """Our counters from a ``jobs.getMetrics`` reply: committed values summed over steps.

    Dataflow reports a user counter per step, twice (``tentative: "true"`` and
    committed); int64 scalars arrive as strings. Counters it has not reported
    are absent.
    """
    totals: dict[str, float] = {}
    for update in metrics:
        name = update.get("name") or {}
        context = name.get("context") or {}
        if (name.get("origin") != "user" or context.get("namespace") != METRICS_NAMESPACE
                or name.get("name") not in COUNTERS or context.get("tentative") == "true"):
            continue
        try:
            value = float(update.get("scalar"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        totals[name["name"]] = totals.get(name["name"], 0.0) + value
    return totals


def submit_error(exc: Exception, settings: DataflowSettings) -> PipelineDoError:
    """What a failed submission tells the user: the API's status, or the setting to fix."""
    import requests
    from apache_beam.runners.dataflow.internal.apiclient import DataflowJobAlreadyExistsError
    from google.api_core.exceptions import GoogleAPICallError

    if isinstance(exc, PipelineDoError):
        return exc
    if isinstance(exc, DataflowJobAlreadyExistsError):
        return ConflictError("Dataflow already runs a job of this name (a paused or stopped "
                             "job may still be draining): try again once it has ended")
    if isinstance(exc, GoogleAPICallError):
        # REST: the reply itself says it best; its message would add our request's URL.
        response = getattr(exc, "response", None)
        status = response_status(response) if isinstance(response, requests.Response) else ""
        return api_error("create the Dataflow job", int(exc.code or 500), status)
    if isinstance(exc, requests.RequestException):
        return Unavailable(f"could not create the Dataflow job: the Dataflow API at "
                           f"{settings.endpoint or 'dataflow.googleapis.com'} did not answer "
                           f"({type(exc).__name__})")
    if isinstance(exc, OSError):
        return StorageError(f"could not stage the Dataflow job in {settings.staging_location} "
                            f"({type(exc).__name__}): check the bucket exists and is writable")
    if isinstance(exc, ValueError):
        return DefinitionError("runner.options", f"Beam refused the Dataflow job's options: "
                               f"{str(exc)[:300]}")
    return PipelineDoError("could not create the Dataflow job; the server log has the details")
