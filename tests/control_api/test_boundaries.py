"""Boundaries on the real server: where local sinks may write, whose files a pipeline
may touch, and that sink secrets never reach the store in plain text.

Every case drives ``pipeline-do serve`` over HTTP and reads what it wrote back:
the server's replies, its SQLite file and log, and the Parquet files with DuckDB.
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.fernet import Fernet

from beam_pipelines.model.layout import part_file_name
from tests.conftest import ADMIN_KEY
from tests.live import LiveServer, query, wait_for

SCHEMA = [{"name": "n", "type": "int64", "required": True}]
SECRETS = {"access_key_id": "AKIALIVESEALED00001", "secret_access_key": "Live-Secret-Never-Stored"}


@pytest.fixture(scope="module")
def roots(tmp_path_factory: Any) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("boundaries")
    extra, outside = base / "extra", base / "outside"
    extra.mkdir()
    outside.mkdir()
    (extra / "out-link").symlink_to(outside)
    (extra / "etc-link").symlink_to("/etc")
    return {"extra": extra, "outside": outside}


@pytest.fixture(scope="module")
def server(start_server: Callable[..., LiveServer], roots: dict[str, Path]) -> LiveServer:
    return start_server({"PIPELINE_DO_LOCAL_SINK_ROOTS": str(roots["extra"])})


def _send(server: LiveServer, name: str, values: range) -> None:
    body = "".join(json.dumps({"n": n}) + "\n" for n in values).encode()
    reply = server.post_ndjson(name, body).json()
    assert reply["data"]["accepted"] == len(values), reply


def _escapes(roots: dict[str, Path], lake: str) -> Iterator[str]:
    """Paths that leave the roots, in every spelling: plain and file://, trailing
    slashes, ``..`` after real and made-up segments, symlinks out."""
    extra = str(roots["extra"])
    targets = ["/etc", "/", f"{extra}/../outside", f"{extra}/x/../../outside",
               f"{lake}/../../", f"{lake}/./../x", f"{extra}/out-link", f"{extra}/out-link/sub",
               f"{extra}/etc-link", f"{extra}//..//outside", f"{extra}/{'../' * 12}etc",
               "/tmp/x/../../etc"]
    for target, scheme, trailing in itertools.product(targets, ("", "file://"), ("", "/", "//")):
        yield scheme + target + trailing


def test_local_sinks_outside_the_roots_are_refused_and_nothing_is_written(
        server: LiveServer, roots: dict[str, Path]) -> None:
    lake = os.path.join(server.data_dir, "lake")
    refused = 0
    for i, uri in enumerate(_escapes(roots, lake)):
        response = server.call("create", {"name": f"esc{i}", "sink": {"uri": uri}})
        body = response.json()
        assert response.status_code == 400, (uri, body)
        assert body["error"]["code"] == "VALIDATION_ERROR"
        assert body["error"]["details"]["field"] == "sink.uri"
        if "allowed" in body["error"]["details"]:
            assert body["error"]["details"]["allowed"] == [lake, str(roots["extra"])]
        assert str(roots["outside"]) not in body["error"]["message"] or "outside" in uri
        refused += 1
    assert refused == 12 * 2 * 3
    for escape in ("%2e%2e", "%2E%2E/%2e%2e", "%252e%252e"):
        response = server.call("create", {"name": "pct", "sink": {
            "uri": f"file://{roots['extra']}/{escape}/etc"}})
        assert response.status_code == 400 and "percent" in response.json()["error"]["message"]
    assert server.ok("list")["pipelines"] == []
    assert list(roots["outside"].iterdir()) == []
    assert requests.get(server.url + "/healthz", timeout=10).status_code == 200


def test_a_configured_root_takes_a_sink_and_two_pipelines_share_it_safely(
        server: LiveServer, roots: dict[str, Path]) -> None:
    shared = roots["extra"] / "shared"
    ids = [server.ok("create", {"name": name, "schema": SCHEMA,
                                "sink": {"uri": f"file://{shared}/./x/../", "partition_by": "dt=%Y",
                                         "roll": {"interval_seconds": 0.2}}})["id"]
           for name in ("left", "right")]
    for name in ("left", "right"):
        server.ok("start", {"name": name})
    for round_ in range(3):
        _send(server, "left", range(100 * round_, 100 * round_ + 100))
        _send(server, "right", range(10_000 + 100 * round_, 10_000 + 100 * round_ + 100))
    for name in ("left", "right"):
        assert server.ok("stop", {"name": name}, options={"timeout": 120_000})["status"] == "stopped"
    files = glob.glob(f"{shared}/**/*.parquet", recursive=True)
    assert {os.path.basename(f).rsplit("-", 1)[1] for f in files} == \
        {f"{pipeline_id}.parquet" for pipeline_id in ids}
    assert query(f"SELECT count(*), count(DISTINCT n) FROM read_parquet('{shared}/**/*.parquet')"
                 ) == [(600, 600)]
    assert not (shared / "_tmp").exists()


def test_a_name_reused_after_delete_keeps_the_old_files_and_adds_its_own(
        server: LiveServer) -> None:
    lake = os.path.join(server.data_dir, "lake", "clicks")

    def run(values: range) -> str:
        pipeline_id = server.ok("create", {"name": "clicks", "schema": SCHEMA})["id"]
        server.ok("start", {"name": "clicks"})
        _send(server, "clicks", values)
        stopped = server.ok("stop", {"name": "clicks"}, options={"timeout": 120_000})
        assert [f["path"] for f in stopped["files"]] == \
            [os.path.join(lake, part_file_name(pipeline_id, 1, 0, "parquet"))]
        return str(pipeline_id)

    first = run(range(0, 50))
    before = {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in glob.glob(f"{lake}/*")}
    assert server.ok("delete", {"name": "clicks"}) == {"deleted": True}
    second = run(range(50, 120))
    assert {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in before} == before
    assert sorted(glob.glob(f"{lake}/*.parquet")) == sorted(
        os.path.join(lake, part_file_name(pid, 1, 0, "parquet")) for pid in (first, second))
    assert query(f"SELECT count(*), count(DISTINCT n) FROM read_parquet('{lake}/*.parquet')") == \
        [(120, 120)]


# -- secrets at rest ---------------------------------------------------------------------

def _store_bytes(data_dir: str) -> bytes:
    db = os.path.join(data_dir, "pipeline-do.sqlite")
    return b"".join(Path(p).read_bytes() for p in (db, db + "-wal") if os.path.exists(p))


def _log(server: LiveServer) -> str:
    return Path(server.data_dir, f"server-{server.port}.log").read_text(errors="replace")


def test_secrets_are_sealed_with_a_generated_private_key(server: LiveServer) -> None:
    created = server.ok("create", {"name": "sealed", "sink": {
        "uri": "s3://bucket/prefix", "options": {**SECRETS, "region": "eu-west-1"}}})
    key_file = Path(server.data_dir, "secret.key")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert "PIPELINE_DO_SECRET_KEY is not set: generated a key" in _log(server)
    raw = _store_bytes(server.data_dir)
    for value in SECRETS.values():
        assert value.encode() not in raw
        assert value not in json.dumps(created)
        assert value not in json.dumps(server.ok("get", {"name": "sealed"}))
    assert created["sink"]["options"] == {"region": "eu-west-1"}


def test_a_wrong_key_is_named_without_a_crash_loop_and_the_right_one_delivers(
        tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    first = LiveServer(str(data_dir), api_key=ADMIN_KEY, args=("--job-workers", "1")).start()
    try:
        first.ok("create", {"name": "keyed", "schema": SCHEMA,
                            "sink": {"options": SECRETS, "roll": {"interval_seconds": 0.2}}})
    finally:
        first.stop()

    wrong = LiveServer(str(data_dir), api_key=ADMIN_KEY, args=("--job-workers", "1"),
                       extra_env={"PIPELINE_DO_SECRET_KEY": Fernet.generate_key().decode(),
                                  "PIPELINE_DO_EPOCH_MAX_ATTEMPTS": "2"}).start()
    try:
        assert "does not open the stored sink secrets of keyed" in _log(wrong)
        wrong.ok("start", {"name": "keyed"})
        _send(wrong, "keyed", range(10))
        info = wait_for(lambda: (i := wrong.ok("get", {"name": "keyed"}))["errors"] and i,
                        timeout=60, message="the epoch's failure")
        assert "PIPELINE_DO_SECRET_KEY" in info["last_error"]
        assert all(v not in info["last_error"] for v in SECRETS.values())
        assert requests.get(wrong.url + "/healthz", timeout=10).status_code == 200
    finally:
        wrong.stop()

    right = LiveServer(str(data_dir), api_key=ADMIN_KEY, args=("--job-workers", "1")).start()
    try:
        if right.ok("get", {"name": "keyed"})["status"] == "failed":
            right.ok("resume", {"name": "keyed"})  # the epoch's attempts ran out meanwhile
        right.ok("stop", {"name": "keyed"}, options={"timeout": 120_000})
        lake = data_dir / "lake" / "keyed"
        assert query(f"SELECT count(*) FROM read_parquet('{lake}/*.parquet')") == [(10,)]
    finally:
        right.stop()


@pytest.mark.parametrize(("env", "message"), [
    ({"PIPELINE_DO_SECRET_KEY": "not-a-fernet-key-1234"}, "PIPELINE_DO_SECRET_KEY is not a Fernet key"),
    ({"PIPELINE_DO_LOCAL_SINK_ROOTS": "relative/lake"}, "PIPELINE_DO_LOCAL_SINK_ROOTS must list "
                                                        "absolute directories"),
])
def test_a_malformed_setting_stops_serve_at_once_naming_the_variable(
        env: dict[str, str], message: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "control_api.cli", "serve", "--port", "1", "--data-dir",
         str(tmp_path)], env={**os.environ, **env, "PIPELINE_DO_API_KEY": ADMIN_KEY},
        capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert message in result.stderr
    if "PIPELINE_DO_SECRET_KEY" in env:
        assert env["PIPELINE_DO_SECRET_KEY"] not in result.stderr + result.stdout
