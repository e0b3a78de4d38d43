"""The few Dataflow v1b3 REST calls the engine makes itself, each bounded by a timeout.

Launching and updating a job go through Beam's own ``DataflowRunner``
(``runners.dataflow_job``) unless a Flex Template is configured; everything
else is a plain REST call, in the shapes of the API's reference (and of
``gcloud dataflow jobs drain|cancel``):

* get a job:      ``GET  v1b3/projects/{p}/locations/{r}/jobs/{id}``
* list jobs:      ``GET  v1b3/projects/{p}/locations/{r}/jobs?filter=ACTIVE``
* drain / cancel: ``PUT  v1b3/projects/{p}/locations/{r}/jobs/{id}``
  with ``{"requestedState": "JOB_STATE_DRAINING" | "JOB_STATE_CANCELLED"}``
* Flex Template:  ``POST v1b3/projects/{p}/locations/{r}/flexTemplates:launch``
* metrics:        ``GET  .../jobs/{id}/metrics``
* messages:       ``GET  .../jobs/{id}/messages?minimumImportance=...``

Why not Beam's ``DataflowApplicationClient`` for these: its calls retry with
exponential back-off for minutes (``modify_job_state``: 7 tries from 5 s) and
take no timeout, while a lifecycle operation answers an HTTP request. Here one
call is one bounded request; an error becomes a ``PipelineDoError`` whose
message names the operation and the API's own status, nothing of this process.

Auth: Google's default credentials (``google.auth.default``) through an
``AuthorizedSession``; none (``auth=False``) only for an http endpoint on
localhost, which is how the tests' recording server is reached.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests

from beam_pipelines.errors import ConflictError, PipelineDoError, Unavailable

__all__ = ["DEFAULT_ENDPOINT", "DataflowApi", "JobLocation", "api_error", "response_status"]

DEFAULT_ENDPOINT = "https://dataflow.googleapis.com"
_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
_MAX_MESSAGE = 300  # characters of the API's own error text kept in ours
_MAX_PAGES = 20  # list pages read at most (50+ jobs each) before giving up
_LOCATION = re.compile(r"^(?:(?P<endpoint>https?://.+?)/v1b3/)?"
                       r"projects/(?P<project>[^/]+)/locations/(?P<region>[^/]+)$")


@dataclass(frozen=True)
class JobLocation:
    """Where a job lives: its project and region, and the API endpoint (None: Google's).

    ``text`` is its form in a ``JobHandle``: the API's own resource name
    ``projects/{p}/locations/{r}``, under ``{endpoint}/v1b3/`` when the
    endpoint is not Google's; ``parse`` reads it back.
    """

    project: str
    region: str
    endpoint: str | None = None

    @property
    def text(self) -> str:
        name = f"projects/{self.project}/locations/{self.region}"
        return f"{self.endpoint.rstrip('/')}/v1b3/{name}" if self.endpoint else name

    @classmethod
    def parse(cls, text: str) -> JobLocation:
        """``text``'s location; ``ValueError`` when it is not one ``text`` wrote."""
        found = _LOCATION.match(text)
        if found is None:
            raise ValueError(f"not a Dataflow job location: {text[:200]!r}")
        return cls(found["project"], found["region"], found["endpoint"])

    @property
    def no_auth(self) -> bool:
        """Only an endpoint on localhost (a test server) is called without Google credentials."""
        return self.endpoint is not None and urlsplit(self.endpoint).hostname == "localhost"

    @property
    def location_path(self) -> str:
        return f"v1b3/projects/{self.project}/locations/{self.region}"

    @property
    def jobs_path(self) -> str:
        return f"{self.location_path}/jobs"


class DataflowApi:
    """A Dataflow v1b3 REST client for one endpoint; each call one request, ``timeout_s`` each."""

    def __init__(self, endpoint: str | None = None, *, auth: bool = True,
                 timeout_s: float = 30.0) -> None:
        self.endpoint = (endpoint or DEFAULT_ENDPOINT).rstrip("/")
        self.auth = auth
        self.timeout_s = timeout_s
        self._session: requests.Session | None = None

    # -- the calls -----------------------------------------------------------
    def get_job(self, where: JobLocation, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"{where.jobs_path}/{job_id}", f"read Dataflow job {job_id}")

    def active_jobs(self, where: JobLocation) -> Iterator[dict[str, Any]]:
        """The location's active jobs, page by page (at most ``_MAX_PAGES`` pages)."""
        token: str | None = None
        for _ in range(_MAX_PAGES):
            params = {"filter": "ACTIVE", **({"pageToken": token} if token else {})}
            page = self._call("GET", where.jobs_path, "list Dataflow jobs", params=params)
            yield from page.get("jobs", [])
            token = page.get("nextPageToken")
            if not token:
                return

    def request_state(self, where: JobLocation, job_id: str, state: str) -> dict[str, Any]:
        """Ask the service to move the job to ``state`` (drain or cancel)."""
        return self._call("PUT", f"{where.jobs_path}/{job_id}",
                          f"set Dataflow job {job_id} to {state}",
                          body={"requestedState": state})

    def launch_flex_template(self, where: JobLocation,
                             launch_parameter: dict[str, Any]) -> dict[str, Any]:
        """``POST .../flexTemplates:launch``; the created job (``{"id": ...}``)."""
        reply = self._call("POST", f"{where.location_path}/flexTemplates:launch",
                           "launch the Dataflow Flex Template",
                           body={"launchParameter": launch_parameter})
        return dict(reply.get("job") or {})

    def metrics(self, where: JobLocation, job_id: str) -> list[dict[str, Any]]:
        reply = self._call("GET", f"{where.jobs_path}/{job_id}/metrics",
                           f"read the metrics of Dataflow job {job_id}")
        return list(reply.get("metrics", []))

    def messages(self, where: JobLocation, job_id: str,
                 minimum_importance: str = "JOB_MESSAGE_ERROR") -> list[dict[str, Any]]:
        reply = self._call("GET", f"{where.jobs_path}/{job_id}/messages",
                           f"read the messages of Dataflow job {job_id}",
                           params={"minimumImportance": minimum_importance})
        return list(reply.get("jobMessages", []))

    # -- transport -------------------------------------------------------------
    def _http(self) -> requests.Session:
        if self._session is None:
            if self.auth:
                import google.auth
                from google.auth.transport.requests import AuthorizedSession

                credentials, _ = google.auth.default(scopes=list(_SCOPES))
                self._session = AuthorizedSession(credentials)
            else:
                self._session = requests.Session()
        return self._session

    def _call(self, method: str, path: str, what: str, *, params: dict[str, str] | None = None,
              body: dict[str, Any] | None = None) -> dict[str, Any]:
        from google.auth.exceptions import GoogleAuthError

        url = f"{self.endpoint}/{path}"
        try:
            resp = self._http().request(method, url, params=params, json=body,
                                        timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise Unavailable(f"could not {what}: the Dataflow API at {self.endpoint} did not "
                              f"answer ({type(exc).__name__})") from None
        except GoogleAuthError as exc:  # no default credentials, or their refresh failed
            raise Unavailable(f"could not {what}: no usable Google credentials "
                              f"({type(exc).__name__}); set GOOGLE_APPLICATION_CREDENTIALS "
                              "or run on a service account") from None
        if resp.status_code >= 400:
            raise api_error(what, resp.status_code, response_status(resp))
        try:
            reply: dict[str, Any] = resp.json() if resp.content else {}
        except ValueError:
            raise Unavailable(f"could not {what}: the Dataflow API answered HTTP "
                              f"{resp.status_code} with a body that is not JSON") from None
        return reply


def api_error(what: str, code: int, status: str) -> PipelineDoError:
    """The error for a refused call: transient for 429/5xx, else a clash with the job's state."""
    message = f"could not {what}: Dataflow answered HTTP {code}" + (f" ({status})" if status else "")
    if code == 429 or code >= 500:
        return Unavailable(message)
    return ConflictError(message, {"engine_status": code})


def response_status(resp: requests.Response) -> str:
    """The API's ``error.status: error.message``, shortened; '' when the body has none."""
    try:
        error = resp.json().get("error") or {}
    except (ValueError, AttributeError):
        return ""
    text = ": ".join(str(part) for part in (error.get("status"), error.get("message")) if part)
    return text[:_MAX_MESSAGE]
