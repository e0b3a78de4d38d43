"""What the app factory wires once and the routes use: typed, in one place.

The factory builds one :class:`AppContext` and registers it on the app
(:func:`register`); a route reaches the service, the store, the rate
limiter or the settings through :func:`service`, :func:`store`,
:func:`rate_limiter` and :func:`settings`, and a test holding an app through
:func:`of`. Nothing else is stored under string keys for them.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app

from beam_pipelines.catalog.store import Store
from beam_pipelines.service import PipelineService
from control_api.config import Settings
from control_api.ratelimit import RateLimiter

__all__ = ["AppContext", "of", "rate_limiter", "register", "service", "settings", "store"]

_EXTENSION = "pipeline_do"


@dataclass(frozen=True)
class AppContext:
    settings: Settings
    store: Store
    service: PipelineService
    rate_limiter: RateLimiter


def register(app: Flask, context: AppContext) -> None:
    app.extensions[_EXTENSION] = context


def of(app: Flask) -> AppContext:
    """The context the factory registered on ``app``."""
    context: AppContext = app.extensions[_EXTENSION]
    return context


def _current() -> AppContext:
    return of(current_app)  # type: ignore[arg-type]


def settings() -> Settings:
    return _current().settings


def store() -> Store:
    return _current().store


def service() -> PipelineService:
    return _current().service


def rate_limiter() -> RateLimiter:
    return _current().rate_limiter
