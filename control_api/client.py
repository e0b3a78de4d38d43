"""A small Python client for the pipeline.do REST contract (API.md).

    from control_api.client import Client
    client = Client("http://127.0.0.1:8080", api_key="pdo_...")
    client.create({"name": "clicks", "sql": "SELECT * FROM events"})
    client.start("clicks")
    client.ingest("clicks", [{"user_id": 1}])
    client.monitor("clicks")

Every method returns the reply's ``data``; an error reply raises
:class:`ApiClientError` with its HTTP status, code, message and details.
429 and 503 replies are retried after their ``Retry-After`` (at most
``max_retries`` times); ingest calls carry an ``X-Idempotency-Key`` so
such a retry can never ingest twice.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import requests

__all__ = ["ApiClientError", "Client", "iter_ndjson_chunks"]

_DEFAULT_URL = "http://127.0.0.1:8080"


class ApiClientError(Exception):
    def __init__(self, status: int, code: str, message: str,
                 details: dict[str, Any] | None = None, request_id: str | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}
        self.request_id = request_id


class Client:
    def __init__(self, url: str | None = None, api_key: str | None = None, *,
                 timeout: float = 120.0, max_retries: int = 3,
                 session: requests.Session | None = None) -> None:
        self.url = (url or os.environ.get("PIPELINE_DO_URL") or _DEFAULT_URL).rstrip("/")
        self.api_key = api_key or os.environ.get("PIPELINE_DO_API_KEY") or ""
        self.timeout = timeout
        self.max_retries = max_retries
        self.session = session or requests.Session()

    # -- transport ------------------------------------------------------------

    def request(self, method: str, path: str, *, json_body: Any = None, data: bytes | None = None,
                content_type: str | None = None, idempotency_key: str | None = None,
                params: dict[str, Any] | None = None, raw: bool = False) -> Any:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        if idempotency_key:
            headers["X-Idempotency-Key"] = idempotency_key
        if json_body is not None:
            data = json.dumps(json_body).encode()
            content_type = "application/json"
        if content_type:
            headers["Content-Type"] = content_type
        for attempt in range(self.max_retries + 1):
            response = self.session.request(method, self.url + path, data=data, headers=headers,
                                            params=params, timeout=self.timeout)
            retryable = response.status_code in (429, 503) and attempt < self.max_retries
            if retryable and (method != "POST" or idempotency_key or response.status_code == 429):
                time.sleep(min(60.0, float(response.headers.get("Retry-After") or 1)))
                continue
            break
        if raw and response.ok:
            return response.text
        try:
            body = response.json()
        except ValueError:
            raise ApiClientError(response.status_code, "INVALID_RESPONSE",
                                 f"the server answered {response.status_code} without JSON: "
                                 f"{response.text[:200]}") from None
        if not body.get("success"):
            error = body.get("error") or {}
            raise ApiClientError(response.status_code, error.get("code", "UNKNOWN"),
                                 error.get("message", ""), error.get("details"),
                                 (body.get("meta") or {}).get("requestId"))
        return body["data"]

    def call(self, operation: str, parameters: dict[str, Any] | None = None, *,
             options: dict[str, Any] | None = None, idempotency_key: str | None = None) -> Any:
        """``POST /pipeline`` with an operation and its parameters."""
        body: dict[str, Any] = {"operation": operation, "parameters": parameters or {}}
        if options:
            body["options"] = options
        return self.request("POST", "/pipeline", json_body=body, idempotency_key=idempotency_key)

    # -- operations -----------------------------------------------------------

    @staticmethod
    def _ref(pipeline: str) -> dict[str, str]:
        return {"pipeline_id": pipeline} if pipeline.startswith("pl_") else {"name": pipeline}

    def create(self, definition: dict[str, Any]) -> Any:
        return self.call("create", definition)

    def get(self, pipeline: str) -> Any:
        return self.call("get", self._ref(pipeline))

    def list_pipelines(self) -> Any:
        return self.call("list")["pipelines"]

    def delete(self, pipeline: str) -> Any:
        return self.call("delete", self._ref(pipeline))

    def start(self, pipeline: str) -> Any:
        return self.call("start", self._ref(pipeline))

    def pause(self, pipeline: str) -> Any:
        return self.call("pause", self._ref(pipeline))

    def resume(self, pipeline: str) -> Any:
        return self.call("resume", self._ref(pipeline))

    def stop(self, pipeline: str, timeout_ms: int | None = None) -> Any:
        return self.call("stop", self._ref(pipeline),
                         options={"timeout": timeout_ms} if timeout_ms else None)

    def ingest(self, pipeline: str, events: list[dict[str, Any]], *,
               idempotency_key: str | None = None) -> Any:
        return self.call("ingest", {**self._ref(pipeline), "events": events},
                         idempotency_key=idempotency_key or _new_key())

    def ingest_ndjson(self, pipeline: str, body: bytes, *,
                      idempotency_key: str | None = None) -> Any:
        """The fast path: ``POST /pipelines/<ref>/events`` with NDJSON."""
        return self.request("POST", f"/pipelines/{pipeline}/events", data=body,
                            content_type="application/x-ndjson",
                            idempotency_key=idempotency_key or _new_key())

    def transform(self, pipeline: str, sql: str, *, dry_run: bool = False,
                  limit: int | None = None) -> Any:
        params: dict[str, Any] = {**self._ref(pipeline), "sql": sql, "dry_run": dry_run}
        if limit is not None:
            params["limit"] = limit
        return self.call("transform", params)

    def monitor(self, pipeline: str, window_seconds: float = 60) -> Any:
        return self.call("monitor", {**self._ref(pipeline), "window_seconds": window_seconds})

    def logs(self, pipeline: str, *, since: str | None = None, level: str | None = None,
             limit: int = 100) -> Any:
        params: dict[str, Any] = {**self._ref(pipeline), "limit": limit}
        if since:
            params["since"] = since
        if level:
            params["level"] = level
        return self.call("logs", params)["logs"]

    def follow_logs(self, pipeline: str, *, since: str | None = None, level: str | None = None,
                    poll_seconds: float = 1.0) -> Iterator[dict[str, Any]]:
        """Yield log entries as they appear, oldest first, forever."""
        seen: set[tuple[str, str]] = set()
        while True:
            entries = self.logs(pipeline, since=since, level=level, limit=1000)
            for entry in entries:
                key = (entry["timestamp"], entry["message"])
                if key not in seen:
                    seen.add(key)
                    yield entry
            if entries:
                since = entries[-1]["timestamp"]
                seen = {k for k in seen if k[0] >= since}
            time.sleep(poll_seconds)

    # -- webhooks and the rest -------------------------------------------------

    def create_webhook(self, url: str, events: Iterable[str], secret: str | None = None) -> Any:
        body: dict[str, Any] = {"url": url, "events": list(events)}
        if secret:
            body["secret"] = secret
        return self.request("POST", "/webhooks", json_body=body)

    def list_webhooks(self) -> Any:
        return self.request("GET", "/webhooks")["webhooks"]

    def delete_webhook(self, webhook_id: str) -> Any:
        return self.request("DELETE", f"/webhooks/{webhook_id}")

    def webhook_deliveries(self, webhook_id: str, limit: int = 50) -> Any:
        return self.request("GET", f"/webhooks/{webhook_id}/deliveries",
                            params={"limit": limit})["deliveries"]

    def metrics(self) -> str:
        return str(self.request("GET", "/metrics", raw=True))

    def openapi(self) -> Any:
        return self.session.get(self.url + "/openapi.json", timeout=self.timeout).json()


def _new_key() -> str:
    return "idem_" + uuid.uuid4().hex


def iter_ndjson_chunks(stream: Any, *, max_events: int = 10_000,
                       max_bytes: int = 4 * 1024 * 1024) -> Iterator[tuple[bytes, int, int]]:
    """Split an NDJSON byte stream into request bodies: (body, events, bytes read).

    Blank lines are skipped; a chunk closes before it would pass either limit.
    """
    lines: list[bytes] = []
    size = read = 0
    for line in stream:
        read += len(line)
        stripped = line.strip()
        if not stripped:
            continue
        if lines and (len(lines) >= max_events or size + len(stripped) + 1 > max_bytes):
            yield b"\n".join(lines) + b"\n", len(lines), read - len(line)
            read = len(line)
            lines, size = [], 0
        lines.append(stripped)
        size += len(stripped) + 1
    if lines:
        yield b"\n".join(lines) + b"\n", len(lines), read
