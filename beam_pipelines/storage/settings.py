"""A sink's URI and ``sink.options`` -> storage settings and Beam pipeline options.

A sink is a URI plus ``sink.options`` (all strings)::

    endpoint_url, region, access_key_id, secret_access_key, credentials_file, project

Everything here is a pure mapping: it reads the environment it is given
(``os.environ`` by default) and changes nothing. What Beam needs beyond
pipeline options (gs:// endpoint and credentials, bounded retries) is
process-wide and lives in :mod:`beam_pipelines.storage.process`.

**s3://** ``apache_beam.io.aws.clients.s3.boto3_client.Client`` builds a new
boto3 client for every ``S3IO`` from the ``S3Options`` pipeline options
``s3_endpoint_url, s3_region_name, s3_access_key_id, s3_secret_access_key,
s3_session_token, s3_verify, s3_disable_ssl``; options left ``None`` fall
back to boto3's own environment chain. :func:`pipeline_options_for_sink`
maps the sink options (else ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``,
``AWS_REGION`` / ``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``) onto them.

**gs://** only ``project`` is a pipeline option in Beam 2.77; the endpoint
(``STORAGE_EMULATOR_HOST``) and the credentials are process-wide.

``file://`` URIs are rejected by Beam's ``FileSystems``: pass
:func:`beam_path` (``/abs/path``) to ``WriteToFiles`` and friends.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from beam_pipelines.model.layout import is_local
from beam_pipelines.model.sink import SINK_OPTIONS, SINK_SCHEMES
from beam_pipelines.storage.redaction import endpoint_without_credentials

__all__ = ["StorageSettings", "beam_path",
           "pipeline_options_for_sink", "resolve_settings", "sink_scheme", "split_bucket"]



def sink_scheme(uri: str) -> str:
    """``file``, ``gs`` or ``s3``; ValueError naming the allowed schemes otherwise."""
    scheme = "" if is_local(uri) else uri.split("://", 1)[0].lower()
    if scheme not in SINK_SCHEMES:
        raise ValueError(f"unknown storage scheme {scheme or uri!r} in {uri!r}: allowed "
                         + ", ".join(SINK_SCHEMES))
    return scheme


def split_bucket(uri: str) -> tuple[str, str]:
    """``gs://b/p/q`` -> ``("b", "p/q")``; for file:// the bucket is ``""``."""
    scheme = sink_scheme(uri)
    rest = uri.split("://", 1)[1]
    if scheme == "file":
        return "", rest
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"{scheme}:// uri needs a bucket name: {uri!r}")
    return bucket, key


def beam_path(uri: str) -> str:
    """The path Beam accepts for ``uri``: ``file:///a/b`` -> ``/a/b``, others unchanged.

    Beam 2.77's LocalFileSystem has no scheme: ``FileSystems`` (and so
    ``WriteToFiles``) reject ``file://`` URIs with "Unable to get filesystem".
    """
    sink_scheme(uri)
    return uri[len("file://"):] if uri.startswith("file://") else uri


@dataclass(frozen=True)
class StorageSettings:
    """A sink's storage settings after falling back to the environment."""

    uri: str
    scheme: str
    bucket: str
    key: str
    endpoint_url: str | None = None
    region: str | None = None
    project: str | None = None
    credentials_file: str | None = field(default=None, repr=False)
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)

    @property
    def public_endpoint(self) -> str | None:
        return endpoint_without_credentials(self.endpoint_url)


def _clean(value: Any) -> str | None:
    if value is None:
        return None
    value = str(value).strip()
    return value or None


def resolve_settings(uri: str, options: Mapping[str, Any] | None = None,
                     env: Mapping[str, str] | None = None) -> StorageSettings:
    """Sink options first, then the standard environment variables of ``env``.

    ``env`` defaults to ``os.environ``. Once a gs:// sink was applied to the
    process, ``os.environ["STORAGE_EMULATOR_HOST"]`` is that sink's: pass
    :func:`beam_pipelines.storage.process.sink_environment` to resolve
    against the process's own setting.
    """
    env = os.environ if env is None else env
    options = options or {}
    unknown = set(options) - set(SINK_OPTIONS)
    if unknown:
        raise ValueError(f"unknown storage options {sorted(unknown)}: allowed "
                         + ", ".join(SINK_OPTIONS))
    opt = {k: _clean(options.get(k)) for k in SINK_OPTIONS}
    scheme = sink_scheme(uri)
    bucket, key = split_bucket(uri)
    if scheme == "s3":
        endpoint = opt["endpoint_url"] or _clean(env.get("AWS_ENDPOINT_URL_S3")) \
            or _clean(env.get("AWS_ENDPOINT_URL"))
        region = opt["region"] or _clean(env.get("AWS_REGION")) \
            or _clean(env.get("AWS_DEFAULT_REGION"))
        if opt["access_key_id"] or opt["secret_access_key"]:
            key_id, secret, token = opt["access_key_id"], opt["secret_access_key"], None
        else:
            key_id = _clean(env.get("AWS_ACCESS_KEY_ID"))
            secret = _clean(env.get("AWS_SECRET_ACCESS_KEY"))
            token = _clean(env.get("AWS_SESSION_TOKEN"))
        if bool(key_id) != bool(secret):
            raise ValueError("s3 sink needs both access_key_id and secret_access_key, or neither")
        return StorageSettings(uri, scheme, bucket, key, endpoint_url=endpoint, region=region,
                               access_key_id=key_id, secret_access_key=secret,
                               session_token=token)
    if scheme == "gs":
        endpoint = opt["endpoint_url"] or _clean(env.get("STORAGE_EMULATOR_HOST"))
        project = opt["project"] or _clean(env.get("GOOGLE_CLOUD_PROJECT")) \
            or _clean(env.get("GCLOUD_PROJECT"))
        creds = opt["credentials_file"] or _clean(env.get("GOOGLE_APPLICATION_CREDENTIALS"))
        return StorageSettings(uri, scheme, bucket, key, endpoint_url=endpoint,
                               project=project, credentials_file=creds)
    return StorageSettings(uri, scheme, bucket, key)


def pipeline_options_for_sink(uri: str, options: Mapping[str, Any] | None = None,
                              env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Beam ``PipelineOptions`` keyword arguments for writing to ``uri``.

    Pure: no side effects. For gs:// the endpoint and credentials cannot be
    pipeline options in Beam 2.77: apply them with
    :func:`beam_pipelines.storage.process.apply_sink_environment` too.
    """
    s = resolve_settings(uri, options, env)
    out: dict[str, Any] = {}
    if s.scheme == "s3":
        if s.endpoint_url:
            out["s3_endpoint_url"] = s.endpoint_url
            if s.endpoint_url.lower().startswith("http://"):
                out["s3_disable_ssl"] = True
        if s.region:
            out["s3_region_name"] = s.region
        if s.access_key_id:
            out["s3_access_key_id"] = s.access_key_id
            out["s3_secret_access_key"] = s.secret_access_key
        if s.session_token:
            out["s3_session_token"] = s.session_token
    elif s.scheme == "gs" and s.project:
        out["project"] = s.project
    return out
