"""The control API: a Flask app factory wiring store, auth, routes and errors."""

from __future__ import annotations

import os
from typing import Any

from flask import Flask

__all__ = ["create_app"]


def create_app(config: dict[str, Any] | None = None) -> Flask:
    from beam_pipelines.catalog.store import Store
    from beam_pipelines.sealing import SecretBox
    from beam_pipelines.service import PipelineService
    from control_api import (
        auth,
        bodies,
        errors,
        gate,
        health,
        idempotency,
        ingest,
        metrics,
        openapi,
        operations,
        webhooks,
    )
    from control_api.config import load_config
    from control_api.ratelimit import RateLimiter

    app = Flask(__name__)
    app.config.update(load_config(config))
    data_dir = app.config["DATA_DIR"]
    os.makedirs(data_dir, exist_ok=True)

    store = Store(app.config["DATABASE_URL"])
    store.create_all()
    app.extensions["pdo_store"] = store
    app.extensions["pdo_service"] = PipelineService(
        store, data_dir, default_sink_uri=os.path.join(data_dir, "lake", "{name}"),
        local_sink_roots=app.config["LOCAL_SINK_ROOTS"],
        secret_box=SecretBox.for_data_dir(data_dir, app.config["SECRET_KEY"]),
        on_event=webhooks.Outbox(store).on_event)
    app.extensions["pdo_rate_limiter"] = RateLimiter(os.path.join(data_dir, "ratelimit.sqlite"),
                                                     app.config["RATE_LIMIT"])
    if app.config["API_KEY"]:
        auth.ensure_key(store, app.config["API_KEY"], "admin")

    errors.init_app(app)
    bodies.init_app(app)
    auth.init_app(app)
    gate.init_app(app)
    health.init_app(app)
    operations.init_app(app)
    ingest.init_app(app)
    idempotency.init_app(app)
    webhooks.init_app(app)
    metrics.init_app(app)
    openapi.init_app(app)
    return app
