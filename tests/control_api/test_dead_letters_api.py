"""Dead letters over HTTP on the real server: reject, list, raise the limit, replay, read back.

The fix here is a server limit (widening the schema is the other kind, in
``test_schema_evolution_api``).
Records nested deeper than ``PIPELINE_DO_MAX_JSON_DEPTH`` are ``too_deep``;
the server is restarted with a higher limit and the dead letters replayed:
each lands in the lake exactly once, read back with DuckDB.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

import requests

from tests.conftest import ADMIN_KEY
from tests.control_api.conftest import Api, make_key, read_rows
from tests.live import LiveServer

SCHEMA = [{"name": "n", "type": "int64", "required": True}, {"name": "payload", "type": "json"}]


def _deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"x": value}
    return value


def test_fix_the_limit_and_replay_each_dead_letter_once_into_the_lake(tmp_path: Any) -> None:
    server = LiveServer(str(tmp_path), api_key=ADMIN_KEY, args=("--job-workers", "1"),
                        extra_env={"PIPELINE_DO_MAX_JSON_DEPTH": "4"}).start()
    try:
        api = Api(server)
        api.ok("create", {"name": "deep", "schema": SCHEMA, "sql": "SELECT n FROM events",
                          "sink": {"roll": {"interval_seconds": 0.5}}})
        events = [{"n": n, "payload": _deep(8 if n % 2 else 1)} for n in range(20)]
        events.append({"payload": _deep(8)})  # deep and without n: rejected again later
        response = api.ndjson("deep", events)
        assert response.status_code == 200, response.text
        reply = response.json()["data"]
        assert reply["accepted"] == 10
        assert {r["code"] for r in reply["rejected"]} == {"too_deep"}

        reader = Api(server, make_key(server, "read"))
        listed = reader.ok("dead_letters", {"name": "deep", "code": "too_deep", "limit": 6})
        assert len(listed["dead_letters"]) == 6 and listed["next_cursor"]
        rest = reader.ok("dead_letters", {"name": "deep", "cursor": listed["next_cursor"]})
        letters = listed["dead_letters"] + rest["dead_letters"]
        assert len(letters) == 11 and rest["next_cursor"] is None
        assert {json.dumps(json.loads(d["record"])) for d in letters} == {
            json.dumps(e) for e in events if e.get("n", 1) % 2}
        refused = reader.call("replay_dead_letters", {"name": "deep"})
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "AUTHORIZATION_ERROR"

        server.kill()
        server.extra_env["PIPELINE_DO_MAX_JSON_DEPTH"] = "64"
        server.start()
        ids = [d["id"] for d in letters]
        replies: list[dict[str, Any]] = []

        def replay() -> None:  # two admins fixing the same thing at once
            replies.append(api.ok("replay_dead_letters", {"name": "deep", "ids": ids}))

        threads = [threading.Thread(target=replay) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert len(replies) == 2 and sum(r["accepted"] for r in replies) == 10
        again = [r for reply in replies for r in reply["rejected"]]
        assert {r["code"] for r in again} == {"missing_field"}
        [left] = api.ok("dead_letters", {"name": "deep"})["dead_letters"]
        assert left["code"] == "missing_field" and left["attempts"] >= 2

        stopped = api.ok("stop", {"name": "deep"}, options={"timeout": 60_000})
        assert stopped["status"] == "stopped"
        assert api.ok("get", {"name": "deep"})["events_in"] == 20
        lake = os.path.join(server.data_dir, "lake", "deep")
        assert sorted(n for (n,) in read_rows(lake, "n")) == list(range(20))
    finally:
        server.kill()


def test_whoami_offers_the_operations_by_scope(api: Api) -> None:
    admin = api.ok("whoami")["operations"]
    assert {"dead_letters", "replay_dead_letters"} <= set(admin)
    reader = Api(api.server, make_key(api.server, "read")).ok("whoami")["operations"]
    assert "dead_letters" in reader and "replay_dead_letters" not in reader


def test_bad_filters_are_a_400_naming_the_field(api: Api, unique: Any) -> None:
    name = unique("dl")
    api.ok("create", {"name": name, "schema": SCHEMA})
    response = api.call("dead_letters", {"name": name, "code": "bogus"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["details"]["field"] == "code" and "too_deep" in error["message"]
    response = api.call("replay_dead_letters", {"name": name, "ids": [0]})
    assert response.status_code == 400 and response.json()["error"]["details"]["field"] == "ids"
    missing = requests.post(api.url + "/pipeline", headers=api.headers(), timeout=30, json={
        "operation": "dead_letters", "parameters": {"name": "no_such_pipeline"}})
    assert missing.status_code == 404
