"""Dead letters through PipelineService and the LocalRunner: list, page, replay once, expire."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from beam_pipelines.catalog.store import Store, default_database_url
from beam_pipelines.errors import DefinitionError
from beam_pipelines.runners.base import RunnerRegistry
from beam_pipelines.runners.local import dead_letter_store
from beam_pipelines.runners.local.buffer import BufferHandles, EventBuffer, buffer_path
from beam_pipelines.runners.local.retention import expire_retained
from beam_pipelines.runners.local.runner import LocalRunner
from beam_pipelines.service import PipelineService

SCHEMA = [{"name": "n", "type": "int64", "required": True}, {"name": "s", "type": "string"}]
INPUT = pa.schema([("n", pa.int64()), ("s", pa.string())])


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(default_database_url(str(tmp_path)))
    store.create_all()
    return store


def _service(store: Store, tmp_path: Path) -> PipelineService:
    return PipelineService(store, str(tmp_path), default_sink_uri=str(tmp_path / "lake/{name}"),
                           runners=RunnerRegistry({"direct": LocalRunner(store, str(tmp_path))}))


@pytest.fixture
def service(store: Store, tmp_path: Path) -> PipelineService:
    return _service(store, tmp_path)


def _create(service: PipelineService, name: str = "p", **more: Any) -> str:
    return str(service.create({"name": name, "schema": SCHEMA, **more})["id"])


def _buffer(tmp_path: Path, pipeline_id: str) -> EventBuffer:
    return EventBuffer(buffer_path(str(tmp_path), pipeline_id))


def _seed(tmp_path: Path, pipeline_id: str, records: list[str], code: str = "too_deep") -> None:
    """Dead letters as an earlier limit or schema left them: records that may pass now."""
    _buffer(tmp_path, pipeline_id).append(
        INPUT.empty_table(), [(i, code, "refused earlier", r) for i, r in enumerate(records)])


def _events(tmp_path: Path, pipeline_id: str) -> list[int]:
    buffer = _buffer(tmp_path, pipeline_id)
    table = buffer.read_range(0, buffer.backlog(0).last_seq, INPUT)
    return sorted(table.column("n").to_pylist())


def test_rejections_are_listed_newest_first_filtered_and_paged(service: PipelineService) -> None:
    _create(service)
    body = b'{"n": 1}\n{"n": "x"}\n{"s": "no n"}\n{bad\n{"n": 2.5}\n'
    assert service.ingest_json_lines("p", body)["accepted"] == 1
    listed = service.dead_letters("p", {})
    assert listed["next_cursor"] is None
    letters = listed["dead_letters"]
    assert [(d["index"], d["code"]) for d in letters] == [
        (4, "type_mismatch"), (3, "parse_failure"), (2, "missing_field"), (1, "type_mismatch")]
    assert json.loads(letters[-1]["record"]) == {"n": "x"}
    assert letters[0]["attempts"] == 1 and letters[0]["rejected_at"].endswith("Z")

    typed = service.dead_letters("p", {"code": "type_mismatch"})["dead_letters"]
    assert [d["index"] for d in typed] == [4, 1]

    first = service.dead_letters("p", {"limit": 3})
    assert [d["index"] for d in first["dead_letters"]] == [4, 3, 2]
    second = service.dead_letters("p", {"limit": 3, "cursor": first["next_cursor"]})
    assert [d["index"] for d in second["dead_letters"]] == [1]
    assert second["next_cursor"] is None

    assert service.dead_letters("p", {"until": "2000-01-01T00:00:00Z"})["dead_letters"] == []
    assert len(service.dead_letters("p", {"since": "2000-01-01T00:00:00Z"})["dead_letters"]) == 4


@pytest.mark.parametrize(("params", "field"), [
    ({"code": "nope"}, "code"), ({"limit": 0}, "limit"), ({"limit": 1001}, "limit"),
    ({"cursor": "not-a-cursor"}, "cursor"), ({"since": "yesterday"}, "since")])
def test_bad_parameters_name_the_field(service: PipelineService, params: dict[str, Any],
                                       field: str) -> None:
    _create(service)
    with pytest.raises(DefinitionError) as caught:
        service.dead_letters("p", params)
    assert caught.value.details["field"] == field


def test_replay_accepts_each_fixed_record_once_and_rejects_the_rest_with_the_new_reason(
        service: PipelineService, tmp_path: Path) -> None:
    pipeline_id = _create(service)
    _seed(tmp_path, pipeline_id, ['{"n": 1,\n "s": "a"}', '{"n": 2}', '{"s": "still no n"}'])
    ids = [d["id"] for d in service.dead_letters("p", {})["dead_letters"]]

    reply = service.replay_dead_letters("p", {"ids": ids})
    assert reply["accepted"] == 2
    [again] = reply["rejected"]
    assert again["code"] == "missing_field" and "n" in again["message"]
    assert _events(tmp_path, pipeline_id) == [1, 2]
    assert service.get("p")["events_in"] == 2

    [left] = service.dead_letters("p", {})["dead_letters"]
    assert (left["id"], left["code"], left["attempts"]) == (again["id"], "missing_field", 2)
    # Replayed again: nothing more is accepted, the rejected one counts another attempt.
    assert service.replay_dead_letters("p", {"ids": ids})["accepted"] == 0
    assert service.dead_letters("p", {})["dead_letters"][0]["attempts"] == 3
    assert _events(tmp_path, pipeline_id) == [1, 2]


def test_replay_by_filter_and_records_that_cannot_be_replayed(
        service: PipelineService, tmp_path: Path) -> None:
    pipeline_id = _create(service)
    _seed(tmp_path, pipeline_id, ['{"n": 7}'], code="too_deep")
    _seed(tmp_path, pipeline_id, ['{"n": 8}'], code="invalid_utf8")
    _seed(tmp_path, pipeline_id, ['{"n": 9, "s": "' + "x" * 70_000 + '"}'[:65_536]],
          code="too_large")
    reply = service.replay_dead_letters("p", {"code": "too_deep"})
    assert reply == {"accepted": 1, "rejected": []}
    everything = service.replay_dead_letters("p", {})
    assert everything["accepted"] == 0
    assert sorted(r["code"] for r in everything["rejected"]) == ["invalid_utf8", "too_large"]
    assert all("send it again" in r["message"] for r in everything["rejected"])
    assert _events(tmp_path, pipeline_id) == [7]


def test_two_racing_replays_accept_each_record_once(store: Store, tmp_path: Path) -> None:
    first = _service(store, tmp_path)  # two services, two runners: two processes' handles
    second = _service(store, tmp_path)
    pipeline_id = _create(first)
    _seed(tmp_path, pipeline_id, [json.dumps({"n": n}) for n in range(200)])
    ids = [d["id"] for d in first.dead_letters("p", {"limit": 1000})["dead_letters"]]
    replies: list[dict[str, Any]] = []
    start = threading.Barrier(4)

    def replay(service: PipelineService) -> None:
        start.wait(timeout=30)
        replies.append(service.replay_dead_letters("p", {"ids": ids}))

    threads = [threading.Thread(target=replay, args=(s,)) for s in (first, second) * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(replies) == 4
    assert sum(r["accepted"] for r in replies) == 200
    assert all(r["rejected"] == [] for r in replies)
    assert _events(tmp_path, pipeline_id) == list(range(200))
    assert first.dead_letters("p", {})["dead_letters"] == []


def test_dead_letters_follow_retention_seconds(service: PipelineService, tmp_path: Path,
                                              store: Store) -> None:
    kept_id = _create(service, "kept")
    aged_id = _create(service, "aged", retention={"seconds": 60})
    for pipeline_id in (kept_id, aged_id):
        _seed(tmp_path, pipeline_id, ['{"n": 1}'])
    buffers = BufferHandles(str(tmp_path))
    try:
        expire_retained(store, buffers, now=time.time() + 30)
        assert len(service.dead_letters("aged", {})["dead_letters"]) == 1
        expire_retained(store, buffers, now=time.time() + 120)
    finally:
        buffers.close()
    assert service.dead_letters("aged", {})["dead_letters"] == []
    assert len(service.dead_letters("kept", {})["dead_letters"]) == 1  # default: kept


def _mark(tmp_path: Path, pipeline_id: str, seq: int, at: float) -> None:
    """What a replay that died after its claim leaves: every row marked for a frame."""
    con = sqlite3.connect(buffer_path(str(tmp_path), pipeline_id))
    with con:
        con.execute("UPDATE dead_letters SET replay_seq = ?, replay_at = ?", (seq, at))
    con.close()


def test_a_replay_that_died_after_its_frame_was_synced_is_settled_as_accepted(
        service: PipelineService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline_id = _create(service)
    _seed(tmp_path, pipeline_id, ['{"n": 1}', '{"n": 2}'])
    real = dead_letter_store._settle

    def die_before_the_delete(con: Any, seq: int, at: float, *, accepted: bool) -> int:
        if accepted:
            raise SystemExit("killed between the frame's sync and the delete")
        return real(con, seq, at, accepted=accepted)

    monkeypatch.setattr(dead_letter_store, "_settle", die_before_the_delete)
    with pytest.raises(SystemExit):
        service.replay_dead_letters("p", {})
    monkeypatch.setattr(dead_letter_store, "_settle", real)
    assert len(service.dead_letters("p", {})["dead_letters"]) == 2  # still there, marked

    _buffer(tmp_path, pipeline_id).recover()  # the job manager opening the buffer
    assert service.dead_letters("p", {})["dead_letters"] == []
    assert service.replay_dead_letters("p", {}) == {"accepted": 0, "rejected": []}
    assert _events(tmp_path, pipeline_id) == [1, 2]


def test_a_replay_that_died_before_its_frame_leaves_dead_letters_to_replay(
        service: PipelineService, tmp_path: Path) -> None:
    pipeline_id = _create(service)
    _seed(tmp_path, pipeline_id, ['{"n": 1}', '{"n": 2}'])
    # Marked for frame 1, never written; an ingest then takes number 1 with its own time.
    _mark(tmp_path, pipeline_id, 1, 12345.0)
    assert service.ingest_json_lines("p", b'{"n": 3}\n')["accepted"] == 1
    reply = service.replay_dead_letters("p", {})  # settles first: the frame is not theirs
    assert reply == {"accepted": 2, "rejected": []}
    assert _events(tmp_path, pipeline_id) == [1, 2, 3]
