"""The web console: one page and its static files, served at ``/console`` by the API's app.

The page holds no data and no secret: its scripts call the same ``POST /pipeline``
operations as any client, with the key the user pastes (kept in the tab's
``sessionStorage`` and sent only as the bearer header). Every console response
carries a Content-Security-Policy that allows scripts, styles and requests from
this origin alone and no inline script, so a value from the API that holds
markup can never run; the scripts also only ever set text, never HTML.
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response, redirect, render_template

__all__ = ["CSP", "bp", "init_app"]

bp = Blueprint("console", __name__, template_folder="templates", static_folder="static",
               static_url_path="/console/static")

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


@bp.get("/console")
@bp.get("/console/")
def page() -> Response:
    response = Response(render_template("console.html"), mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/")
def root() -> Response:
    """A person opening the server's address lands on the console."""
    return redirect("/console", code=302)  # type: ignore[return-value]


@bp.after_request
def _secure(response: Response) -> Response:
    for name, value in _HEADERS.items():
        response.headers[name] = value
    return response


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
