"""Request bodies: the one reader every endpoint's body goes through.

The body is read from the server's input stream in bounded pieces and
decoded as it arrives (``Content-Encoding``: gzip, zstd or identity), with
the size limit (``PIPELINE_DO_MAX_BODY_BYTES``) applied to the raw bytes
and to the decoded bytes alike. Passing the limit is a 413 the moment it
happens, whether the size was announced (``Content-Length``) or not
(chunked), and a compressed body is never inflated much past the limit.

The app's request class reads its body here (:class:`BoundedRequest`), so
``request.get_data()``, ``request.get_json()`` and ``request.data`` cannot
bypass the limit. Werkzeug's own limit (``MAX_CONTENT_LENGTH`` on
``request.stream``) is not enough: for a body without ``Content-Length``
its ``get_data`` stops at exactly the limit and returns what it has, a
silent cut.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Iterator
from typing import IO, Any, Protocol

import zstandard
from flask import Flask, Request, Response, current_app, request
from werkzeug.wsgi import get_content_length, get_input_stream

from control_api.errors import payload_too_large, unsupported_media_type, validation_error

__all__ = ["ALLOWED_ENCODINGS", "BoundedRequest", "discard_unread_body", "init_app",
           "input_stream", "read_body"]

_log = logging.getLogger("pipeline_do.api")

ALLOWED_ENCODINGS = ("gzip", "zstd", "identity")
_ALIASES = {"x-gzip": "gzip"}
# Raw bytes asked of the input stream at a time.
_READ_BYTES = 64 * 1024
# How much of a refused body is read to keep the connection, in multiples of the limit.
_DISCARD_LIMITS = 4
# A zstd window larger than this is refused (it would be allocated per request).
_ZSTD_MAX_WINDOW = 1 << 24


class _Decompressor(Protocol):
    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: bytes) -> bytes: ...


# Each codec with the most compressed bytes fed to it in one call: the output
# of one call is bounded by that times the format's worst ratio (deflate
# ~1:1032, zstd one 128 KiB block per 4 bytes), about 1 MiB either way, so a
# bomb is stopped within about 1 MiB past the limit.
_CODECS: dict[str, tuple[Callable[[], _Decompressor], int]] = {
    "gzip": (lambda: zlib.decompressobj(zlib.MAX_WBITS | 16), 1024),
    "zstd": (lambda: zstandard.ZstdDecompressor(max_window_size=_ZSTD_MAX_WINDOW)
             .decompressobj(), 32),
}


def input_stream(environ: dict[str, Any]) -> IO[bytes]:
    """The body as the server hands it over, bounded by its framing.

    A server that frames the body itself (gunicorn: Content-Length and
    chunked) sets ``wsgi.input_terminated``; without it, werkzeug bounds the
    stream by Content-Length, and a body of unknown length reads as empty.
    """
    return get_input_stream(environ, safe_fallback=True, max_content_length=None)


def read_body(environ: dict[str, Any], stream: IO[bytes], limit: int) -> bytes:
    """The request's body read from ``stream`` to its end, decoded, or an ``ApiError``:
    413 past ``limit`` bytes (raw or decoded), 415 for an encoding not in
    ``ALLOWED_ENCODINGS``, 400 for a body that does not decode or arrive whole."""
    encoding = _encoding(environ.get("HTTP_CONTENT_ENCODING", ""))
    announced = get_content_length(environ)
    if announced is not None and announced > limit:
        raise payload_too_large(limit)
    raw = _raw_pieces(stream, limit)
    if encoding == "identity":
        return b"".join(raw)
    return _decode(raw, encoding, limit)


def _encoding(header: str) -> str:
    codings = [c.strip().lower() for c in header.split(",") if c.strip()]
    codings = [_ALIASES.get(c, c) for c in codings if c != "identity"]
    if not codings:
        return "identity"
    if len(codings) == 1 and codings[0] in _CODECS:
        return codings[0]
    allowed = ", ".join(ALLOWED_ENCODINGS)
    raise unsupported_media_type(
        f"unsupported Content-Encoding {header.strip()[:60]!r}: allowed one of {allowed}",
        "Content-Encoding", list(ALLOWED_ENCODINGS))


def _raw_pieces(stream: Any, limit: int) -> Iterator[bytes]:
    total = 0
    while True:
        try:
            piece = stream.read(min(_READ_BYTES, limit + 1 - total))
        except Exception as err:  # noqa: BLE001 - the server's own framing errors
            # (gunicorn's ParseException for bad chunk framing, OSError when the
            # client goes away) are the client's doing: a 400, not a 500.
            _log.info("request body could not be read: %r", err)
            raise validation_error("body", "the request body could not be read: bad chunked "
                                   "framing, or the connection closed early") from None
        if not piece:
            return
        total += len(piece)
        if total > limit:
            raise payload_too_large(limit)
        yield piece


def _decode(raw: Iterator[bytes], encoding: str, limit: int) -> bytes:
    new_decompressor, step = _CODECS[encoding]
    decompressor = new_decompressor()
    out: list[bytes] = []
    total = 0
    received = False
    try:
        for piece in raw:
            received = True
            view = memoryview(piece)
            for start in range(0, len(view), step):
                data = bytes(view[start:start + step])
                while data:
                    if decompressor.eof:  # concatenated gzip members / zstd frames
                        decompressor = new_decompressor()
                    chunk = decompressor.decompress(data)
                    data = decompressor.unused_data if decompressor.eof else b""
                    total += len(chunk)
                    if total > limit:
                        raise payload_too_large(limit, decoded=True)
                    out.append(chunk)
    except (zlib.error, zstandard.ZstdError) as err:
        raise validation_error("body", f"the {encoding} body does not decode: "
                               f"{str(err)[:120]}") from None
    if not received:
        return b""
    if not decompressor.eof:
        raise validation_error("body", f"the {encoding} body is truncated")
    return b"".join(out)


class BoundedRequest(Request):
    """Flask's request with its body read by :func:`read_body`, once."""

    _body_stream: IO[bytes] | None = None
    _body_ended = False

    def _input(self) -> IO[bytes]:
        if self._body_stream is None:
            self._body_stream = input_stream(self.environ)
        return self._body_stream

    def get_data(self, cache: bool = True, as_text: bool = False,  # type: ignore[override]
                 parse_form_data: bool = False) -> bytes | str:
        body: bytes | None = getattr(self, "_cached_data", None)
        if body is None:
            # Always kept: the stream can be read only once.
            body = self._cached_data = read_body(self.environ, self._input(),
                                                 current_app.config["MAX_CONTENT_LENGTH"])
            self._body_ended = True
        return body.decode(errors="replace") if as_text else body

    def discard_rest_of_body(self, budget: int) -> bool:
        """Read and drop what is left of the body, at most ``budget`` bytes;
        True when the body ended."""
        if self._body_ended:
            return True
        announced = get_content_length(self.environ)
        if announced is not None and announced > budget:
            return False
        stream = self._input()
        for _ in range(budget // _READ_BYTES + 2):
            try:
                if not stream.read(_READ_BYTES):
                    self._body_ended = True
                    return True
            except Exception:  # noqa: BLE001 - as in _raw_pieces: the client's doing
                return False
        return False


def discard_unread_body(response: Response, req: Request = request) -> Response:
    """A request answered before its body was read (401, 415, 413, ...) leaves the
    rest of the body on the connection. gunicorn drains only 64 KiB of it before
    reusing a keep-alive connection, and past that closes it without saying so
    (it drops an application's ``Connection: close``), so the client's next
    request on it fails. Reading the rest here, up to a few times the limit,
    keeps the connection usable for any body a client would plausibly send."""
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if isinstance(req, BoundedRequest) and not req.discard_rest_of_body(
            _DISCARD_LIMITS * limit):
        _log.info("left an unread body over %s bytes: the server will close the connection",
                  _DISCARD_LIMITS * limit)
    return response


def init_app(app: Flask) -> None:
    app.request_class = BoundedRequest
    app.after_request(discard_unread_body)
