"""The fast ingest path: ``POST /pipelines/<pipeline_id or name>/events``.

Takes a JSON array (``application/json``) or NDJSON
(``application/x-ndjson``). NDJSON goes straight from the request bytes to
Arrow (pyarrow's JSON reader), with no Python object per event. The body
may be compressed (``Content-Encoding``) and is bounded like every body
(:mod:`control_api.bodies`). In the running app a POST here is served by
:mod:`control_api.fastpath`, which calls :func:`accept` without Flask's
dispatch; the Flask route stays (a GET gets its 405 naming POST, and a
caller of Flask's own ``wsgi_app`` gets the same answers).
"""

from __future__ import annotations

import re

from flask import Blueprint, Flask, Request, Response, request

from control_api import context
from control_api.auth import require_scope
from control_api.errors import envelope, validation_error
from control_api.gate import admit, json_bytes, malformed_json
from transforms.json_depth import load_json_events

__all__ = ["EVENTS_PATH", "EVENTS_RULE", "accept", "bp", "init_app"]

bp = Blueprint("ingest", __name__)

EVENTS_RULE = "/pipelines/<ref>/events"
# The paths EVENTS_RULE matches (werkzeug's default converter: one segment, no "/"),
# for the lean path's dispatcher.
EVENTS_PATH = re.compile(r"/pipelines/(?P<ref>[^/]+)/events")

_NDJSON = ("application/x-ndjson", "application/ndjson", "application/jsonl",
           "application/json-seq")


@bp.post(EVENTS_RULE)
def ingest_events(ref: str):  # type: ignore[no-untyped-def]
    return accept(ref)


def accept(ref: str, req: Request = request) -> Response:
    """Ingest the request's events into pipeline ``ref``: the route's whole work, which
    the lean path (:mod:`control_api.fastpath`) runs with its own ``req``."""
    principal = admit(req)
    require_scope(principal, "ingest", "ingest")
    service = context.service()
    content_type = (req.mimetype or "").lower()
    if content_type in _NDJSON:
        return envelope(service.ingest_json_lines(ref, req.get_data()))
    if content_type == "application/json":
        raw = json_bytes(req)
        try:  # a too-deep record is left out and rejected by itself, not the request
            parsed = load_json_events(raw)
        except ValueError as err:
            raise malformed_json(err) from None
        if not isinstance(parsed.events, list):
            raise validation_error("body", "the body must be a JSON array of event objects")
        return envelope(service.ingest_objects(ref, parsed.events, body_bytes=len(raw),
                                               too_deep=parsed.too_deep))
    raise validation_error("Content-Type", f"unsupported Content-Type {content_type!r}: allowed "
                           "application/json, application/x-ndjson")


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
