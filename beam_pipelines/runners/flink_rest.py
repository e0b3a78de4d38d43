"""Flink's REST API: the few calls a streaming job's lifecycle needs, each bounded by a timeout.

==================================  ============================================
call                                Flink REST (1.19 / 1.20)
==================================  ============================================
``upload_jar``                      ``POST /jars/upload`` (multipart ``jarfile``)
``run_jar``                         ``POST /jars/{id}/run`` (``savepointPath``...)
``stop``                            ``POST /jobs/{id}/stop`` → trigger id
``wait_savepoint``                  ``GET /jobs/{id}/savepoints/{trigger}``, polled
``cancel``                          ``PATCH /jobs/{id}?mode=cancel``
``job`` / ``jobs``                  ``GET /jobs/{id}`` / ``GET /jobs/overview``
==================================  ============================================

Errors say which call failed and Flink's HTTP status, never Flink's stack
trace (its error bodies are Java traces of the cluster's internals): a
cluster that does not answer is ``Unavailable`` (retrying can help), a
refusal is ``ConflictError``, a savepoint that does not complete in time is
``TimeoutExceeded``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import requests

from beam_pipelines.errors import (
    ConflictError,
    NotFoundError,
    PipelineDoError,
    TimeoutExceeded,
    Unavailable,
)

__all__ = ["FlinkRest", "flink_state_to_job_state"]

_LOG = logging.getLogger(__name__)

# Flink's JobStatus names onto Dataflow's words (runners.base.JobState).
# FINISHED → DRAINED: a streaming job ends FINISHED only when stopped, with a
# drain or with a savepoint; either way it ended cleanly at our request with
# nothing lost (drain: everything read was processed; savepoint: the source
# positions are in the savepoint), which is what DRAINED says on Dataflow,
# where pause and stop both end in DRAINED too. DONE would claim the job ran
# out of input, which an unbounded source never does.
_STATES = {
    "INITIALIZING": "JOB_STATE_PENDING",
    "CREATED": "JOB_STATE_PENDING",
    "RECONCILING": "JOB_STATE_PENDING",
    "RESTARTING": "JOB_STATE_PENDING",  # recovering from a failure: not processing now
    "SUSPENDED": "JOB_STATE_PENDING",  # lost JobManager leadership; HA resumes it
    "RUNNING": "JOB_STATE_RUNNING",
    "FAILING": "JOB_STATE_FAILED",  # on its way to FAILED; Flink restarts only from RESTARTING
    "FAILED": "JOB_STATE_FAILED",
    "CANCELLING": "JOB_STATE_CANCELLING",
    "CANCELED": "JOB_STATE_CANCELLED",
    "FINISHED": "JOB_STATE_DRAINED",
}


def flink_state_to_job_state(state: str) -> str:
    """A Flink job status as a ``JobState`` value; an unknown one is ``JOB_STATE_UNKNOWN``."""
    return _STATES.get(state, "JOB_STATE_UNKNOWN")


class FlinkRest:
    """One Flink cluster's REST endpoint (``http://host:8081``)."""

    def __init__(self, base_url: str, *, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._http = requests.Session()

    # -- the calls ---------------------------------------------------------
    def upload_jar(self, jar_path: str) -> str:
        """Upload a job jar; its id for ``run_jar``."""
        with open(jar_path, "rb") as jar:
            files = {"jarfile": (os.path.basename(jar_path), jar, "application/x-java-archive")}
            body = self._call("upload the jar", "POST", "/jars/upload", files=files)
        # {"filename": "/tmp/flink-web-.../flink-web-upload/<uuid>_<name>.jar", "status": "success"}
        return os.path.basename(str(body["filename"]))

    def run_jar(self, jar_id: str, entry_class: str, args: list[str], *,
                savepoint: str | None = None, allow_non_restored_state: bool = False,
                parallelism: int | None = None) -> str:
        """Run an uploaded jar's ``entry_class``; the new job's id."""
        payload: dict[str, Any] = {"entryClass": entry_class, "programArgsList": list(args)}
        if savepoint:
            payload["savepointPath"] = savepoint
            payload["allowNonRestoredState"] = allow_non_restored_state
        if parallelism:
            payload["parallelism"] = parallelism
        # Flink answers 500 when the program itself fails (no such entry class, main()
        # threw, a savepoint it cannot restore): retrying the same run cannot help.
        body = self._call("run the job", "POST", f"/jars/{jar_id}/run", json=payload,
                          server_error=ConflictError)
        return str(body["jobid"])

    def delete_jar(self, jar_id: str) -> None:
        self._call("delete the jar", "DELETE", f"/jars/{jar_id}")

    def stop(self, job_id: str, *, drain: bool, target_directory: str | None) -> str:
        """Stop the job with a savepoint (``drain``: emit the max watermark first); the trigger id."""
        payload: dict[str, Any] = {"drain": drain}
        if target_directory:
            payload["targetDirectory"] = target_directory
        body = self._call("stop the job", "POST", f"/jobs/{job_id}/stop", json=payload)
        return str(body["request-id"])

    def wait_savepoint(self, job_id: str, trigger_id: str, *, timeout_s: float,
                       poll_s: float = 0.25) -> str:
        """Poll a savepoint trigger until it completes; the savepoint's location."""
        deadline = time.monotonic() + timeout_s
        while True:
            body = self._call("read the savepoint's progress", "GET",
                              f"/jobs/{job_id}/savepoints/{trigger_id}")
            if body.get("status", {}).get("id") == "COMPLETED":
                operation = body.get("operation") or {}
                if "location" in operation:
                    return str(operation["location"])
                # failure-cause: a Java stack trace and a serialized throwable (~10 KB);
                # its first line is enough for the log.
                cause = operation.get("failure-cause") or {}
                _LOG.warning("Flink savepoint of job %s failed: %s", job_id,
                             str(cause.get("stack-trace", cause)).split("\n", 1)[0][:500])
                raise ConflictError(f"Flink could not take the savepoint of job {job_id}; "
                                    "the Flink JobManager's log has the cause")
            if time.monotonic() >= deadline:
                raise TimeoutExceeded(f"Flink's savepoint of job {job_id} did not complete "
                                      f"within {timeout_s:.0f}s")
            time.sleep(poll_s)

    def cancel(self, job_id: str) -> None:
        self._call("cancel the job", "PATCH", f"/jobs/{job_id}", params={"mode": "cancel"})

    def job(self, job_id: str) -> dict[str, Any]:
        """``GET /jobs/{id}``: its ``state``, ``name``, ``duration``, vertices..."""
        return self._call("read the job", "GET", f"/jobs/{job_id}")

    def jobs(self) -> list[dict[str, Any]]:
        """``GET /jobs/overview``: every job the cluster knows (``jid``, ``name``, ``state``...)."""
        return list(self._call("list the jobs", "GET", "/jobs/overview").get("jobs", []))

    def wait_state(self, job_id: str, states: frozenset[str], *, timeout_s: float,
                   poll_s: float = 0.25) -> str:
        """Poll the job until its Flink state is one of ``states``; that state."""
        deadline = time.monotonic() + timeout_s
        while True:
            state = str(self.job(job_id).get("state"))
            if state in states:
                return state
            if time.monotonic() >= deadline:
                raise TimeoutExceeded(f"Flink job {job_id} is {state}, not "
                                      f"{' or '.join(sorted(states))}, after {timeout_s:.0f}s")
            time.sleep(poll_s)

    # -- the one place HTTP happens ---------------------------------------
    def _call(self, what: str, method: str, path: str, *,
              server_error: type[PipelineDoError] = Unavailable, **kwargs: Any) -> dict[str, Any]:
        url = self.base_url + path
        try:
            resp = self._http.request(method, url, timeout=self.timeout_s, **kwargs)
        except requests.RequestException as exc:
            _LOG.warning("Flink REST %s %s failed: %s", method, url, exc)
            raise Unavailable(f"could not {what}: the Flink cluster at {self.base_url} did not "
                              "answer") from None
        if resp.status_code == 404 and path.startswith("/jobs/"):
            raise NotFoundError(f"could not {what}: Flink does not know the job (HTTP 404)")
        if resp.status_code >= 400:
            _LOG.warning("Flink REST %s %s answered %s: %s", method, url, resp.status_code,
                         resp.text[:2000])
            error = server_error if resp.status_code >= 500 else ConflictError
            raise error(f"could not {what}: Flink answered HTTP {resp.status_code}")
        if not resp.content:
            return {}
        try:
            body = resp.json()
        except ValueError:
            raise Unavailable(f"could not {what}: Flink's answer is not JSON") from None
        return body if isinstance(body, Mapping) else {"value": body}  # type: ignore[return-value]
