"""Real local object-storage servers for tests.

Both servers run as **subprocesses** on a free loopback port and are used
through the real client libraries (google-cloud-storage, boto3, Beam's
``gs://`` and ``s3://`` filesystems):

* GCS: ``gcp-storage-emulator start --in-memory`` (JSON API, batch, resumable
  uploads, rewrite/copy - everything Beam's gcsio needs).
* S3:  ``moto_server`` (moto in server mode), an in-memory S3 API.

Typical use from a conftest::

    from servers import GcsServer, S3Server

    @pytest.fixture(scope="session")
    def gcs_server():
        with GcsServer() as server:
            yield server            # server.endpoint_url == "http://127.0.0.1:PORT"

Or the functional form ``endpoint, stop = start_gcs_server()``.

Nothing here imports Beam; starting both servers takes about one second.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

__all__ = [
    "GcsServer",
    "PUBSUB_EMULATOR",
    "PubSubEmulator",
    "S3Server",
    "S3_ACCESS_KEY_ID",
    "S3_REGION",
    "S3_SECRET_ACCESS_KEY",
    "GCS_PROJECT",
    "create_gcs_bucket",
    "create_s3_bucket",
    "free_port",
    "gcs_client",
    "s3_client",
    "start_gcs_server",
    "start_s3_server",
    "stop_process_group",
]

# moto accepts any keys; these are the conventional fake ones.
S3_ACCESS_KEY_ID = "testing"
S3_SECRET_ACCESS_KEY = "testing"
S3_REGION = "us-east-1"
GCS_PROJECT = "test-project"

_STARTUP_TIMEOUT = 30.0


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bin(name: str) -> str:
    """The console script ``name`` of the running interpreter's environment."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} is not installed (pip install the [dev] extra)")
    return found


def _load_prctl() -> Any:
    """libc ``prctl``, resolved here in the parent (never import after fork)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except Exception:
        return None


_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec: keep tiny
    # The server gets SIGTERM when the test process dies, even by SIGKILL, so
    # no server is orphaned. The signal follows the *thread* that started the
    # server: start servers from the main thread (pytest fixtures do).
    _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_process_group(proc: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM the process group ``proc`` leads, SIGKILL it after ``timeout`` seconds."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=5)


class _ServerProcess:
    """A server subprocess on a loopback port; a context manager."""

    name = "server"

    def __init__(self, port: int | None = None, env: dict[str, str] | None = None) -> None:
        self.port = port
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self.log_path: str | None = None

    # -- to override -----------------------------------------------------
    def _command(self, port: int) -> list[str]:
        raise NotImplementedError

    def _probe_path(self) -> str:
        return "/"

    def _env(self) -> dict[str, str]:
        return {**os.environ, **self.extra_env}

    # -- lifecycle -------------------------------------------------------
    @property
    def endpoint_url(self) -> str:
        if self.port is None:
            raise RuntimeError(f"{self.name} is not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = _STARTUP_TIMEOUT) -> Self:
        if self.running:
            return self
        attempts = 3 if self.port is None else 1
        last_error: Exception | None = None
        for _ in range(attempts):
            port = self.port if self.port is not None else free_port()
            try:
                self._spawn(port, timeout)
                self.port = port
                return self
            except RuntimeError as exc:  # port race or slow start: try another port
                last_error = exc
                self._kill()
        raise RuntimeError(f"could not start {self.name}: {last_error}")

    def _spawn(self, port: int, timeout: float) -> None:
        fd, self.log_path = tempfile.mkstemp(prefix=f"{self.name}-", suffix=".log")
        self._log = os.fdopen(fd, "wb")
        self.proc = subprocess.Popen(
            self._command(port),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self._env(),
            start_new_session=True,  # own process group: stop() kills only it
            preexec_fn=_die_with_parent if _PRCTL is not None else None,
        )
        url = f"http://127.0.0.1:{port}{self._probe_path()}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: "
                                   f"{self._tail_log()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    resp.read()
                return
            except urllib.error.HTTPError:
                return  # it answers HTTP: good enough
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not answer on {url} within {timeout:.0f}s: "
                           f"{self._tail_log()}")

    def _tail_log(self) -> str:
        if not self.log_path:
            return ""
        try:
            return Path(self.log_path).read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def _kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process_group(proc, 5.0)
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        """Stop the server (the port is kept, so ``start()`` restarts it there)."""
        self._kill()
        if self.log_path:
            try:
                os.unlink(self.log_path)
            except OSError:
                pass
            self.log_path = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class GcsServer(_ServerProcess):
    """``gcp-storage-emulator`` in memory on 127.0.0.1.

    Point clients at it with ``client_options={"api_endpoint": endpoint_url}``
    (google-cloud-storage) or ``STORAGE_EMULATOR_HOST=endpoint_url`` (env).
    """

    name = "gcp-storage-emulator"
    project = GCS_PROJECT

    def sink_options(self) -> dict[str, str]:
        """The pipeline ``sink.options`` that point a gs:// sink here."""
        return {"endpoint_url": self.endpoint_url, "project": self.project}

    def _command(self, port: int) -> list[str]:
        return [_bin("gcp-storage-emulator"), "start", "--host", "127.0.0.1",
                "--port", str(port), "--in-memory", "--quiet"]

    def _probe_path(self) -> str:
        return "/storage/v1/b"

    def _env(self) -> dict[str, str]:
        env = {**os.environ, **self.extra_env}
        env.pop("STORAGE_EMULATOR_HOST", None)
        return env


PUBSUB_EMULATOR = "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator"


class PubSubEmulator(_ServerProcess):
    """Google's Pub/Sub emulator (Debian package google-cloud-cli-pubsub-emulator) on 127.0.0.1.

    Clients find it through ``PUBSUB_EMULATOR_HOST=host_port`` (google-cloud-pubsub
    and Beam's ReadFromPubSub both honour it). Tests that need it skip, saying
    why, on a machine without the package (``PubSubEmulator.available()``).
    """

    name = "pubsub-emulator"
    project = "test-project"

    @staticmethod
    def available() -> bool:
        return os.access(PUBSUB_EMULATOR, os.X_OK) and shutil.which("java") is not None

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _command(self, port: int) -> list[str]:
        return [PUBSUB_EMULATOR, "--host=127.0.0.1", f"--port={port}"]

    def _probe_path(self) -> str:
        return "/"


class S3Server(_ServerProcess):
    """``moto_server`` (moto in server mode, S3 in memory) on 127.0.0.1.

    ``S3Server(env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"})`` makes moto check
    keys against its IAM: every key is then unknown (HTTP 403).
    """

    name = "moto_server"
    access_key_id = S3_ACCESS_KEY_ID
    secret_access_key = S3_SECRET_ACCESS_KEY
    region = S3_REGION

    def _command(self, port: int) -> list[str]:
        return [_bin("moto_server"), "-H", "127.0.0.1", "-p", str(port)]

    def _probe_path(self) -> str:
        return "/moto-api/"

    def sink_options(self) -> dict[str, str]:
        """The pipeline ``sink.options`` that point an s3:// sink here."""
        return {"endpoint_url": self.endpoint_url, "region": self.region,
                "access_key_id": self.access_key_id,
                "secret_access_key": self.secret_access_key}

    def reset(self) -> None:
        """Drop every bucket and object (moto's reset API)."""
        req = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(req, timeout=5) as resp:
            resp.read()


def start_gcs_server(port: int | None = None) -> tuple[str, Callable[[], None]]:
    """Start a GCS API server; return ``(endpoint_url, stop)``."""
    server = GcsServer(port).start()
    return server.endpoint_url, server.stop


def start_s3_server(port: int | None = None) -> tuple[str, Callable[[], None]]:
    """Start an S3 API server; return ``(endpoint_url, stop)``."""
    server = S3Server(port).start()
    return server.endpoint_url, server.stop


# -- clients and buckets ---------------------------------------------------

def gcs_client(endpoint_url: str, project: str = GCS_PROJECT) -> Any:
    """An anonymous google-cloud-storage client for the local server."""
    import google.cloud.storage as gcs_storage
    from google.auth.credentials import AnonymousCredentials

    return gcs_storage.Client(project=project, credentials=AnonymousCredentials(),
                          client_options={"api_endpoint": endpoint_url})


def s3_client(endpoint_url: str, *, access_key_id: str = S3_ACCESS_KEY_ID,
              secret_access_key: str = S3_SECRET_ACCESS_KEY,
              region: str = S3_REGION) -> Any:
    """A boto3 S3 client for the local server."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url, region_name=region,
        aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key,
        config=Config(retries={"max_attempts": 1, "mode": "standard"},
                      connect_timeout=2, read_timeout=10))


def create_gcs_bucket(endpoint_url: str, name: str, project: str = GCS_PROJECT) -> None:
    """Create bucket ``name`` on the local GCS server (no error if it exists)."""
    from google.api_core.exceptions import Conflict

    try:
        gcs_client(endpoint_url, project).create_bucket(name)
    except Conflict:
        pass


def create_s3_bucket(endpoint_url: str, name: str, **client_kwargs: Any) -> None:
    """Create bucket ``name`` on the local S3 server (no error if it exists)."""
    client = s3_client(endpoint_url, **client_kwargs)
    try:
        client.create_bucket(Bucket=name)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":  # python tests/servers.py: run both until Ctrl-C / SIGTERM
    signal.signal(signal.SIGTERM, _raise_interrupt)
    with GcsServer() as gcs, S3Server() as s3:
        print(f"STORAGE_EMULATOR_HOST={gcs.endpoint_url}")
        print(f"AWS_ENDPOINT_URL={s3.endpoint_url}")
        sys.stdout.flush()
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
