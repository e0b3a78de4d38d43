"""Sink secrets at rest: sealed (Fernet) in the store, opened only where an epoch writes.

The stored definition keeps its shape; only the secret texts in it are
replaced by ``enc.v1.<Fernet token>``:

* ``sink.options`` ``access_key_id``, ``secret_access_key``, ``credentials_file``
  (the whole value);
* the password of a URL in ``sink.options.endpoint_url`` and
  ``sink.table.catalog_uri`` (``postgresql://u:enc.v1.…@h/db``: the rest of the
  URL stays readable, and replies mask the password as before).

``PipelineService`` seals on every write of a definition; ``run_epoch``
opens the sink it is about to write to; nothing else needs the plain text,
and replies never carried it. A value without the prefix is a definition
stored before sealing existed: it still works, and ``serve`` seals such
rows when it starts (:func:`seal_stored_definitions`).

The key is ``PIPELINE_DO_SECRET_KEY``. When it is unset, one is generated
once into ``<data dir>/secret.key`` (mode 0600) and the log says so; a
production server should set the variable, so that the store (possibly a
remote database, and its backups) does not travel with the key that opens it.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from beam_pipelines.catalog.store import PipelineRow
from beam_pipelines.errors import PipelineDoError
from beam_pipelines.model.definition import Sink
from beam_pipelines.model.sink import SECRET_OPTIONS
from beam_pipelines.settings import SECRET_KEY_ENV, data_plane_settings

__all__ = ["KEY_FILE", "SECRET_KEY_ENV", "SecretBox", "SecretKeyError", "seal_stored_definitions",
           "unreadable_pipelines"]

KEY_FILE = "secret.key"
# Read once: the API gets it through control_api.config, epoch workers inherit it.
_ENV_KEY = data_plane_settings().secret_key
_PREFIX = "enc.v1."
# Only characters a URL's userinfo takes as they are: Fernet tokens are url-safe base64.
_URL_PASSWORD = re.compile(r"(://[^/@:\s]*):([^/@\s]*)@")
_URL_FIELDS = (("options", "endpoint_url"), ("table", "catalog_uri"))
_MAKE_KEY = ("python -c 'from cryptography.fernet import Fernet; "
             "print(Fernet.generate_key().decode())'")

_log = logging.getLogger(__name__)


class SecretKeyError(PipelineDoError):
    """The secret key is malformed, or not the one the stored secrets were sealed with."""


class SecretBox:
    """Seals and opens sink secrets with one Fernet key."""

    def __init__(self, key: str | bytes) -> None:
        from cryptography.fernet import Fernet

        try:
            self._fernet = Fernet(key)
        except ValueError:  # never quote the key itself
            raise SecretKeyError(f"{SECRET_KEY_ENV} is not a Fernet key (32 url-safe base64-"
                                 f"encoded bytes); make one with: {_MAKE_KEY}") from None

    @classmethod
    def for_data_dir(cls, data_dir: str, key: str | None = None) -> SecretBox:
        """The box for a server: ``key``, else ``PIPELINE_DO_SECRET_KEY``, else the data
        dir's ``secret.key`` (generated on first use). Cheap: read again for each epoch."""
        return cls(key or _ENV_KEY or _key_from_file(data_dir))

    def seal(self, value: str) -> str:
        if value.startswith(_PREFIX):
            return value  # sealed already (a definition rewritten by ``transform``)
        return _PREFIX + self._fernet.encrypt(value.encode()).decode("ascii")

    def open(self, value: str) -> str:
        if not value.startswith(_PREFIX):
            return value  # stored in plain text by an older version
        from cryptography.fernet import InvalidToken

        try:
            return self._fernet.decrypt(value[len(_PREFIX):].encode("ascii")).decode()
        except (InvalidToken, UnicodeError):
            raise SecretKeyError(
                f"the sink's secrets cannot be decrypted: {SECRET_KEY_ENV} (or, when it is "
                "unset, the data dir's secret.key) is not the key they were sealed with; set "
                "that key, or create the pipeline again with its secrets") from None

    def seal_definition(self, data: dict[str, Any]) -> dict[str, Any]:
        """A stored definition (``PipelineDefinition.to_dict()``) with its secrets sealed."""
        out = copy.deepcopy(data)
        sink = out.get("sink") or {}
        sink["options"], sink["table"] = _map_secrets(sink.get("options") or {},
                                                      sink.get("table"), self.seal)
        return out

    def open_sink(self, sink: Sink) -> Sink:
        """The sink with its secrets in plain text: for the epoch that writes to it."""
        options, table = _map_secrets(sink.options, sink.table, self.open)
        return replace(sink, options=options, table=table)


def _map_secrets(options: dict[str, Any], table: dict[str, Any] | None,
                 fn: Callable[[str], str]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``options`` and ``table`` with ``fn`` applied to every secret text in them."""
    options = {k: fn(v) if k in SECRET_OPTIONS and isinstance(v, str) else v
               for k, v in options.items()}
    table = None if table is None else dict(table)
    for holder, name in _URL_FIELDS:
        fields = options if holder == "options" else table
        if fields is not None and isinstance(fields.get(name), str):
            fields[name] = _URL_PASSWORD.sub(
                lambda m: f"{m.group(1)}:{fn(m.group(2))}@", fields[name], count=1)
    return options, table


def _key_from_file(data_dir: str) -> bytes:
    """The data dir's key, generated (0600, atomically, once) when there is none."""
    from cryptography.fernet import Fernet

    path = os.path.join(data_dir, KEY_FILE)
    try:
        with open(path, "rb") as fh:
            return fh.read().strip()
    except FileNotFoundError:
        pass
    os.makedirs(data_dir, exist_ok=True)
    scratch = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, Fernet.generate_key() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(scratch, path)  # fails if another process made it first: use theirs
        _log.warning("%s is not set: generated a key for sink secrets in %s (mode 0600). In "
                     "production set %s instead, so that the store and its backups do not "
                     "travel with the key that opens them", SECRET_KEY_ENV, path, SECRET_KEY_ENV)
    except FileExistsError:
        pass
    finally:
        os.unlink(scratch)
    with open(path, "rb") as fh:
        return fh.read().strip()


def _secret_texts(data: dict[str, Any]) -> list[str]:
    found: list[str] = []

    def collect(value: str) -> str:
        found.append(value)
        return value

    sink = data.get("sink") or {}
    _map_secrets(sink.get("options") or {}, sink.get("table"), collect)
    return found


def seal_stored_definitions(store: Any, box: SecretBox) -> int:
    """Seal the secrets of definitions stored in plain text; return how many rows changed."""

    changed = 0
    with store.session() as s:
        for row in s.query(PipelineRow).all():
            data = row.definition_dict()
            if any(not text.startswith(_PREFIX) for text in _secret_texts(data)):
                row.definition = json.dumps(box.seal_definition(data))
                changed += 1
    return changed


def unreadable_pipelines(store: Any, box: SecretBox) -> list[str]:
    """Names of the pipelines whose stored secrets ``box`` cannot open."""

    names = []
    with store.reading() as s:
        for row in s.query(PipelineRow).order_by(PipelineRow.name).all():
            try:
                for text in _secret_texts(row.definition_dict()):
                    box.open(text)
            except SecretKeyError:
                names.append(row.name)
    return names
