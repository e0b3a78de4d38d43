"""``GET /healthz``: 200 without auth once the store answers."""

from __future__ import annotations

from flask import Blueprint, Flask, current_app
from sqlalchemy import text

from control_api.errors import ApiError, envelope

__all__ = ["bp", "init_app"]

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():  # type: ignore[no-untyped-def]
    try:
        with current_app.extensions["pdo_store"].session() as s:
            s.execute(text("SELECT 1"))
    except Exception:  # noqa: BLE001 - any store failure means not ready
        raise ApiError(503, "SERVICE_UNAVAILABLE", "the store is not reachable",
                       headers={"Retry-After": "1"}) from None
    return envelope({"status": "ok"})


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
