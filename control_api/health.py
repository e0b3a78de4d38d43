"""``GET /healthz``: 200 without auth once the store answers and, where the job
manager runs next to the API (``serve``), while it works.

The manager runs in another process than the API's workers; its supervisor
writes a heartbeat file (:mod:`beam_pipelines.runners.local.supervisor`), read here. An app
without a manager (``RUN_JOB_MANAGER`` false: tests, an API-only process)
checks the store alone.
"""

from __future__ import annotations

from flask import Blueprint, Flask
from sqlalchemy import text

from beam_pipelines.runners.local.supervisor import manager_problem
from control_api import context
from control_api.errors import ApiError, envelope

__all__ = ["bp", "init_app"]

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():  # type: ignore[no-untyped-def]
    try:
        with context.store().session() as s:
            s.execute(text("SELECT 1"))
    except Exception:  # noqa: BLE001 - any store failure means not ready
        raise ApiError(503, "SERVICE_UNAVAILABLE", "the store is not reachable",
                       headers={"Retry-After": "1"}) from None
    if context.settings().run_job_manager:
        problem = manager_problem(context.settings().data_dir)
        if problem is not None:
            raise ApiError(503, "SERVICE_UNAVAILABLE", f"the job manager is not working: {problem}",
                           details={"reason": problem}, headers={"Retry-After": "5"})
    return envelope({"status": "ok"})


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
