"""``POST /pipeline``: one endpoint, an operation and its parameters.

The dispatch table names each operation's scope and handler; an unknown
operation is a 400 naming the allowed ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, Flask, g, request

from beam_pipelines.service import PipelineService
from control_api import context
from control_api.auth import ANY_SCOPE, allows, require_scope
from control_api.errors import envelope, validation_error
from control_api.gate import admit, json_body, run_with_retries, timeout_seconds

__all__ = ["OPERATIONS", "bp", "init_app"]

bp = Blueprint("operations", __name__)

Handler = Callable[[PipelineService, dict[str, Any], dict[str, Any]], Any]


def _ref(params: dict[str, Any]) -> str:
    ref = params.get("pipeline_id") or params.get("name")
    if not isinstance(ref, str) or not ref:
        raise validation_error("parameters.pipeline_id",
                               "name the pipeline with parameters.pipeline_id or parameters.name")
    return ref


def _ingest(service: PipelineService, params: dict[str, Any], _options: dict[str, Any]) -> Any:
    if "events" in params:
        events = params["events"]
        if not isinstance(events, list):
            raise validation_error("parameters.events", "events must be an array of objects")
    elif "event" in params:
        if not isinstance(params["event"], dict):
            raise validation_error("parameters.event", "event must be an object")
        events = [params["event"]]
    else:
        raise validation_error("parameters.events", "give events (an array) or event (an object)")
    return service.ingest_objects(_ref(params), events,
                                  body_bytes=len(request.get_data()))


def _monitor(service: PipelineService, params: dict[str, Any], _options: dict[str, Any]) -> Any:
    window = params.get("window_seconds", 60)
    if isinstance(window, bool) or not isinstance(window, (int, float)) or not 1 <= window <= 86400:
        raise validation_error("parameters.window_seconds",
                               "window_seconds must be a number from 1 to 86400")
    return service.monitor(_ref(params), float(window))


def _whoami(_service: PipelineService, _params: dict[str, Any], _options: dict[str, Any]) -> Any:
    """What the calling key may do, so a client (the console) offers only that."""
    principal = g.principal
    return {"scope": principal.scope, "key_prefix": principal.prefix,
            "operations": [name for name, (scope, _h) in OPERATIONS.items()
                           if allows(principal.scope, scope)]}


OPERATIONS: dict[str, tuple[str, Handler]] = {
    "create": ("admin", lambda s, p, o: s.create(p)),
    "get": ("read", lambda s, p, o: s.get(_ref(p))),
    "list": ("read", lambda s, p, o: s.list_all()),
    "pipeline": ("read", lambda s, p, o: s.list_all()),
    "delete": ("admin", lambda s, p, o: s.delete(_ref(p))),
    "start": ("admin", lambda s, p, o: s.transition(_ref(p), "start")),
    "pause": ("admin", lambda s, p, o: s.transition(_ref(p), "pause")),
    "resume": ("admin", lambda s, p, o: s.transition(_ref(p), "resume")),
    "stop": ("admin", lambda s, p, o: s.stop(_ref(p), timeout_seconds(o))),
    "ingest": ("ingest", _ingest),
    "transform": ("admin", lambda s, p, o: s.transform(_ref(p), p)),
    "monitor": ("read", _monitor),
    "logs": ("read", lambda s, p, o: s.logs(_ref(p), p)),
    "versions": ("read", lambda s, p, o: s.versions(_ref(p))),
    "dead_letters": ("read", lambda s, p, o: s.dead_letters(_ref(p), p)),
    # admin, not ingest: it re-drives records the caller need not have sent, chosen by
    # filters over everything rejected, after an admin's fix (schema, limits).
    "replay_dead_letters": ("admin", lambda s, p, o: s.replay_dead_letters(_ref(p), p)),
    # admin, like transform: it runs SQL over everything retained and writes to the sink.
    "replay": ("admin", lambda s, p, o: s.replay(_ref(p), p)),
    "whoami": (ANY_SCOPE, _whoami),
}


@bp.post("/pipeline")
def pipeline_operation():  # type: ignore[no-untyped-def]
    principal = admit()
    body = json_body()
    if not isinstance(body, dict):
        raise validation_error("body", "the body must be an object {operation, parameters, options}")
    operation = body.get("operation")
    if not isinstance(operation, str) or operation not in OPERATIONS:
        raise validation_error("operation", f"unknown operation {operation!r}: allowed "
                               + ", ".join(OPERATIONS))
    params = body.get("parameters")
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise validation_error("parameters", "parameters must be an object")
    options = body.get("options")
    options = {} if options is None else options
    timeout_seconds(options)  # validate options up front, whatever the operation
    scope, handler = OPERATIONS[operation]
    require_scope(principal, scope, operation)
    service = context.service()
    return envelope(run_with_retries(lambda: handler(service, params, options), options))


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
