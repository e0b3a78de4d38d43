"""beam_pipelines.storage against real local GCS and S3 API servers.

The servers are subprocesses (gcp-storage-emulator, moto_server) on loopback;
everything goes through the real clients: Beam's gs:// and s3:// filesystems,
google-cloud-storage and boto3. Beam runs on the FnApiRunner, constructed
explicitly (never DirectRunner, which may try Prism).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beam_pipelines.errors import StorageError
from beam_pipelines.storage import errors, files, process, settings

try:
    import servers  # tests/ is on sys.path (conftest)
except ImportError:
    from tests import servers

ROOT = Path(__file__).resolve().parents[3]
BUCKET = "pdo-test"
FAST_DEADLINE = 2.0  # seconds of retries allowed against a dead server
ORIGINAL_EMULATOR_HOST = os.environ.get("STORAGE_EMULATOR_HOST")  # before any apply_sink_environment
ORIGINAL_ENV = dict(os.environ)


# -- servers and stores ------------------------------------------------------

@pytest.fixture(scope="session")
def gcs_server():
    with servers.GcsServer() as server:
        servers.create_gcs_bucket(server.endpoint_url, BUCKET)
        yield server


@pytest.fixture(scope="session")
def s3_server():
    with servers.S3Server() as server:
        servers.create_s3_bucket(server.endpoint_url, BUCKET)
        yield server


@pytest.fixture(scope="module", autouse=True)
def _restore_process_state():
    """apply_sink_environment changes env, Beam's credential cache and retry clock: undo after."""
    yield
    process.reset_process_state()


@dataclass
class Store:
    scheme: str
    options: dict[str, str]
    read: Callable[[str], bytes]          # key -> bytes, through the native client
    keys: Callable[[str], list[str]]      # prefix -> keys, through the native client

    def uri(self, key: str) -> str:
        return f"{self.scheme}://{BUCKET}/{key}"


def _gcs_store(server: servers.GcsServer) -> Store:
    client = servers.gcs_client(server.endpoint_url)
    bucket = client.bucket(BUCKET)
    return Store("gs", server.sink_options(),
                 read=lambda key: bucket.blob(key).download_as_bytes(),
                 keys=lambda prefix: sorted(b.name for b in client.list_blobs(BUCKET,
                                                                             prefix=prefix)))


def _s3_store(server: servers.S3Server) -> Store:
    client = servers.s3_client(server.endpoint_url)

    def keys(prefix: str) -> list[str]:
        resp = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        return sorted(o["Key"] for o in resp.get("Contents", []))

    return Store("s3", server.sink_options(),
                 read=lambda key: client.get_object(Bucket=BUCKET, Key=key)["Body"].read(),
                 keys=keys)


@pytest.fixture(params=["gs", "s3"])
def store(request, gcs_server, s3_server) -> Store:
    return _gcs_store(gcs_server) if request.param == "gs" else _s3_store(s3_server)


@pytest.fixture
def fast_failures():
    process.configure_retries(FAST_DEADLINE)
    yield FAST_DEADLINE
    process.configure_retries(process.DEFAULT_RETRY_DEADLINE)


def _dead_endpoint(server_cls: type) -> str:
    """The endpoint of a server that was started, got a bucket, then stopped."""
    server = server_cls().start()
    if server_cls is servers.GcsServer:
        servers.create_gcs_bucket(server.endpoint_url, BUCKET)
    else:
        servers.create_s3_bucket(server.endpoint_url, BUCKET)
    server.stop()
    return server.endpoint_url


# -- a bounded Beam pipeline writing Parquet with fileio.WriteToFiles --------

def _parquet_sink():
    from apache_beam.io import fileio

    class ParquetSink(fileio.FileSink):
        """One Parquet file per writer; elements are pyarrow Tables."""

        def open(self, fh):
            self._fh = fh
            self._writer = None

        def write(self, table):
            if self._writer is None:
                self._writer = pq.ParquetWriter(self._fh, table.schema, compression="zstd")
            self._writer.write_table(table)

        def flush(self):
            if self._writer is not None:
                self._writer.close()
                self._writer = None

    return ParquetSink()


def _naming(epoch: int):
    def name(window, pane, shard_index, total_shards, compression, destination):
        return f"part-{epoch:010d}-{shard_index:05d}.parquet"
    return name


def write_parquet(uri: str, options: dict[str, str], tables: list[pa.Table],
                  epoch: int = 1) -> float:
    """Run one bounded pipeline writing ``tables`` under ``uri``; return seconds."""
    import apache_beam as beam
    from apache_beam.io import fileio
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    start = time.perf_counter()
    popts = process.beam_options_for_sink(uri, options)
    with beam.Pipeline(runner=FnApiRunner(), options=popts) as p:
        _ = (p
             | beam.Create(tables, reshuffle=False)
             | fileio.WriteToFiles(settings.beam_path(uri), sink=lambda dest: _parquet_sink(),
                                   file_naming=_naming(epoch)))
    return time.perf_counter() - start


def _table(start: int, n: int) -> pa.Table:
    return pa.table({"id": pa.array(range(start, start + n), pa.int64()),
                     "name": [f"event-{i}" for i in range(start, start + n)],
                     "value": pa.array([i * 0.5 for i in range(start, start + n)])})


# -- URIs and options --------------------------------------------------------

@pytest.mark.parametrize("uri", ["ftp://x/y", "hdfs://nn/p", "/tmp/no-scheme", "azfs://a/b"])
def test_unknown_scheme_names_allowed_schemes(uri):
    for fn in (settings.sink_scheme, settings.pipeline_options_for_sink,
               files.check_sink_reachable, files.filesystem_for):
        with pytest.raises(ValueError) as info:
            fn(uri)
        assert "file, gs, s3" in str(info.value)


def test_s3_options_map_onto_beam_s3_options():
    opts = settings.pipeline_options_for_sink("s3://b/p", {
        "endpoint_url": "http://127.0.0.1:9000", "region": "eu-west-1",
        "access_key_id": "AK", "secret_access_key": "SK"}, env={})
    assert opts == {"s3_endpoint_url": "http://127.0.0.1:9000", "s3_disable_ssl": True,
                    "s3_region_name": "eu-west-1", "s3_access_key_id": "AK",
                    "s3_secret_access_key": "SK"}
    from apache_beam.options.pipeline_options import PipelineOptions, S3Options

    s3 = PipelineOptions(**opts).view_as(S3Options)
    assert (s3.s3_endpoint_url, s3.s3_access_key_id) == ("http://127.0.0.1:9000", "AK")


def test_s3_options_fall_back_to_aws_env():
    env = {"AWS_ENDPOINT_URL": "https://minio.local", "AWS_DEFAULT_REGION": "us-west-2",
           "AWS_ACCESS_KEY_ID": "EK", "AWS_SECRET_ACCESS_KEY": "ES", "AWS_SESSION_TOKEN": "T"}
    assert settings.pipeline_options_for_sink("s3://b", {}, env=env) == {
        "s3_endpoint_url": "https://minio.local", "s3_region_name": "us-west-2",
        "s3_access_key_id": "EK", "s3_secret_access_key": "ES", "s3_session_token": "T"}
    # sink keys win, and the env session token does not go with them
    got = settings.pipeline_options_for_sink(
        "s3://b", {"access_key_id": "AK", "secret_access_key": "SK",
                   "endpoint_url": "http://h:1"}, env=env)
    assert got["s3_access_key_id"] == "AK" and "s3_session_token" not in got
    assert got["s3_endpoint_url"] == "http://h:1"
    with pytest.raises(ValueError, match="both"):
        settings.pipeline_options_for_sink("s3://b", {"access_key_id": "AK"}, env={})


def test_gs_and_file_options():
    assert settings.pipeline_options_for_sink("gs://b/p", {"project": "p1"}, env={}) == \
        {"project": "p1"}
    assert settings.pipeline_options_for_sink(
        "gs://b/p", {}, env={"GOOGLE_CLOUD_PROJECT": "p2"}) == {"project": "p2"}
    assert settings.pipeline_options_for_sink("file:///tmp/x", {}) == {}
    s = settings.resolve_settings("gs://b/p", {}, env={"STORAGE_EMULATOR_HOST": "http://e:1",
                                                      "GOOGLE_APPLICATION_CREDENTIALS": "/c"})
    assert (s.endpoint_url, s.credentials_file) == ("http://e:1", "/c")
    with pytest.raises(ValueError, match="unknown storage options"):
        settings.pipeline_options_for_sink("gs://b", {"token": "x"})


def test_settings_repr_hides_secrets():
    s = settings.resolve_settings("s3://b/p", {"access_key_id": "AKIDSECRET",
                                              "secret_access_key": "VERYSECRET",
                                              "endpoint_url": "http://u:pw@h:1"}, env={})
    assert "SECRET" not in repr(s)
    assert s.public_endpoint == "http://h:1"


def test_import_is_cheap():
    code = ("import sys, beam_pipelines.storage.settings, beam_pipelines.storage.redaction, "
            "beam_pipelines.storage.process, beam_pipelines.storage.errors, "
            "beam_pipelines.storage.files; "
            "bad = [m for m in ('apache_beam', 'boto3', 'botocore', 'flask', "
            "'google.cloud.storage') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- writing Parquet through Beam -------------------------------------------

def test_write_parquet_with_beam_and_read_back(store):
    """How long it takes: ``benchmarks/bench_storage.py`` (small_epoch)."""
    prefix = f"write-{store.scheme}/events"
    uri = store.uri(prefix)
    tables = [_table(0, 1000), _table(1000, 500)]
    write_parquet(uri, store.options, tables, epoch=7)
    write_parquet(uri, store.options, tables, epoch=7)  # same epoch: same names

    keys = store.keys(prefix)
    assert keys == [f"{prefix}/part-0000000007-00000.parquet"]
    got = pq.read_table(io.BytesIO(store.read(keys[0])))
    want = pa.concat_tables(tables)
    assert got.num_rows == 1500
    assert got.sort_by("id").equals(want.sort_by("id"))


def test_filesystem_helpers_match_and_delete(store):
    prefix = f"fs-{store.scheme}"
    fs = files.filesystem_for(store.uri(prefix), store.options)
    for name in ("a.txt", "sub/b.txt", "sub/c.txt"):
        with fs.create(store.uri(f"{prefix}/{name}")) as f:
            f.write(name.encode())
    assert store.keys(prefix) == [f"{prefix}/a.txt", f"{prefix}/sub/b.txt",
                                  f"{prefix}/sub/c.txt"]

    listed = files.list_files(store.uri(prefix), store.options)
    assert listed == [(store.uri(f"{prefix}/a.txt"), 5), (store.uri(f"{prefix}/sub/b.txt"), 9),
                      (store.uri(f"{prefix}/sub/c.txt"), 9)]
    match = fs.match([store.uri(f"{prefix}/sub/*")])[0]
    assert sorted(m.path for m in match.metadata_list) == [store.uri(f"{prefix}/sub/b.txt"),
                                                           store.uri(f"{prefix}/sub/c.txt")]
    with process.sink_filesystems(store.uri(prefix), store.options) as FileSystems:
        assert FileSystems.exists(store.uri(f"{prefix}/a.txt"))
        with FileSystems.open(store.uri(f"{prefix}/a.txt")) as f:
            assert f.read() == b"a.txt"

    files.delete_files([store.uri(f"{prefix}/a.txt"), store.uri(f"{prefix}/sub/b.txt"),
                          store.uri(f"{prefix}/missing.txt")], store.options)
    assert store.keys(prefix) == [f"{prefix}/sub/c.txt"]
    files.delete_files([store.uri(f"{prefix}/sub/c.txt")], store.options)
    assert files.list_files(store.uri(prefix), store.options) == []
    assert files.list_files(store.uri("never-written"), store.options) == []


def test_file_scheme_helpers(tmp_path):
    uri = f"file://{tmp_path}/out"
    write_parquet(uri, {}, [_table(0, 10)], epoch=1)
    listed = files.list_files(uri)
    assert [p for p, _ in listed] == [f"{uri}/part-0000000001-00000.parquet"]
    assert pq.read_table(f"{tmp_path}/out/part-0000000001-00000.parquet").num_rows == 10
    files.delete_files([p for p, _ in listed])
    assert files.list_files(uri) == []
    files.check_sink_reachable(f"file://{tmp_path}/not/yet/made")
    assert settings.beam_path(uri) == f"{tmp_path}/out"
    assert settings.beam_path("gs://b/p") == "gs://b/p"


def test_file_scheme_unwritable(tmp_path):
    target = tmp_path / "ro"
    target.mkdir()
    target.chmod(0o500)
    try:
        if os.access(target, os.W_OK):
            pytest.skip("running as a user that can write anywhere")
        with pytest.raises(StorageError) as info:
            files.check_sink_reachable(f"file://{target}/x")
        assert "not writable" in str(info.value) and info.value.transient is False
    finally:
        target.chmod(0o700)


def test_gcs_endpoint_env_is_set_and_restored(gcs_server):
    before = ORIGINAL_EMULATOR_HOST
    process.apply_sink_environment(f"gs://{BUCKET}/x", gcs_server.sink_options())
    assert os.environ["STORAGE_EMULATOR_HOST"] == gcs_server.endpoint_url
    # a sink without endpoint falls back to the process's own setting, not ours
    assert settings.resolve_settings(f"gs://{BUCKET}/x", env=process.sink_environment()) \
        .endpoint_url == (before or None)
    process.apply_sink_environment(f"gs://{BUCKET}/x", {})
    assert os.environ.get("STORAGE_EMULATOR_HOST") == before
    process.apply_sink_environment(f"gs://{BUCKET}/x", gcs_server.sink_options())
    process.reset_process_state()
    assert os.environ.get("STORAGE_EMULATOR_HOST") == before
    assert "sleep" not in vars(process.beam_retry_clock())
    assert os.environ.get("AWS_MAX_ATTEMPTS") != "2" or "AWS_MAX_ATTEMPTS" in ORIGINAL_ENV


def test_gcs_no_credential_backoff_in_fresh_process(gcs_server, tmp_path):
    """Without any Google credentials Beam alone looks them up (google.auth.default) and
    backs off ~25 s; apply_sink_environment seeds its cache so no lookup happens. The time it
    takes: ``benchmarks/bench_storage.py`` (fresh_gcs_io)."""
    script = textwrap.dedent(f"""
        import json
        import google.auth
        lookups = []
        real_default = google.auth.default
        def default(*args, **kwargs):
            lookups.append(1)
            return real_default(*args, **kwargs)
        google.auth.default = default
        from beam_pipelines.storage import files
        uri = "gs://{BUCKET}/fresh/x.txt"
        fs = files.filesystem_for(uri, {{"endpoint_url": "{gcs_server.endpoint_url}"}})
        with fs.create(uri) as f:
            f.write(b"hi")
        ok = fs.exists(uri)
        fs.delete([uri])
        print(json.dumps({{"lookups": len(lookups), "ok": ok}}))
    """)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GOOGLE_", "GCLOUD", "CLOUDSDK", "STORAGE_EMULATOR"))}
    env.update(HOME=str(tmp_path), CLOUDSDK_CONFIG=str(tmp_path / "gcloud"))
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["ok"]
    assert result["lookups"] == 0, "Beam looked for Google credentials (and backs off)"


# -- reachability probe ------------------------------------------------------

def test_check_sink_reachable_ok(store):
    files.check_sink_reachable(store.uri("any/prefix"), store.options)  # does not raise


def test_check_sink_missing_bucket_is_terminal(store):
    uri = f"{store.scheme}://no-such-bucket-xyz/p"
    with pytest.raises(StorageError) as info:
        files.check_sink_reachable(uri, store.options)
    err = info.value
    assert err.transient is False and err.details["reason"] == "bucket_not_found"
    assert "no-such-bucket-xyz" in str(err) and "does not exist" in str(err)
    assert not errors.is_transient_storage_error(err)


@pytest.mark.parametrize("server_cls", [servers.GcsServer, servers.S3Server],
                         ids=["gs", "s3"])
def test_check_sink_unreachable_is_transient(server_cls):
    """How long it takes: ``benchmarks/bench_storage.py`` (probe_dead)."""
    endpoint = _dead_endpoint(server_cls)
    scheme = "gs" if server_cls is servers.GcsServer else "s3"
    options = {"endpoint_url": endpoint}
    if scheme == "s3":
        options.update(access_key_id="AKIDLEAKCHECK", secret_access_key="SECRETLEAKCHECK",
                       region="us-east-1")
    with pytest.raises(StorageError) as info:
        files.check_sink_reachable(f"{scheme}://{BUCKET}/p", options, timeout=2)
    err = info.value
    assert err.transient is True and err.details["reason"] == "unreachable"
    assert endpoint in str(err)
    assert "LEAKCHECK" not in str(err) and "LEAKCHECK" not in repr(err.details)


def test_check_s3_access_denied_is_terminal():
    with servers.S3Server(env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"}) as server:
        opts = {**server.sink_options(), "secret_access_key": "SECRETLEAKCHECK"}
        with pytest.raises(StorageError) as info:
            files.check_sink_reachable(f"s3://{BUCKET}/p", opts)
    err = info.value
    assert err.transient is False and err.details["reason"] == "access_denied"
    assert "LEAKCHECK" not in str(err)


def test_check_gcs_bad_credentials_file_is_terminal(tmp_path):
    missing = tmp_path / "nope.json"
    garbage = tmp_path / "creds.json"
    garbage.write_text('{"type": "service_account", "private_key": "SECRETLEAKCHECK"}')
    for path, why in ((missing, "No such file"), (garbage, "")):
        with pytest.raises(StorageError) as info:
            files.check_sink_reachable("gs://b/p", {"credentials_file": str(path)})
        err = info.value
        assert err.transient is False and err.details["reason"] == "bad_credentials"
        assert "credentials_file" in str(err) and why in str(err)
        assert "LEAKCHECK" not in str(err) and str(tmp_path) not in str(err)


# -- failing fast when the store is down -------------------------------------

@pytest.mark.parametrize("server_cls", [servers.GcsServer, servers.S3Server],
                         ids=["gs", "s3"])
def test_write_to_dead_server_fails_transient(server_cls, fast_failures):
    """How long it takes: ``benchmarks/bench_storage.py`` (write_dead)."""
    endpoint = _dead_endpoint(server_cls)
    if server_cls is servers.GcsServer:
        uri, options = f"gs://{BUCKET}/dead", {"endpoint_url": endpoint}
    else:
        uri = f"s3://{BUCKET}/dead"
        options = {"endpoint_url": endpoint, "region": "us-east-1",
                   "access_key_id": "k", "secret_access_key": "s"}
    with pytest.raises(Exception) as info:
        write_parquet(uri, options, [_table(0, 10)])
    assert errors.is_transient_storage_error(info.value), repr(info.value)


@pytest.mark.parametrize("server_cls", [servers.GcsServer, servers.S3Server],
                         ids=["gs", "s3"])
def test_filesystem_calls_on_dead_server_fail_transient(server_cls, fast_failures):
    """How long they take: ``benchmarks/bench_storage.py`` (fs_dead_*)."""
    endpoint = _dead_endpoint(server_cls)
    scheme = "gs" if server_cls is servers.GcsServer else "s3"
    options = {"endpoint_url": endpoint}
    if scheme == "s3":
        options.update(access_key_id="k", secret_access_key="s", region="us-east-1")
    base = f"{scheme}://{BUCKET}/p"
    fs = files.filesystem_for(base, options)
    calls = {"match": lambda: fs.match([base + "/**"]),
             "exists": lambda: fs.exists(base + "/x"),
             "delete": lambda: fs.delete([base + "/x"]),
             "rename": lambda: fs.rename([base + "/x"], [base + "/y"]),
             "list_files": lambda: files.list_files(base, options)}
    for name, call in calls.items():
        with pytest.raises(Exception) as info:
            call()
        assert errors.is_transient_storage_error(info.value), (name, repr(info.value))


# -- error classification ----------------------------------------------------

def _client_error(status: int, code: str):
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": code},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


def _chained(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except BaseException as exc:
        return exc


def test_error_classification():
    import requests
    from apache_beam.io.aws.clients.s3.messages import S3ClientError
    from apache_beam.io.filesystem import BeamIOError
    from botocore.exceptions import EndpointConnectionError, NoCredentialsError
    from google.api_core import exceptions as gexc

    from beam_pipelines.errors import DefinitionError

    transient = [
        ConnectionRefusedError(111, "Connection refused"),
        TimeoutError("timed out"),
        requests.exceptions.ConnectionError("boom"),
        gexc.ServiceUnavailable("down"), gexc.TooManyRequests("slow"),
        gexc.InternalServerError("oops"), gexc.RetryError("Timeout of 2.0s exceeded", None),
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
        _client_error(503, "SlowDown"), _client_error(500, "InternalError"),
        S3ClientError("Could not connect", None), S3ClientError("busy", 503),
        BeamIOError("Match operation failed", {"s3://b/p": S3ClientError("x", None)}),
        _chained(RuntimeError("wrapped"), ConnectionResetError(104, "reset")),
        RuntimeError("urllib3 ... Failed to establish a new connection: [Errno 111] "
                     "Connection refused [while running 'WriteToFiles/...']"),
        AttributeError("'NoneType' object has no attribute 'status_code'"),
        StorageError("buffer busy"),
    ]
    terminal = [
        gexc.NotFound("no bucket"), gexc.Forbidden("nope"), gexc.Unauthorized("who"),
        _client_error(404, "NoSuchBucket"), _client_error(403, "AccessDenied"),
        _client_error(403, "InvalidAccessKeyId"),
        S3ClientError("Not Found", 404), S3ClientError("Forbidden", 403),
        NoCredentialsError(), PermissionError(13, "Permission denied"),
        FileNotFoundError(2, "No such file"),
        BeamIOError("Delete operation failed", {"gs://b/x": gexc.Forbidden("nope")}),
        _chained(RuntimeError("wrapped"), gexc.NotFound("no bucket")),
        RuntimeError("botocore.exceptions.ClientError: An error occurred (NoSuchBucket)"),
        ValueError("bad"), KeyError("x"), DefinitionError("sink", "bad"),
    ]
    for exc in transient:
        assert errors.is_transient_storage_error(exc), repr(exc)
    for exc in terminal:
        assert not errors.is_transient_storage_error(exc), repr(exc)
