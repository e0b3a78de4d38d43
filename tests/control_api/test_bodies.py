"""Request bodies on the real server: one size limit for Content-Length, chunked and
compressed bodies (413, never a silent cut), ``Content-Encoding`` gzip and zstd
decoded (the limit on the decoded size), anything else a 415, a corrupt stream a 400.

The server runs with a small ``PIPELINE_DO_MAX_BODY_BYTES`` so bodies around the
limit stay small. After every hostile request the server must still be healthy and
take a normal ingest.
"""

from __future__ import annotations

import gzip
import io
import json
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from control_api.bodies import input_stream, read_body
from control_api.errors import ApiError
from tests.conftest import ADMIN_KEY
from tests.control_api.conftest import read_rows
from tests.live import LiveServer

LIMIT = 64 * 1024
ALLOWED = ["gzip", "zstd", "identity"]
_HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="module")
def server(start_server: Callable[..., LiveServer]) -> LiveServer:
    return start_server({"PIPELINE_DO_MAX_BODY_BYTES": str(LIMIT)})


def _pipeline(server: LiveServer, name: str) -> str:
    server.ok("create", {"name": name, "schema": [
        {"name": "i", "type": "int64", "required": True}, {"name": "pad", "type": "string"}],
        "sink": {"format": "parquet", "roll": {"interval_seconds": 0.5}}})
    server.ok("start", {"name": name})
    return name


@pytest.fixture(scope="module")
def canary(server: LiveServer) -> str:
    """A pipeline that takes one normal event after each hostile request."""
    return _pipeline(server, "bodies_canary")


def ndjson_of_size(size: int, first: int = 0) -> tuple[bytes, list[int]]:
    """NDJSON of exactly ``size`` bytes: events ``{"i": n, "pad": "x..."}``, numbered from
    ``first``, the last one padded to fill the size."""
    lines: list[bytes] = []
    ids: list[int] = []
    used = 0
    while True:
        n = first + len(ids)
        line = json.dumps({"i": n, "pad": "x" * 200}).encode() + b"\n"
        bare = len(json.dumps({"i": n, "pad": ""}).encode()) + 1
        if used + len(line) + bare > size:  # the rest goes into one last, fitted line
            line = json.dumps({"i": n, "pad": "x" * (size - used - bare)}).encode() + b"\n"
            lines.append(line)
            ids.append(n)
            break
        lines.append(line)
        ids.append(n)
        used += len(line)
    body = b"".join(lines)
    assert len(body) == size
    return body, ids


def json_array_of_size(size: int) -> bytes:
    events = json.dumps([{"i": 1, "pad": ""}]).encode()
    pad = size - len(events)
    body = json.dumps([{"i": 1, "pad": "y" * pad}]).encode()
    assert len(body) == size
    return body


def chunked(body: bytes, piece: int = 7_000) -> Iterator[bytes]:
    """A generator body: requests sends it with Transfer-Encoding: chunked, no Content-Length."""
    for start in range(0, len(body), piece):
        yield body[start:start + piece]


def encode(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.compress(body)
    if encoding == "zstd":
        return zstandard.ZstdCompressor().compress(body)
    return body


def post_events(server: LiveServer, pipeline: str, body: Any, content_type: str,
                encoding: str | None = None) -> requests.Response:
    headers = {**_HEADERS, "Content-Type": content_type}
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    return requests.post(f"{server.url}/pipelines/{pipeline}/events", data=body,
                         headers=headers, timeout=120)


def post_json(server: LiveServer, path: str, body: Any,
              encoding: str | None = None) -> requests.Response:
    headers = {**_HEADERS, "Content-Type": "application/json"}
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    return requests.post(server.url + path, data=body, headers=headers, timeout=120)


def error(response: requests.Response, status: int, code: str) -> dict[str, Any]:
    body = response.json()
    assert response.status_code == status and body["success"] is False, (response.status_code,
                                                                          body)
    assert body["error"]["code"] == code
    return dict(body["error"])


def assert_still_serving(server: LiveServer, canary: str) -> None:
    assert requests.get(server.url + "/healthz", timeout=30).status_code == 200
    response = post_events(server, canary, b'{"i": 1, "pad": "ok"}\n', "application/x-ndjson")
    assert response.status_code == 200 and response.json()["data"]["accepted"] == 1, response.text


def assert_too_large(response: requests.Response) -> None:
    err = error(response, 413, "PAYLOAD_TOO_LARGE")
    assert err["details"]["limit_bytes"] == LIMIT
    assert str(LIMIT) in err["message"]


# -- the limit, whatever the framing ------------------------------------------------


def _ingest_operation(size: int) -> bytes:
    """A /pipeline ingest body of exactly ``size`` bytes."""
    head = json.dumps({"operation": "ingest", "parameters": {
        "name": "bodies_canary", "events": [{"i": 2, "pad": ""}]}}).encode()
    body = json.dumps({"operation": "ingest", "parameters": {
        "name": "bodies_canary", "events": [{"i": 2, "pad": "z" * (size - len(head))}]}}).encode()
    assert len(body) == size
    return body


def _webhook(size: int) -> bytes:
    head = json.dumps({"url": "http://example.com/", "events": ["pipeline.created"]}).encode()
    body = json.dumps({"url": "http://example.com/" + "a" * (size - len(head)),
                       "events": ["pipeline.created"]}).encode()
    assert len(body) == size
    return body


ENDPOINTS: dict[str, tuple[Callable[[int], bytes], str, str]] = {
    "fast path ndjson": (lambda n: ndjson_of_size(n)[0], "/pipelines/bodies_canary/events",
                         "application/x-ndjson"),
    "fast path json array": (json_array_of_size, "/pipelines/bodies_canary/events",
                             "application/json"),
    "/pipeline": (_ingest_operation, "/pipeline", "application/json"),
    "/webhooks": (_webhook, "/webhooks", "application/json"),
}


@pytest.mark.parametrize("endpoint", sorted(ENDPOINTS))
@pytest.mark.parametrize("over", [1, 7_001, 10 * LIMIT])
@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_a_body_over_the_limit_is_413_on_every_endpoint(
        server: LiveServer, canary: str, endpoint: str, over: int, framing: str) -> None:
    make, path, content_type = ENDPOINTS[endpoint]
    body = make(LIMIT + over)
    response = requests.post(server.url + path, data=chunked(body) if framing == "chunked"
                             else body, timeout=120,
                             headers={**_HEADERS, "Content-Type": content_type})
    assert_too_large(response)
    assert_still_serving(server, canary)


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_a_body_at_the_limit_is_read_whole_on_every_endpoint(
        server: LiveServer, canary: str, framing: str) -> None:
    for endpoint in ("fast path ndjson", "fast path json array", "/pipeline"):
        make, path, content_type = ENDPOINTS[endpoint]
        for size in (LIMIT - 1, LIMIT):
            body = make(size)
            response = requests.post(server.url + path, timeout=120,
                                     data=chunked(body) if framing == "chunked" else body,
                                     headers={**_HEADERS, "Content-Type": content_type})
            assert response.status_code == 200, (endpoint, size, response.text)
            expected = len(ndjson_of_size(size)[1]) if endpoint == "fast path ndjson" else 1
            assert response.json()["data"]["accepted"] == expected
    # /webhooks reads the whole body too: the URL's 404 path does not matter, its host does
    response = requests.post(server.url + "/webhooks", data=chunked(_webhook(LIMIT)), timeout=120,
                             headers={**_HEADERS, "Content-Type": "application/json"})
    assert error(response, 400, "VALIDATION_ERROR")["details"]["field"] == "url"
    assert_still_serving(server, canary)


# -- compressed bodies: decoded, the limit on the decoded size ---------------------------


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
@pytest.mark.parametrize("encoding", ["gzip", "zstd", "identity", "x-gzip"])
def test_sizes_around_the_limit_decoded_and_read_back_after_stop(
        server: LiveServer, canary: str, encoding: str, framing: str) -> None:
    name = _pipeline(server, f"bodies_{encoding.replace('-', '_')}_{framing.replace('-', '_')}")
    sent: list[int] = []
    next_id = 0
    for size in (LIMIT - 1, LIMIT, LIMIT + 1, 3 * LIMIT):
        body, ids = ndjson_of_size(size, first=next_id)
        next_id += len(ids)
        raw = encode(body, "gzip" if encoding == "x-gzip" else encoding)
        response = post_events(server, name, chunked(raw) if framing == "chunked" else raw,
                               "application/x-ndjson", encoding)
        if size > LIMIT:
            assert_too_large(response)
            assert_still_serving(server, canary)
            continue
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        assert data["accepted"] == len(ids) and data["rejected"] == []
        sent += ids
    # a JSON array, compressed, on the fast path and through /pipeline
    array = json.dumps([{"i": next_id, "pad": "a"}, {"i": next_id + 1, "pad": "b"}]).encode()
    response = post_events(server, name, encode(array, "gzip" if encoding == "x-gzip"
                                                else encoding), "application/json", encoding)
    assert response.status_code == 200 and response.json()["data"]["accepted"] == 2
    operation = json.dumps({"operation": "ingest", "parameters": {
        "name": name, "events": [{"i": next_id + 2, "pad": "c"}]}}).encode()
    response = post_json(server, "/pipeline", encode(operation, "gzip" if encoding == "x-gzip"
                                                     else encoding), encoding)
    assert response.status_code == 200 and response.json()["data"]["accepted"] == 1
    sent += [next_id, next_id + 1, next_id + 2]

    stopped = server.ok("stop", {"name": name}, options={"timeout": 120_000})
    assert stopped["status"] == "stopped"
    rows = read_rows(f"{server.data_dir}/lake/{name}", "i")
    assert sorted(i for (i,) in rows) == sorted(sent)


def _bombs() -> list[tuple[str, bytes]]:
    rng = random.Random(6)
    bombs = []
    for _ in range(3):
        unit = rng.choice([b"\n", b" ", b"0", b'{"i":1}\n'])
        decoded = unit * (rng.randint(8, 50) * 2**20 // len(unit))
        bombs.append(("gzip", gzip.compress(decoded, compresslevel=9)))
        bombs.append(("zstd", zstandard.ZstdCompressor(level=3).compress(decoded)))
    # many members / frames, each small, together far over the limit
    member = gzip.compress(b"\n" * (LIMIT // 4))
    bombs.append(("gzip", member * 64))
    frame = zstandard.ZstdCompressor().compress(b"\n" * (LIMIT // 4))
    bombs.append(("zstd", frame * 64))
    return bombs


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_a_compression_bomb_is_413_without_inflating_it(server: LiveServer, canary: str,
                                                        framing: str) -> None:
    for encoding, raw in _bombs():
        assert len(raw) < LIMIT  # small on the wire: only the decoded size is over
        for path, content_type in (("/pipelines/bodies_canary/events", "application/x-ndjson"),
                                   ("/pipeline", "application/json")):
            response = requests.post(server.url + path, timeout=120,
                                     data=chunked(raw) if framing == "chunked" else raw,
                                     headers={**_HEADERS, "Content-Type": content_type,
                                              "Content-Encoding": encoding})
            assert_too_large(response)
            assert "decoded" in response.json()["error"]["message"]
            assert_still_serving(server, canary)


def _unknown_encodings() -> list[str]:
    rng = random.Random(415)
    names = ["br", "deflate", "compress", "x-compress", "gzip, br", "zstd, gzip", "gzipx",
             "bzip2", "*"]
    for _ in range(6):
        names.append("".join(rng.choice("abcdefghijklmnopqrstuvwxyz-_0123456789")
                             for _ in range(rng.randint(1, 30))))
    return names


@pytest.mark.parametrize("encoding", _unknown_encodings())
def test_an_unknown_encoding_is_415_naming_the_allowed_ones(server: LiveServer, canary: str,
                                                            encoding: str) -> None:
    for path, body, content_type in (
            ("/pipelines/bodies_canary/events", b'{"i": 1}\n', "application/x-ndjson"),
            ("/pipeline", b'{"operation": "list"}', "application/json")):
        response = requests.post(server.url + path, data=body, timeout=60,
                                 headers={**_HEADERS, "Content-Type": content_type,
                                          "Content-Encoding": encoding})
        err = error(response, 415, "UNSUPPORTED_MEDIA_TYPE")
        assert err["details"]["allowed"] == ALLOWED
        assert all(name in err["message"] for name in ALLOWED)
    assert_still_serving(server, canary)


def _corrupt_bodies() -> list[tuple[str, bytes]]:
    rng = random.Random(400)
    plain = b"".join(json.dumps({"i": i, "pad": "q" * rng.randint(0, 40)}).encode() + b"\n"
                     for i in range(500))
    good_gzip = gzip.compress(plain)
    good_zstd = zstandard.ZstdCompressor(write_checksum=True).compress(plain)
    cases: list[tuple[str, bytes]] = []
    for _ in range(6):
        # a flipped byte in the deflate data or the CRC/size trailer (not the
        # header's mtime/OS bytes, nor the last data byte's padding bits)
        at = rng.choice([rng.randrange(10, len(good_gzip) - 9),
                         rng.randrange(len(good_gzip) - 8, len(good_gzip))])
        flipped = bytearray(good_gzip)
        flipped[at] ^= 1 << rng.randrange(8)
        cases.append(("gzip", bytes(flipped)))
        cases.append(("gzip", good_gzip[:rng.randrange(1, len(good_gzip) - 1)]))
        cases.append(("zstd", good_zstd[:rng.randrange(1, len(good_zstd) - 1)]))
        garbage = bytes(rng.randrange(256) for _ in range(rng.randint(1, 300)))
        cases.append(("gzip", garbage))
        cases.append(("zstd", b"\x00" + garbage))  # never a zstd magic number
        cases.append(("gzip", good_gzip + garbage))  # trailing junk after a whole member
    return cases


def test_a_corrupt_compressed_body_is_400_naming_the_body(server: LiveServer,
                                                          canary: str) -> None:
    for encoding, raw in _corrupt_bodies():
        response = post_events(server, "bodies_canary", raw, "application/x-ndjson", encoding)
        err = error(response, 400, "VALIDATION_ERROR")
        assert err["details"]["field"] == "body", err
        assert encoding in err["message"]
        assert_still_serving(server, canary)


def test_a_keep_alive_connection_stays_usable_after_a_refused_body(server: LiveServer,
                                                                   canary: str) -> None:
    """A request answered before its body was read (413, 415, 401) must not leave the
    rest of the body on the connection for the next request to trip over."""
    ndjson = {**_HEADERS, "Content-Type": "application/x-ndjson"}
    refused: list[tuple[dict[str, str], Callable[[], Any], int]] = [
        (ndjson, lambda: chunked(ndjson_of_size(3 * LIMIT)[0]), 413),
        (ndjson, lambda: ndjson_of_size(3 * LIMIT)[0], 413),
        ({**ndjson, "Content-Encoding": "gzip"},
         lambda: chunked(gzip.compress(b"\n" * (40 * LIMIT)), 100), 413),
        ({**ndjson, "Content-Encoding": "br"}, lambda: chunked(b"x" * (2 * LIMIT)), 415),
        ({**ndjson, "Authorization": "Bearer pdo_not_a_key"},
         lambda: chunked(ndjson_of_size(2 * LIMIT)[0]), 401),
    ]
    with requests.Session() as session:
        for headers, body, status in refused:
            response = session.post(f"{server.url}/pipelines/{canary}/events", data=body(),
                                    headers=headers, timeout=60)
            assert response.status_code == status, response.text
            again = session.post(f"{server.url}/pipelines/{canary}/events", timeout=60,
                                 data=b'{"i": 3, "pad": "again"}\n', headers=ndjson)
            assert again.status_code == 200 and again.json()["data"]["accepted"] == 1


# -- the reader itself, on any bytes ------------------------------------------------


def _compress_members(parts: list[bytes], encoding: str) -> bytes:
    """Each part its own gzip member / zstd frame, concatenated (both formats allow it)."""
    if encoding == "identity":
        return b"".join(parts)
    return b"".join(encode(part, encoding) for part in parts)


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(st.binary(max_size=700), min_size=1, max_size=4),
       encoding=st.sampled_from(["identity", "gzip", "zstd"]),
       limit=st.integers(min_value=0, max_value=2_000), announced=st.booleans())
def test_read_body_returns_the_decoded_body_or_413(parts: list[bytes], encoding: str,
                                                   limit: int, announced: bool) -> None:
    raw = _compress_members(parts, encoding)
    environ: dict[str, Any] = {"wsgi.input": io.BytesIO(raw), "HTTP_CONTENT_ENCODING": encoding}
    if announced:
        environ["CONTENT_LENGTH"] = str(len(raw))
    else:
        environ["wsgi.input_terminated"] = True  # the server ends the stream (chunked)
    decoded = b"".join(parts)
    try:
        body = read_body(environ, input_stream(environ), limit)
    except ApiError as err:
        assert err.status == 413 and err.details["limit_bytes"] == limit
        assert len(decoded) > limit or len(raw) > limit
    else:
        assert body == (decoded if raw else b"")
        assert len(body) <= limit and len(raw) <= limit
