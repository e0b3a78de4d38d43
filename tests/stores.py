"""Helpers for tests that deliver to object storage through the real server.

A local GCS server and a local S3 server (see :mod:`tests.servers`), each
with a bucket; reading what a sink wrote back through the native clients
(google-cloud-storage, boto3); a webhook receiver; polling.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests import servers
from tests.live import wait_for

__all__ = ["BUCKET", "NO_STORAGE_ENV", "Receiver", "Store", "wait_for"]

BUCKET = "pdo-lake"

# The live server must not find an endpoint or keys in the environment the
# tests run in: sinks that rely on options prove that options work.
NO_STORAGE_ENV = {name: "" for name in (
    "STORAGE_EMULATOR_HOST", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "GOOGLE_APPLICATION_CREDENTIALS")}


@dataclass
class Store:
    """One local object store with a bucket, seen through its native client."""

    scheme: str
    server: Any  # servers.GcsServer | servers.S3Server

    @property
    def options(self) -> dict[str, str]:
        return dict(self.server.sink_options())

    def uri(self, prefix: str) -> str:
        return f"{self.scheme}://{BUCKET}/{prefix}"

    def objects(self, prefix: str) -> dict[str, int]:
        """``{key relative to prefix: size}`` of every object under ``prefix/``."""
        base = prefix.rstrip("/") + "/"
        if self.scheme == "gs":
            client = servers.gcs_client(self.server.endpoint_url)
            return {b.name[len(base):]: int(b.size) for b in client.list_blobs(BUCKET, prefix=base)}
        client = servers.s3_client(self.server.endpoint_url)
        found: dict[str, int] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=base):
            found.update({o["Key"][len(base):]: int(o["Size"]) for o in page.get("Contents", [])})
        return found

    def download(self, prefix: str, target: str, suffix: str = "") -> dict[str, int]:
        """Copy every object under ``prefix/`` ending in ``suffix`` to ``target/<relative key>``."""
        wanted = {k: v for k, v in self.objects(prefix).items() if k.endswith(suffix)}
        base = prefix.rstrip("/") + "/"
        if self.scheme == "gs":
            bucket = servers.gcs_client(self.server.endpoint_url).bucket(BUCKET)

            def fetch(key: str, dest: str) -> None:
                bucket.blob(base + key).download_to_filename(dest)
        else:
            client = servers.s3_client(self.server.endpoint_url)

            def fetch(key: str, dest: str) -> None:
                client.download_file(BUCKET, base + key, dest)
        for key in wanted:
            dest = os.path.join(target, key)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            fetch(key, dest)
        return wanted


def start_store(scheme: str, server: Any = None) -> Store:
    server = server or (servers.GcsServer() if scheme == "gs" else servers.S3Server())
    server.start()
    if scheme == "gs":
        servers.create_gcs_bucket(server.endpoint_url, BUCKET)
    else:
        servers.create_s3_bucket(server.endpoint_url, BUCKET)
    return Store(scheme, server)


class Receiver:
    """Records every webhook POST on 127.0.0.1 (raw body and parsed event)."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, dict[str, Any]]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.received.append((body, json.loads(body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def events(self, event_type: str, pipeline_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [e["data"] for _body, e in self.received
                    if e["type"] == event_type and e["data"].get("id") == pipeline_id]

    def raw(self) -> bytes:
        with self.lock:
            return b"\n".join(body for body, _event in self.received)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@contextmanager
def running_store(scheme: str) -> Iterator[Store]:
    """A started store for a module's tests; stopped after, with Beam's process state reset
    (its filesystems keep the endpoint and credentials they were pointed at)."""
    from beam_pipelines.storage.process import reset_process_state

    store = start_store(scheme)
    try:
        yield store
    finally:
        store.server.stop()
        reset_process_state()
