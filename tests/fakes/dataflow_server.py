"""A recording stand-in for the Dataflow v1b3 REST API, on 127.0.0.1.

Dataflow cannot run here, so this server plays the service's side of the wire
contract and keeps every request (method, path, query, JSON body) for the
tests to assert on. It serves what Beam 2.77's ``DataflowRunner`` (through
google-cloud-dataflow-client's REST transport) and ``runners.dataflow`` call:

=======  ==================================================  ===============================
method   path (under ``/v1b3/projects/{p}/locations/{r}``)   what
=======  ==================================================  ===============================
POST     ``/jobs``                                           create (``replaceJobId``: update)
GET      ``/jobs``                                           list (Beam's ``job_id_for_name``)
GET      ``/jobs/{id}``                                      get
PUT      ``/jobs/{id}``                                      ``requestedState``: drain, cancel
GET      ``/jobs/{id}/metrics``                              the scripted metric updates
GET      ``/jobs/{id}/messages``                             the scripted job messages
POST     ``/flexTemplates:launch``                           a job from a Flex Template
=======  ==================================================  ===============================

Request bodies are parsed with the API's own message types
(``google.cloud.dataflow_v1beta3.Job``, ``LaunchFlexTemplateRequest``
into ``Request.launch``), unknown fields refused with HTTP 400
as the service does, so a body the real API would reject fails here too.
``Request.job`` is that parse in the API's canonical JSON (camelCase, enum
names), whether the client sent enum names or numbers (Beam's REST transport
sends numbers with ``$alt=json;enum-encoding=int``).

Job names are unique among a location's active jobs: a create (without
``replaceJobId``) naming an active job gets that job back, with its own
``clientRequestId``, as the service answers (Beam then raises
``DataflowJobAlreadyExistsError``).

Job states are scripted: ``script_states(job_id, [...])`` queues the
``currentState`` that the following GETs (and lists) report, the last one
sticking. Without a script a created job is ``JOB_STATE_RUNNING``; a
requested drain or cancel moves it to DRAINING / CANCELLED, and a replaced
job becomes ``JOB_STATE_UPDATED`` — what the service does, minus the time.

Beam switches its Dataflow client to plain-http REST only when the endpoint's
host contains ``localhost``: pass ``endpoint`` (``http://localhost:PORT``),
not ``http://127.0.0.1:PORT``.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

__all__ = ["DataflowServer", "Request"]

_LAUNCH = re.compile(r"^/v1b3/projects/(?P<project>[^/]+)/locations/(?P<region>[^/]+)"
                     r"/flexTemplates:launch$")
_JOBS = re.compile(r"^/v1b3/projects/(?P<project>[^/]+)/locations/(?P<region>[^/]+)/jobs"
                   r"(?:/(?P<job>[^/:]+)(?:/(?P<sub>metrics|messages))?)?$")


@dataclass(frozen=True)
class Request:
    """One request as the server received it."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: Any  # the JSON body as sent (None when there is none)
    job: dict[str, Any] | None = None  # the body's Job in canonical JSON (create, update)
    launch: dict[str, Any] | None = None  # a Flex Template launch's request, canonical JSON


@dataclass
class _Job:
    id: str
    project: str
    region: str
    record: dict[str, Any]  # canonical JSON of the created Job
    states: list[str] = field(default_factory=lambda: ["JOB_STATE_RUNNING"])
    metrics: list[dict[str, Any]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)

    def state(self, advance: bool) -> str:
        if advance and len(self.states) > 1:
            return self.states.pop(0)
        return self.states[0]

    def view(self, advance: bool = False) -> dict[str, Any]:
        keep = ("name", "type", "clientRequestId", "replaceJobId", "labels")
        return {**{k: v for k, v in self.record.items() if k in keep}, "id": self.id,
                "projectId": self.project, "location": self.region,
                "currentState": self.state(advance),
                "currentStateTime": "2026-12-03T00:00:00Z"}


class DataflowServer:
    """The recording v1b3 server on a free loopback port; a context manager."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._jobs: dict[str, _Job] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.page_size = 50  # jobs per list page (nextPageToken beyond)
        self._failures: dict[str, tuple[int, str, str]] = {}
        self._stalls: dict[str, float] = {}

    # -- lifecycle -------------------------------------------------------
    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the Dataflow server is not started")
        return int(self._httpd.server_address[1])

    @property
    def endpoint(self) -> str:
        """What ``--dataflow_endpoint`` takes (``localhost``: Beam's REST switch)."""
        return f"http://localhost:{self.port}"

    def start(self) -> Self:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        name="fake-dataflow", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- scripting -------------------------------------------------------
    def script_states(self, job_id: str, states: Iterable[str]) -> None:
        """The next GETs report these states in turn; the last one sticks."""
        with self._lock:
            self._jobs[job_id].states = list(states)

    def set_metrics(self, job_id: str, metrics: list[dict[str, Any]]) -> None:
        with self._lock:
            self._jobs[job_id].metrics = list(metrics)

    def set_messages(self, job_id: str, messages: list[dict[str, Any]]) -> None:
        with self._lock:
            self._jobs[job_id].messages = list(messages)

    def add_job(self, name: str, state: str, project: str = "p", region: str = "r") -> str:
        """A job the service already has (e.g. started elsewhere); returns its id."""
        with self._lock:
            job_id = self._new_id()
            self._jobs[job_id] = _Job(job_id, project, region,
                                      {"name": name, "type": "JOB_TYPE_STREAMING"}, [state])
        return job_id

    def fail_next(self, method: str, code: int, status: str, message: str) -> None:
        """The next ``method`` request gets this error (as the service words one)."""
        with self._lock:
            self._failures[method] = (code, status, message)

    def stall_next(self, method: str, seconds: float) -> None:
        """The next ``method`` request is answered only after ``seconds`` (a hung service)."""
        with self._lock:
            self._stalls[method] = seconds

    def state_of(self, job_id: str) -> str:
        with self._lock:
            return self._jobs[job_id].states[0]

    # -- queries for tests -------------------------------------------------
    def calls(self, method: str | None = None, pattern: str = "") -> list[Request]:
        """Recorded requests, optionally by method and a regex on the path."""
        return [r for r in list(self.requests)
                if (method is None or r.method == method) and re.search(pattern, r.path)]

    def clear(self) -> None:
        self.requests.clear()

    # -- the API -----------------------------------------------------------
    def _new_id(self) -> str:
        return f"2026-12-03_00_00_{next(self._ids):02d}-1000"

    def handle(self, method: str, path: str, query: dict[str, list[str]],
               raw: bytes) -> tuple[int, dict[str, Any]]:
        body = json.loads(raw) if raw else None
        with self._lock:
            failure = self._failures.pop(method, None)
            stall = self._stalls.pop(method, 0.0)
        time.sleep(stall)
        if failure is not None:
            self.requests.append(Request(method, path, query, body))
            return failure[0], _error(*failure)
        launch = _LAUNCH.match(path)
        if launch and method == "POST":
            return self._launch(path, query, body, raw, launch["project"], launch["region"])
        match = _JOBS.match(path)
        job_msg: dict[str, Any] | None = None
        status, reply = 404, _error(404, "NOT_FOUND", f"no such resource: {path}")
        try:
            if method in ("POST", "PUT") and match and body is not None:
                job_msg = _canonical_job(raw)
        except ValueError as exc:
            status, reply = 400, _error(400, "INVALID_ARGUMENT",
                                        f"Invalid JSON payload received. {exc}")
        else:
            if match:
                with self._lock:
                    status, reply = self._route(method, match.groupdict(), query, job_msg)
        self.requests.append(Request(method, path, query, body, job_msg))
        return status, reply

    def _route(self, method: str, where: dict[str, str | None], query: dict[str, list[str]],
               job: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
        job_id, sub = where["job"], where["sub"]
        project, region = str(where["project"]), str(where["region"])
        if job_id is None:
            if method == "POST" and job is not None:
                return self._create(project, region, job)
            if method == "GET":
                return self._list(project, region, query)
            return 405, _error(405, "METHOD_NOT_ALLOWED", method)
        found = self._jobs.get(job_id)
        if found is None or (found.project, found.region) != (project, region):
            return 404, _error(404, "NOT_FOUND", f"(job {job_id}) was not found.")
        if sub == "metrics" and method == "GET":
            return 200, {"metrics": found.metrics}
        if sub == "messages" and method == "GET":
            return 200, {"jobMessages": found.messages}
        if sub is None and method == "GET":
            return 200, found.view(advance=True)
        if sub is None and method == "PUT" and job is not None:
            return self._request_state(found, job)
        return 405, _error(405, "METHOD_NOT_ALLOWED", method)

    def _create(self, project: str, region: str, job: dict[str, Any]) -> tuple[int, dict]:
        replace = job.get("replaceJobId")
        if replace:
            old = self._jobs.get(replace)
            if old is None or old.states[0] not in ("JOB_STATE_RUNNING", "JOB_STATE_DRAINING"):
                return 400, _error(400, "FAILED_PRECONDITION",
                                   f"Could not find a running job with id {replace} to update.")
            old.states = ["JOB_STATE_UPDATED"]
        else:
            active = next((j for j in self._jobs.values()
                           if (j.project, j.region) == (project, region)
                           and j.record.get("name") == job.get("name")
                           and j.states[0] not in _TERMINAL), None)
            if active is not None:  # the service answers with the job it already has
                return 200, active.view()
        job_id = self._new_id()
        self._jobs[job_id] = _Job(job_id, project, region, job)
        return 200, self._jobs[job_id].view()

    def _launch(self, path: str, query: dict[str, list[str]], body: Any, raw: bytes,
                project: str, region: str) -> tuple[int, dict[str, Any]]:
        try:
            request = _canonical(raw, "LaunchFlexTemplateRequest")
        except ValueError as exc:
            self.requests.append(Request("POST", path, query, body))
            return 400, _error(400, "INVALID_ARGUMENT", f"Invalid JSON payload received. {exc}")
        self.requests.append(Request("POST", path, query, body, launch=request))
        param = request.get("launchParameter", {})
        name = param.get("jobName")
        with self._lock:
            active = next((j for j in self._jobs.values()
                           if (j.project, j.region) == (project, region)
                           and j.record.get("name") == name and j.states[0] not in _TERMINAL),
                          None)
            record: dict[str, Any] = {"name": name, "type": "JOB_TYPE_STREAMING"}
            if param.get("update"):
                if active is None:
                    return 400, _error(400, "FAILED_PRECONDITION",
                                       f"No running job named {name} to update.")
                active.states = ["JOB_STATE_UPDATED"]
                record["replaceJobId"] = active.id
            elif active is not None:
                return 409, _error(409, "ALREADY_EXISTS",
                                   f"There is already an active job named {name}.")
            job_id = self._new_id()
            self._jobs[job_id] = _Job(job_id, project, region, record, ["JOB_STATE_PENDING",
                                                                        "JOB_STATE_RUNNING"])
            return 200, {"job": self._jobs[job_id].view()}

    def _list(self, project: str, region: str, query: dict[str, list[str]]) -> tuple[int, dict]:
        jobs = [j for j in self._jobs.values() if (j.project, j.region) == (project, region)]
        start = int((query.get("pageToken") or ["0"])[0] or 0)
        page = jobs[start:start + self.page_size]
        reply: dict[str, Any] = {"jobs": [j.view() for j in page]}
        if start + self.page_size < len(jobs):
            reply["nextPageToken"] = str(start + self.page_size)
        return 200, reply

    def _request_state(self, found: _Job, job: dict[str, Any]) -> tuple[int, dict]:
        wanted = job.get("requestedState")
        now = found.states[0]
        if now in _TERMINAL:
            return 400, _error(400, "FAILED_PRECONDITION",
                               f"Workflow modification failed: the job is in state {now}.")
        if wanted == "JOB_STATE_DRAINING":
            found.states = ["JOB_STATE_DRAINING"]
        elif wanted == "JOB_STATE_CANCELLED":
            found.states = ["JOB_STATE_CANCELLED"]
        else:
            return 400, _error(400, "INVALID_ARGUMENT", f"requestedState {wanted!r}")
        return 200, found.view()


_TERMINAL = frozenset({"JOB_STATE_DONE", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED",
                       "JOB_STATE_UPDATED", "JOB_STATE_DRAINED"})


def _canonical_job(raw: bytes) -> dict[str, Any]:
    return _canonical(raw, "Job")


def _canonical(raw: bytes, message: str) -> dict[str, Any]:
    """The body as the API's ``message`` in canonical JSON; ValueError if it is not one."""
    import google.cloud.dataflow_v1beta3 as api
    from google.protobuf import json_format

    kind = getattr(api, message)
    try:
        parsed = kind.from_json(raw, ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        raise ValueError(str(exc)) from None
    reply: dict[str, Any] = json.loads(kind.to_json(parsed, use_integers_for_enums=False,
                                                    always_print_fields_with_no_presence=False))
    return reply


def _error(code: int, status: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "status": status, "message": message}}


class _Handler(BaseHTTPRequestHandler):
    fake: DataflowServer
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        status, reply = self.fake.handle(self.command, url.path,
                                         parse_qs(url.query, keep_blank_values=True), raw)
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass
