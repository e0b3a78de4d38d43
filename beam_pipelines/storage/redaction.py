"""Secret redaction for messages, logs and webhooks: pure functions, no process hooks.

:func:`redact_secrets` takes a text and the secrets the caller knows about
(a sink's options, extra literals) and returns it with those values and
anything that looks like a credential blanked out. Installing it on the
process's log records and exception hooks is
:func:`beam_pipelines.storage.process.protect_secrets`, which keeps the
values it was given and passes them here as ``extra_secrets``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from beam_pipelines.model.sink import SECRET_OPTIONS

__all__ = ["MIN_SECRET_CHARS", "endpoint_without_credentials", "option_secrets",
           "redact_secrets", "url_password"]

MIN_SECRET_CHARS = 4  # shorter values would blank out ordinary words

# Secrets that error texts from storage clients can carry: credentials in a
# URL, signed-URL query parameters, authorization headers, key material.
_SECRET_PATTERNS = (
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s:@'\"]+:[^/\s@'\"]*@"), r"\1***@"),
    (re.compile(r"(?i)\b(x-amz-signature|x-amz-credential|x-amz-security-token|"
                r"x-goog-signature|x-goog-credential|awsaccesskeyid|signature|access_token|"
                r"refresh_token|sig|token)=[^&\s'\"<>]+"), r"\1=***"),
    (re.compile(r"(?i)\b(authorization|x-amz-security-token|x-goog-api-key)"
                r"(['\"]?\s*[:=]\s*['\"]?)[^'\"\n,}]+"), r"\1\2***"),
    (re.compile(r"-----BEGIN[A-Z ]*PRIVATE KEY-----.*?(-----END[A-Z ]*PRIVATE KEY-----|$)",
                re.DOTALL), "***"),
    (re.compile(r"(?i)([\"']?(?:private_key|private_key_id|client_secret|refresh_token|"
                r"secret_access_key|aws_secret_access_key|session_token)[\"']?\s*[:=]\s*)"
                r"([\"'])(?:\\.|(?!\2).)*\2"), r"\1\2***\2"),
    (re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"), "***"),
)
_SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def endpoint_without_credentials(url: str | None) -> str | None:
    """An endpoint URL with its ``user:password@`` dropped, for messages (replies
    keep the user: that rule is ``beam_pipelines.model.redaction.hide_password``)."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.username or parts.password:
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return url


def url_password(url: Any) -> str | None:
    """The password in ``url`` (``scheme://user:password@host``), or None."""
    if not isinstance(url, str):
        return None
    try:
        return urlsplit(url).password or None
    except ValueError:
        return None


def option_secrets(options: Mapping[str, Any] | None) -> list[str]:
    """The secret values of a sink's options: keys, the credentials file, the endpoint's password."""
    found = [str(v) for k, v in (options or {}).items() if k in SECRET_OPTIONS and v]
    password = url_password((options or {}).get("endpoint_url"))
    if password:
        found.append(password)
    return found


def redact_secrets(text: str, options: Mapping[str, Any] | None = None,
                   extra_secrets: Iterable[str] = ()) -> str:
    """``text`` without the sink's secrets, for messages, logs and webhooks.

    Removes the literal values of the secret sink options (keys, the
    credentials file path), of ``extra_secrets`` and of the AWS key variables
    in the environment, then anything that looks like a credential: user:password
    in URLs, signed-URL parameters, authorization headers, private keys.
    """
    literals = option_secrets(options)
    literals += [os.environ[name] for name in _SECRET_ENV if os.environ.get(name)]
    literals += [s for s in extra_secrets if s]
    for secret in sorted({s.strip() for s in literals}, key=len, reverse=True):
        if len(secret) >= MIN_SECRET_CHARS:
            text = text.replace(secret, "***")
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text
