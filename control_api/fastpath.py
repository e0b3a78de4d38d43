"""The lean ingest path: ``POST /pipelines/<ref>/events`` without Flask's dispatch.

The events route carries nearly all of the traffic, and in Flask each of its
requests pays for the request context, URL routing, every ``before_request``
/ ``after_request`` / ``teardown_request`` hook in the registry, signals and
error-handler lookup. :class:`EventsFastPath` sits in front of the Flask app
(as its ``wsgi_app``) and serves that one route by calling the same
functions the Flask route and hooks call, in the same order:
:func:`control_api.ingest.accept` for the work (key, rate limit,
idempotency claim, body, ingest, envelope), and the hooks' functions around
it (request id, rate-limit headers, idempotent answer storage, unread body
drain, ``X-Request-ID``). Only an app context is pushed, which gives those
functions ``current_app`` and ``g``; no request context exists on this path.
Every other request (and any other method on the events path, so a GET still
gets Flask's 405) goes to Flask unchanged.

Because this path runs the hooks itself, it checks when mounted that the app
registered exactly those (:func:`_check_hooks`): a hook added to the app
later fails the app factory instead of being skipped here unnoticed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from flask import Flask, Response

from beam_pipelines.errors import PipelineDoError
from control_api.bodies import BoundedRequest, discard_unread_body
from control_api.errors import (
    ApiError,
    domain_error,
    error_envelope,
    start_request,
    tag_response,
    unexpected_error,
)
from control_api.gate import add_rate_headers
from control_api.idempotency import (
    IdempotentReplay,
    record_response,
    release_claim,
    replay_response,
)
from control_api.ingest import EVENTS_PATH, accept

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["EventsFastPath", "init_app"]

# The handlers _respond stands in for, by exception class; HTTPException and
# RequestEntityTooLarge are the app's too, but nothing on this path raises them.
_HANDLERS: dict[type[Exception], Callable[[Any], Response]] = {
    IdempotentReplay: replay_response,
    ApiError: error_envelope,
    PipelineDoError: domain_error,
    Exception: unexpected_error,
}
# The app's request hooks as Flask registers them (after-request ones run in reverse).
_HOOKS = {"before_request": [start_request],
          "after_request": [tag_response, discard_unread_body, add_rate_headers, record_response],
          "teardown_request": [release_claim]}


class EventsFastPath:
    """WSGI dispatcher: the events route served lean, everything else by ``fallback``."""

    def __init__(self, app: Flask, fallback: WSGIApplication) -> None:
        _check_hooks(app)
        self.app = app
        self.fallback = fallback  # Flask's own wsgi_app (the benchmark's "before")

    def __call__(self, environ: WSGIEnvironment,
                 start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD", "").upper() != "POST" \
                or not environ.get("PATH_INFO", "").endswith("/events"):
            return self.fallback(environ, start_response)
        req = BoundedRequest(environ)
        match = EVENTS_PATH.fullmatch(req.path)
        if match is None:
            return self.fallback(environ, start_response)
        with self.app.app_context():
            response = self._respond(req, match.group("ref"))
            return response(environ, start_response)

    def _respond(self, req: BoundedRequest, ref: str) -> Response:
        """What Flask's dispatch does for this route: the before hook, the view with
        the app's error handlers, the after hooks in Flask's (reverse registration)
        order, the teardown."""
        try:
            start_request(req)
            try:
                response = accept(ref, req)
            except Exception as err:  # noqa: BLE001 - as Flask's errorhandler(Exception)
                response = _handled(err)
            response = record_response(response)
            response = add_rate_headers(response)
            response = discard_unread_body(response, req)
            return tag_response(response)
        except Exception as err:  # noqa: BLE001 - a failing hook is a 500, as in Flask
            return tag_response(unexpected_error(err))
        finally:
            release_claim()


def _handled(err: Exception) -> Response:
    """The response of the app's handler for ``err``'s nearest class, as Flask picks it."""
    for kind in type(err).__mro__:
        handler = _HANDLERS.get(kind)
        if handler is not None:
            return handler(err)
    return unexpected_error(err)


def _check_hooks(app: Flask) -> None:
    """Refuse to mount on an app whose hooks or handlers differ from what this path runs."""
    registered: dict[str, dict[Any, list[Any]]] = {
        "before_request": app.before_request_funcs, "after_request": app.after_request_funcs,
        "teardown_request": app.teardown_request_funcs}
    for kind, expected in _HOOKS.items():
        funcs = registered[kind]
        if funcs.get(None, []) != expected or funcs.get("ingest"):
            raise RuntimeError(f"the app's {kind} hooks are not the ones control_api.fastpath "
                               "runs for the events route: update _HOOKS and _respond")
    handlers = app.error_handler_spec.get(None, {}).get(None, {})
    if any(handlers.get(kind) is not handler for kind, handler in _HANDLERS.items()):
        raise RuntimeError("the app's error handlers are not the ones control_api.fastpath "
                           "uses for the events route: update _HANDLERS")


def init_app(app: Flask) -> None:
    app.wsgi_app = EventsFastPath(app, app.wsgi_app)  # type: ignore[method-assign]
