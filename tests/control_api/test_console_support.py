"""What the web console adds to the API and how its pages are served.

The console calls the public operations only; it needed three additions,
checked here on the app: ``whoami`` (what the calling key may run),
``versions`` (the SQL history) and ``create`` with ``dry_run`` (check a
definition without making it). The pages must carry a policy that forbids
inline script and other origins, and hold no inline script themselves.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from control_api import context
from control_api.auth import create_key
from control_api.operations import OPERATIONS

STATIC = Path(__file__).resolve().parents[2] / "control_api" / "console" / "static"
DEFINITION = {"name": "clicks", "schema": [{"name": "user_id", "type": "int64"}],
              "sql": "SELECT user_id * 2 AS doubled FROM events"}


def _call(client: Any, key: str, operation: str, parameters: dict[str, Any] | None = None) -> Any:
    return client.post("/pipeline", json={"operation": operation, "parameters": parameters or {}},
                       headers={"Authorization": f"Bearer {key}"})


@pytest.mark.parametrize("scope", ["admin", "read", "ingest"])
def test_whoami_names_the_keys_scope_and_exactly_the_operations_it_may_run(
        app: Any, client: Any, scope: str) -> None:
    key = create_key(context.of(app).store, scope)
    body = _call(client, key, "whoami").get_json()
    assert body["success"]
    data = body["data"]
    assert data == {"scope": scope, "key_prefix": key[:12], "operations": data["operations"]}
    for operation in OPERATIONS:
        allowed = _call(client, key, operation, {"name": "nope"}).status_code != 403
        assert (operation in data["operations"]) == allowed, operation


def test_whoami_needs_a_valid_key(client: Any) -> None:
    response = _call(client, "pdo_unknown", "whoami")
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "AUTHENTICATION_ERROR"


def test_versions_lists_every_sql_version_oldest_first(client: Any, auth: dict[str, str]) -> None:
    key = auth["Authorization"].split()[1]
    assert _call(client, key, "create", DEFINITION).status_code == 200
    new_sql = "SELECT user_id FROM events"
    assert _call(client, key, "transform", {"name": "clicks", "sql": new_sql}).status_code == 200
    versions = _call(client, key, "versions", {"name": "clicks"}).get_json()["data"]["versions"]
    assert [(v["version"], v["sql"]) for v in versions] == [(1, DEFINITION["sql"]), (2, new_sql)]
    assert versions[0]["output_schema"] == [{"name": "doubled", "type": "int64"}]
    assert versions[1]["created_at"].endswith("Z")
    assert versions[0]["schema"] == versions[1]["schema"] == [
        {"name": "user_id", "type": "int64", "required": False}]
    assert _call(client, key, "versions", {"name": "other"}).status_code == 404


def test_create_dry_run_checks_the_definition_and_makes_nothing(client: Any,
                                                                auth: dict[str, str]) -> None:
    key = auth["Authorization"].split()[1]
    checked = _call(client, key, "create", {**DEFINITION, "dry_run": True}).get_json()
    assert checked["data"] == {"dry_run": True, "rows": [],
                               "output_schema": [{"name": "doubled", "type": "int64"}]}
    assert _call(client, key, "list").get_json()["data"]["pipelines"] == []

    bad = _call(client, key, "create", {**DEFINITION, "sql": "SELECT nope FROM events",
                                        "dry_run": True}).get_json()
    assert bad["error"]["code"] == "VALIDATION_ERROR" and bad["error"]["details"]["field"] == "sql"
    odd = _call(client, key, "create", {**DEFINITION, "dry_run": "yes"}).get_json()
    assert odd["error"]["details"]["field"] == "dry_run"


def test_console_pages_forbid_inline_script_and_framing(client: Any) -> None:
    for path in ("/console", "/console/static/app.js", "/console/static/console.css"):
        response = client.get(path)
        assert response.status_code == 200, path
        policy = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
        assert "default-src 'none'" in policy
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert client.get("/").headers["Location"].endswith("/console")


def test_console_markup_has_no_inline_script_or_handlers(client: Any) -> None:
    html = client.get("/console").get_data(as_text=True)
    for tag in re.findall(r"<script\b[^>]*>", html):
        assert 'src="/console/static/' in tag
    assert all(not body.strip() for body in re.findall(r"<script\b[^>]*>(.*?)</script>", html, re.S))
    assert not re.search(r"\son[a-z]+\s*=", html)
    sources = {p.name: "\n".join(line for line in p.read_text().splitlines()
                                  if not line.lstrip().startswith("//"))
               for p in STATIC.glob("*.js")}
    assert sources
    for name, source in sources.items():  # text only, never markup from data
        assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(",
                             source), name
