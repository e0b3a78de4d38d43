"""Bearer API keys: random secrets shown once, stored as SHA-256 hashes.

A key is ``pdo_`` plus 32 random bytes (URL-safe base64). With that much
entropy a plain SHA-256 is the right hash (it is what a slow password hash
protects against that cannot happen here), and it lets a request find its
key by an indexed lookup; the found hash is still compared in constant
time. Scopes: ``admin`` (everything), ``ingest`` (ingest only), ``read``
(get, list, monitor, logs, versions, dead_letters).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from flask import Flask, Request, current_app, g, request
from sqlalchemy import select

from beam_pipelines.catalog.store import Store
from control_api import context
from control_api.errors import ApiError
from control_api.tables import ApiKey

__all__ = ["ANY_SCOPE", "SCOPES", "Principal", "allows", "create_key", "ensure_key", "hash_key",
           "init_app", "require_scope", "revoke_key"]

SCOPES = ("admin", "ingest", "read")
ANY_SCOPE = "any"  # an operation every valid key may run (``whoami``)
_CACHE_SECONDS = 2.0


@dataclass(frozen=True)
class Principal:
    key_id: int
    prefix: str
    scope: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(store: Store, scope: str) -> str:
    """Make a key, store its hash and return the secret (the only time it exists)."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}: allowed " + ", ".join(SCOPES))
    key = "pdo_" + secrets.token_urlsafe(32)
    with store.session() as s:
        s.add(ApiKey(prefix=key[:12], key_hash=hash_key(key), scope=scope,
                     created_at=time.time()))
    return key


def ensure_key(store: Store, key: str, scope: str = "admin") -> bool:
    """Register a given key (``PIPELINE_DO_API_KEY``); True if it was new."""
    digest = hash_key(key)
    with store.session() as s:
        existing = s.scalars(select(ApiKey).where(ApiKey.key_hash == digest)).first()
        if existing is not None:
            existing.revoked = False
            existing.scope = scope
            return False
        s.add(ApiKey(prefix=key[:12], key_hash=digest, scope=scope, created_at=time.time()))
        return True


def revoke_key(store: Store, prefix: str) -> int:
    """Revoke every key whose visible prefix starts with ``prefix``; return how many."""
    if len(prefix) < 6:
        raise ValueError("give at least 6 characters of the key prefix")
    with store.session() as s:
        keys = s.scalars(select(ApiKey).where(ApiKey.prefix.startswith(prefix[:12]),
                                              ApiKey.revoked.is_(False))).all()
        for k in keys:
            k.revoked = True
        return len(keys)


def has_keys(store: Store) -> bool:
    with store.session() as s:
        return s.scalars(select(ApiKey.id).where(ApiKey.revoked.is_(False))).first() is not None


def _lookup(store: Store, key: str) -> Principal | None:
    cache: dict[str, tuple[float, Principal | None]] = current_app.extensions["pdo_key_cache"]
    digest = hash_key(key)
    hit = cache.get(digest)
    now = time.monotonic()
    if hit is not None and now - hit[0] < _CACHE_SECONDS:
        return hit[1]
    with store.session() as s:
        row = s.scalars(select(ApiKey).where(ApiKey.key_hash == digest)).first()
        principal = None
        if row is not None and not row.revoked and hmac.compare_digest(row.key_hash, digest):
            principal = Principal(row.id, row.prefix, row.scope)
    if len(cache) > 10_000:
        cache.clear()
    cache[digest] = (now, principal)
    return principal


def authenticate(req: Request = request) -> Principal:
    """The key's principal; ``req`` is Flask's request unless the lean ingest path
    passes its own."""
    header = req.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(401, "AUTHENTICATION_ERROR",
                       "missing API key: send 'Authorization: Bearer <key>'")
    principal = _lookup(context.store(), key.strip())
    if principal is None:
        raise ApiError(401, "AUTHENTICATION_ERROR", "unknown or revoked API key")
    g.principal = principal
    return principal


def allows(scope: str, needed: str) -> bool:
    """Whether a key of ``scope`` may run an operation that needs ``needed``."""
    return needed == ANY_SCOPE or scope == "admin" or scope == needed


def require_scope(principal: Principal, needed: str, operation: str) -> None:
    if allows(principal.scope, needed):
        return
    raise ApiError(403, "AUTHORIZATION_ERROR",
                   f"a key with scope {principal.scope!r} cannot run {operation!r}: "
                   f"it needs scope {needed!r} or 'admin'",
                   {"scope": principal.scope, "required": needed})


def init_app(app: Flask) -> None:
    app.extensions["pdo_key_cache"] = {}
