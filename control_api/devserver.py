"""``pipeline-do serve`` as a child process, for tests and benchmarks.

It runs in its own process group on a free loopback port so a caller can
``kill -9`` the whole server (API, job manager and epoch workers) at once,
and talks to it over real HTTP.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import requests

__all__ = ["LiveServer", "free_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    data_dir: str
    api_key: str = "pdo_test_admin_key_0123456789"
    port: int = field(default_factory=free_port)
    extra_env: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()
    # Start with this soft limit on open files, as a host's default would set it.
    open_files: int | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> LiveServer:
        env = {**os.environ, "PIPELINE_DO_API_KEY": self.api_key, "PIPELINE_DO_RATE_LIMIT": "0",
               **self.extra_env}
        log = open(os.path.join(self.data_dir, f"server-{self.port}.log"), "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "control_api.cli", "serve", "--host", "127.0.0.1",
             "--port", str(self.port), "--data-dir", self.data_dir, *self.args],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=None if self.open_files is None else self._limit_open_files)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}; "
                                   f"see {log.name}")
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise TimeoutError("server did not become healthy")

    def _limit_open_files(self) -> None:
        assert self.open_files is not None
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, hard))

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (server, gunicorn, epoch workers)."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def call(self, operation: str, parameters: dict[str, Any] | None = None,
             *, key: str | None = None, timeout: float = 120.0,
             options: dict[str, Any] | None = None) -> requests.Response:
        body: dict[str, Any] = {"operation": operation, "parameters": parameters or {}}
        if options:
            body["options"] = options
        return requests.post(self.url + "/pipeline", json=body, timeout=timeout,
                             headers={"Authorization": f"Bearer {key or self.api_key}"})

    def ok(self, operation: str, parameters: dict[str, Any] | None = None,
           **kwargs: Any) -> Any:
        response = self.call(operation, parameters, **kwargs)
        body = response.json()
        assert response.status_code == 200 and body["success"], body
        return body["data"]

    def post_ndjson(self, pipeline: str, lines: bytes) -> requests.Response:
        return requests.post(f"{self.url}/pipelines/{pipeline}/events", data=lines, timeout=60,
                             headers={"Authorization": f"Bearer {self.api_key}",
                                      "Content-Type": "application/x-ndjson"})
