"""Where local sinks may write: only under configured root directories.

The server often runs as root, so a ``sink.uri`` of ``file:///etc`` or
``/tmp/x/../../etc`` would let any admin-scoped client write anywhere. A
local sink is allowed only under ``<data dir>/lake/`` and the directories
listed in ``PIPELINE_DO_LOCAL_SINK_ROOTS`` (``os.pathsep``-separated
absolute paths). The check is made on the real path (``..`` and symlinks
resolved) at ``create`` and again before each epoch writes, in case a
symlink appeared since.

Local paths are taken literally, as Beam's LocalFileSystem takes them:
nothing here or downstream percent-decodes them, and ``%XX`` escapes are
refused so a path can never mean two things.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from beam_pipelines.errors import DefinitionError
from beam_pipelines.settings import LOCAL_SINK_ROOTS_ENV, data_plane_settings

__all__ = ["LOCAL_SINK_ROOTS_ENV", "allowed_local_roots", "check_local_catalog",
           "check_local_sink", "local_sink_path", "parse_local_roots"]

# Read once: epoch workers inherit the environment of ``serve``.
_ENV_ROOTS = data_plane_settings().local_sink_roots
_PERCENT_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")


def parse_local_roots(raw: str | None) -> tuple[str, ...]:
    """``PIPELINE_DO_LOCAL_SINK_ROOTS`` as a tuple of absolute paths; ValueError naming it."""
    roots = []
    for item in (raw or "").split(os.pathsep):
        item = item.strip()
        if not item:
            continue
        if not os.path.isabs(item) or "\0" in item:
            raise ValueError(f"{LOCAL_SINK_ROOTS_ENV} must list absolute directories separated "
                             f"by {os.pathsep!r}, got {item!r}")
        roots.append(os.path.normpath(item))
    return tuple(roots)


def allowed_local_roots(data_dir: str, extra: Sequence[str] | None = None) -> tuple[str, ...]:
    """``<data dir>/lake`` first, then ``extra`` (by default the environment's roots)."""
    lake = os.path.join(os.path.abspath(data_dir), "lake")
    more = parse_local_roots(_ENV_ROOTS) if extra is None else tuple(extra)
    return (lake, *(r for r in more if r != lake))


def local_sink_path(raw: str) -> str:
    """The plain, normalised absolute path of a local ``sink.uri`` (``file:///…`` or ``/…``).

    ``..``, ``.`` and repeated slashes are resolved lexically; symlinks are
    resolved only by :func:`check_local_sink`, which checks what will be written.
    """
    path = raw[len("file://"):] if raw.startswith("file://") else raw
    if not path.startswith("/"):
        if raw.startswith("file://"):
            raise DefinitionError("sink.uri", "a file:// uri needs an absolute path (file:///...)")
        raise DefinitionError("sink.uri", "sink.uri must be file:///absolute/path, "
                              "gs://bucket/prefix or s3://bucket/prefix")
    if "\0" in path:
        raise DefinitionError("sink.uri", "sink.uri must not contain a NUL character")
    if _PERCENT_ESCAPE.search(path):
        raise DefinitionError("sink.uri", "a local sink.uri is a plain path: write it without "
                              "percent-escapes such as '%2e'")
    return "/" + os.path.normpath(path).lstrip("/")


def check_local_catalog(catalog_uri: str | None, roots: Sequence[str]) -> None:
    """An Iceberg catalog in a SQLite file is a local write too: the file must lie under
    ``roots`` like a local sink (other databases are reached over the network)."""
    if not catalog_uri:
        return  # the default catalog: <data dir>/iceberg.sqlite
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    field = "sink.table.catalog_uri"
    try:
        url = make_url(catalog_uri)
    except ArgumentError:
        raise DefinitionError(field, "sink.table.catalog_uri must be a SQLAlchemy URL") from None
    if not url.drivername.startswith("sqlite"):
        return
    path = url.database or ""
    if not path.startswith("/") or "\0" in path:
        raise DefinitionError(field, "a SQLite catalog_uri needs an absolute file path "
                              "(sqlite:////absolute/path/catalog.sqlite)")
    check_local_sink(os.path.normpath(path), roots, field)


def check_local_sink(path: str, roots: Sequence[str], field: str = "sink.uri") -> None:
    """Refuse a local sink path whose real location is not inside one of ``roots``.

    The error names the field (``sink.uri``) and the roots as configured; it
    never shows where a symlink led.
    """
    real = os.path.realpath(path)
    for root in roots:
        real_root = os.path.realpath(root)
        if real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep):
            return
    raise DefinitionError(
        field, f"{field} {path!r} is outside the directories local sinks may write to: "
        "allowed are paths under " + ", ".join(roots)
        + f" (the data dir's lake/, and {LOCAL_SINK_ROOTS_ENV})", allowed=list(roots))
