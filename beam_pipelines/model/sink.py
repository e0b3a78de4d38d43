"""What a sink may say: its schemes, its options (and which are secret), its table.

Plain data and plain validation, the one place these names are written:
the definition model validates a ``create`` with them, ``storage`` maps the
same option names onto its clients, ``sealing`` seals the secret ones. The
Iceberg connector (``beam_pipelines.storage.iceberg``) does the pyiceberg work; the
shape of ``sink.table`` is checked here, without importing it.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

__all__ = ["ICEBERG_INSTALL", "SECRET_OPTIONS", "SINK_OPTIONS", "SINK_SCHEMES", "TABLE_KEYS",
           "check_table_spec", "pyiceberg_missing"]

SINK_SCHEMES = ("file", "gs", "s3")
SINK_OPTIONS = ("endpoint_url", "region", "access_key_id", "secret_access_key",
                "credentials_file", "project")
# Write-only: sealed in the store, never in a reply, redacted from messages.
SECRET_OPTIONS = ("access_key_id", "secret_access_key", "credentials_file")
TABLE_KEYS = ("catalog_uri", "namespace", "name")
ICEBERG_INSTALL = "pip install 'pipeline-do[iceberg]'"


def check_table_spec(raw: Any) -> dict[str, str]:
    """Validate ``sink.table``; ValueError naming the bad key and what is allowed."""
    if not isinstance(raw, dict):
        raise ValueError("sink.table must be an object {catalog_uri, namespace, name}")
    unknown = set(raw) - set(TABLE_KEYS)
    if unknown:
        raise ValueError(f"unknown sink.table keys {sorted(unknown)}: allowed "
                         + ", ".join(TABLE_KEYS))
    for key in TABLE_KEYS:
        value = raw.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ValueError(f"sink.table.{key} must be a non-empty string")
    if not raw.get("name"):
        raise ValueError("sink.table.name is required")
    if "." in raw["name"]:
        raise ValueError(f"sink.table.name {raw['name']!r} must not contain '.': nest with "
                         "namespace (e.g. 'analytics.raw')")
    namespace = raw.get("namespace")
    if namespace and any(not part or part != part.strip() for part in namespace.split(".")):
        raise ValueError(f"sink.table.namespace {namespace!r} has an empty or padded part")
    if raw.get("catalog_uri"):
        try:
            make_url(raw["catalog_uri"])
        except ArgumentError:  # its text would quote the URL, password and all
            raise ValueError("sink.table.catalog_uri must be a SQLAlchemy URL, e.g. "
                             "sqlite:////var/lib/pipeline-do/iceberg.sqlite or "
                             "postgresql+psycopg2://user:password@host/catalog") from None
    return dict(raw)


def pyiceberg_missing() -> str | None:
    """The install command when pyiceberg is not installed, else None."""
    if importlib.util.find_spec("pyiceberg") is None:
        return f"sink.table needs pyiceberg: {ICEBERG_INSTALL}"
    return None
