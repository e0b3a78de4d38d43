"""Pipeline operations: the lifecycle's operations and the ingest path, with no HTTP in it.

The statuses and every move between them are one table in
``beam_pipelines.model.lifecycle`` (``created → running ⇄ paused``, ``stopping`` while the
job manager flushes, ``stopped``, and ``failed`` when an epoch used up its
attempts). Ingest is accepted in every status. Each transition is one store
transaction, so the API's processes and the job manager agree on it.

The engine's part of every operation is a ``Runner``'s (``beam_pipelines.runners``),
picked by the definition's ``runner.type`` from the registry given to the
service: the service checks the lifecycle, keeps the catalog (definitions, SQL
versions, logs) and announces events; it never touches a buffer or a scheduler.
What is not orchestration lives beside it: ``sql_versions`` (planning, dry runs,
the stored versions), ``model.schema_evolution`` (what a transform's schema may
change), ``dead_letters`` (the dead-letter operations) and ``views`` (the
pipeline's public shape, the stop summary, logs).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import delete, select

from beam_pipelines import dead_letters, replay, sql_versions, views
from beam_pipelines.catalog.store import EpochFile, LogEntry, PipelineRow, SqlVersion, Store
from beam_pipelines.errors import ConflictError, DefinitionError, NotFoundError
from beam_pipelines.ingest_targets import IngestTargets
from beam_pipelines.model.definition import (
    PipelineDefinition,
    definition_from_dict,
    parse_definition,
)
from beam_pipelines.model.lifecycle import OPERATIONS, SCHEDULED, Status
from beam_pipelines.model.schema_evolution import (
    added_fields,
    check_schema_unchanged,
    transformed,
)
from beam_pipelines.model.times import iso
from beam_pipelines.runners.base import Runner, RunnerEvents, RunnerRegistry
from beam_pipelines.runners.engines import distributed_runners
from beam_pipelines.runners.local.runner import LocalRunner
from beam_pipelines.storage.roots import allowed_local_roots
from beam_pipelines.storage.sealing import SecretBox
from beam_pipelines.views import summarize_stop
from transforms.decode import DecodedBatch, arrow_schema, decode_json_lines, decode_objects

__all__ = ["PipelineService", "summarize_stop"]
MAX_RECORD_BYTES = 1024 * 1024
RECENT_FILES = 100  # files in a ``get`` reply: the manifest of the latest epochs


class PipelineService:
    """What the API calls; every method takes a pipeline id or name."""

    def __init__(self, store: Store, data_dir: str, *, default_sink_uri: str,
                 local_sink_roots: Sequence[str] | None = None,
                 secret_box: SecretBox | None = None,
                 on_event: Callable[[str, dict[str, Any]], None] | None = None,
                 runners: RunnerRegistry | None = None,
                 events: RunnerEvents | None = None) -> None:
        """``local_sink_roots``: where local sinks may write besides ``<data dir>/lake``
        (default: ``PIPELINE_DO_LOCAL_SINK_ROOTS``); ``secret_box`` seals sink secrets
        before they are stored (default: the data dir's, see ``beam_pipelines.storage.sealing``);
        ``runners``: the engines by ``runner.type`` (default: ``direct``, the local runner,
        and each distributed engine this installation has, ``runners.engines``);
        ``events`` hears of the moves those make while a ``stop`` waits."""
        self.store = store
        self.data_dir = data_dir
        self.default_sink_uri = default_sink_uri
        self.local_sink_roots = allowed_local_roots(data_dir, local_sink_roots)
        self._secrets = secret_box or SecretBox.for_data_dir(data_dir)
        self._on_event = on_event or (lambda _type, _data: None)
        self.runners = runners or RunnerRegistry({
            "direct": LocalRunner(store, data_dir),
            **distributed_runners(store, data_dir, events=events, secret_box=self._secrets)})
        self._targets = IngestTargets(data_dir, self._definition)

    # -- definition -------------------------------------------------------

    def create(self, params: dict[str, Any]) -> dict[str, Any]:
        """Make the pipeline; with ``dry_run`` only check the definition and plan its SQL
        (a form checks as the user types), answering like ``transform``'s dry run."""
        dry_run = sql_versions.dry_run_flag(params)
        definition = parse_definition(params, default_sink_uri=self.default_sink_uri,
                                      local_sink_roots=self.local_sink_roots)
        output_schema = self._plan(definition, definition.sql)
        if dry_run:
            return {"dry_run": True, "output_schema": output_schema, "rows": []}
        now = time.time()
        pipeline_id = "pl_" + secrets.token_hex(8)
        with self.store.session() as s:
            if s.scalars(select(PipelineRow.id).where(PipelineRow.name == definition.name)).first():
                raise ConflictError(f"a pipeline named {definition.name!r} already exists",
                                    {"field": "name"})
            row = PipelineRow(id=pipeline_id, name=definition.name, status=Status.CREATED, version=1,
                              definition=self._stored(definition), created_at=now,
                              updated_at=now)
            s.add(row)
            s.add(sql_versions.version_row(pipeline_id, 1, definition, output_schema, now))
            public = views.public(row)
            self._holding(definition).create(pipeline_id)
        self.store.log(pipeline_id, "info", f"pipeline {definition.name} created")
        self._on_event("pipeline.created", public)
        return public

    def transform(self, ref: str, params: dict[str, Any]) -> dict[str, Any]:
        """New SQL and/or optional fields added to the schema (``schema``: the whole new
        field list, see ``model.schema_evolution``), as one new version from the next epoch.

        Without ``sql`` the current SQL is planned against the new schema. From the
        commit on, ingest decodes with the new schema (``IngestTargets``).
        """
        dry_run = sql_versions.dry_run_flag(params)
        with self.store.session() as s:
            row = self._row(s, ref)
            current = definition_from_dict(row.definition_dict())
            definition = transformed(current, params.get("sql"), params.get("schema"))
            pipeline_id = row.id
        schema_changed = definition.schema != current.schema
        output_schema = self._plan(definition, definition.sql)
        if dry_run:
            limit = sql_versions.dry_run_limit(params)
            input_schema = arrow_schema(definition.schema, definition.unknown_fields)
            sample = self._holding(definition).sample(pipeline_id, limit, input_schema)
            return sql_versions.dry_run(definition, sample, limit, output_schema)
        now = time.time()
        with self.store.session() as s:
            row = self._row(s, ref)
            check_schema_unchanged(definition_from_dict(row.definition_dict()), current)
            row.version += 1
            row.definition = self._stored(definition)
            row.updated_at = now
            s.add(sql_versions.version_row(row.id, row.version, definition, output_schema, now))
            version = row.version
            self._holding(definition).transform(s, row, version)
        if schema_changed:
            self._targets.schema_changed(pipeline_id)
            self.store.log(pipeline_id, "info", f"schema version {version} adds optional "
                           f"fields {', '.join(added_fields(current, definition))}: ingest "
                           "accepts them from now on")
        self.store.log(pipeline_id, "info", f"sql version {version} takes effect at the next epoch "
                       "and at the next attempt of an epoch that failed")
        result = {"version": version, "output_schema": output_schema}
        self._on_event("pipeline.transformed", {"id": pipeline_id, **result})
        return result

    def _plan(self, definition: PipelineDefinition, sql: str) -> list[dict[str, str]]:
        return sql_versions.plan(definition, sql)

    # -- reading ------------------------------------------------------------

    def get(self, ref: str) -> dict[str, Any]:
        """The pipeline, its counters, and the manifest of its most recent files."""
        with self.store.reading() as s:  # one snapshot: counters and files agree
            row = self._row(s, ref)
            public = views.public(row)
            counters = self._counters(row)
            recent = s.scalars(select(EpochFile).where(EpochFile.pipeline_id == row.id)
                               .order_by(EpochFile.id.desc()).limit(RECENT_FILES)).all()
            files = [f.public() for f in reversed(recent)]
        return {**public, **counters, "files": files}

    def versions(self, ref: str) -> dict[str, Any]:
        """Every SQL version of the pipeline, oldest first, as ``transform`` made them,
        each with the schema it was planned against."""
        with self.store.reading() as s:
            return {"versions": sql_versions.list_versions(s, self._row(s, ref).id)}

    def list_all(self) -> dict[str, Any]:
        with self.store.reading() as s:
            rows = s.scalars(select(PipelineRow).order_by(PipelineRow.created_at)).all()
            return {"pipelines": [views.public(r) for r in rows]}

    def counters(self, pipeline_id: str) -> dict[str, Any]:
        with self.store.reading() as s:
            row = s.get(PipelineRow, pipeline_id)
            if row is None:
                raise NotFoundError(f"no pipeline {pipeline_id!r}")
            return self._counters(row)

    def _counters(self, row: PipelineRow) -> dict[str, Any]:
        counters = {
            "status": row.status, "events_out": row.events_out, "bytes_out": row.bytes_out,
            "files_written": row.files_written, "epochs": row.epochs_committed,
            "errors": row.errors, "last_error": row.last_error,
            "last_commit_at": iso(row.last_commit_at),
        }
        runner = self.runners.holding(row.definition_dict()["runner"]["type"])
        counters.update(runner.ingest_counters(row.id, row.committed_seq))
        return counters

    def monitor(self, ref: str, window_seconds: float) -> dict[str, Any]:
        definition, pipeline_id = self._definition(ref)
        return self._holding(definition).monitor(pipeline_id, self.counters(pipeline_id),
                                                 window_seconds)

    def logs(self, ref: str, params: dict[str, Any]) -> dict[str, Any]:
        query = views.parse_log_query(params)
        with self.store.reading() as s:
            return views.logs(s, self._row(s, ref).id, query)

    # -- lifecycle ----------------------------------------------------------

    def transition(self, ref: str, operation: str) -> dict[str, Any]:
        allowed, target = OPERATIONS[operation]
        now = time.time()
        with self.store.session() as s:
            row = self._row(s, ref)
            if row.status not in allowed:
                raise ConflictError(f"cannot {operation} a pipeline that is {row.status}: "
                                    f"{operation} needs status " + " or ".join(allowed),
                                    {"status": row.status})
            runner_type = row.definition_dict()["runner"]["type"]
            runner = (self.runners.run(runner_type) if target in SCHEDULED
                      else self.runners.holding(runner_type))
            previous = row.status
            move = {"start": runner.start, "pause": runner.pause, "resume": runner.resume,
                    "stop": runner.stop}[operation]
            move(s, row, target)
            row.updated_at = now
            public = views.public(row)
        if previous == target:
            return public  # stop while stopping: the same flush, waited for again
        self.store.log(public["id"], "info", f"pipeline {operation}: status {target}")
        if target != Status.STOPPING:
            self._on_event(f"pipeline.{_PAST[operation]}", public)
        return public

    def stop(self, ref: str, timeout_s: float) -> dict[str, Any]:
        """Ask for a flush, then wait until the job manager reports ``stopped``.

        ``pipeline.stopped`` is announced by the job manager when the flush
        ends, so a stop whose caller timed out is still announced. A timed-out
        stop leaves ``stopping``: ``stop`` waits again, ``resume`` goes back to
        ``running``. An epoch that fails for good during the flush makes the
        pipeline ``failed``, which ends the wait with a conflict.
        """
        stopping = self.transition(ref, "stop")
        runner = self.runners.run(stopping["runner"]["type"])
        try:
            runner.wait_stopped(stopping["id"], timeout_s)
        except NotFoundError:
            raise NotFoundError(f"pipeline {ref!r} was deleted while stopping") from None
        return summarize_stop(self.store, stopping["id"])

    def delete(self, ref: str) -> dict[str, Any]:
        with self.store.session() as s:
            row = self._row(s, ref)
            pipeline_id, name = row.id, row.name
            runner = self.runners.holding(row.definition_dict()["runner"]["type"])
            runner.delete(s, row)
            for model in (SqlVersion, LogEntry):
                s.execute(delete(model).where(model.pipeline_id == pipeline_id))
            s.delete(row)
        self._targets.forget(pipeline_id)
        runner.release(pipeline_id)
        self._on_event("pipeline.deleted", {"id": pipeline_id, "name": name})
        return {"deleted": True}

    # -- ingest -------------------------------------------------------------

    def ingest_objects(self, ref: str, events: list[Any], *, body_bytes: int,
                       too_deep: Mapping[int, str] | None = None) -> dict[str, Any]:
        """Ingest events parsed from a JSON body; ``too_deep`` lists, by index, the
        records left out of ``events`` as nested too deep (see ``load_json_events``)."""
        def decode(definition: PipelineDefinition) -> DecodedBatch:
            return decode_objects(events, definition.schema, definition.event_time_field,
                                  now=datetime.now(timezone.utc),
                                  max_record_bytes=MAX_RECORD_BYTES, body_bytes=body_bytes,
                                  unknown_fields=definition.unknown_fields, too_deep=too_deep)

        return self._ingest(ref, decode, raw_bytes=0)

    def ingest_json_lines(self, ref: str, body: bytes) -> dict[str, Any]:
        def decode(definition: PipelineDefinition) -> DecodedBatch:
            return decode_json_lines(body, definition.schema, definition.event_time_field,
                                     now=datetime.now(timezone.utc),
                                     max_record_bytes=MAX_RECORD_BYTES,
                                     unknown_fields=definition.unknown_fields)

        return self._ingest(ref, decode, raw_bytes=len(body))

    def _ingest(self, ref: str, decode: Callable[[PipelineDefinition], DecodedBatch], *,
                raw_bytes: int) -> dict[str, Any]:
        """Decode against the pipeline's schema and append durably.

        The lookup is cached briefly (``IngestTargets``: a schema change is seen at
        once); a deleted pipeline's buffer refuses the append itself, and a stale
        entry is then dropped and looked up again.
        """
        for attempt in (1, 2):
            definition, pipeline_id = self._targets.get(ref, fresh=attempt == 2)
            decoded = decode(definition)
            rejected = [(r.index, r.code, r.message, r.record) for r in decoded.rejected]
            try:
                self._holding(definition).ingest(pipeline_id, decoded.table, rejected,
                                                 raw_bytes=raw_bytes or decoded.table.nbytes)
            except NotFoundError:
                if attempt == 2:
                    raise NotFoundError(f"no pipeline {ref!r}", {"pipeline": ref}) from None
                continue
            reply: dict[str, Any] = {"accepted": decoded.table.num_rows,
                                     "rejected": [r.public() for r in decoded.rejected]}
            if decoded.unknown_fields:
                reply["unknown_fields"] = decoded.unknown_fields
            return reply
        raise AssertionError("unreachable")

    # -- dead letters ---------------------------------------------------------

    def dead_letters(self, ref: str, params: dict[str, Any]) -> dict[str, Any]:
        """A page of the pipeline's rejected records, newest first (``dead_letters``)."""
        query = dead_letters.parse_query(params, allow_ids=False)
        definition, pipeline_id = self._definition(ref)
        return dead_letters.page(self._holding(definition), pipeline_id, query)

    def replay_dead_letters(self, ref: str, params: dict[str, Any]) -> dict[str, Any]:
        """Put the selected dead letters (``ids``, or the listing's filters) through the
        pipeline's current schema again, in one decode: each is accepted once (as an
        ingest: appended, counted in events_in, no longer a dead letter) or rejected
        again with its new reason."""
        query = dead_letters.parse_query(params, allow_ids=True)
        definition, pipeline_id = self._definition(ref)
        accepted, reply = dead_letters.replay(self._holding(definition), definition, pipeline_id,
                                              query, max_record_bytes=MAX_RECORD_BYTES)
        if accepted:
            self.store.log(pipeline_id, "info", f"{accepted} dead letters replayed and accepted")
        return reply

    # -- replay ---------------------------------------------------------------

    def replay(self, ref: str, params: dict[str, Any]) -> dict[str, Any]:
        """Run a retained range again through a SQL version or new SQL, into the sink or
        a prefix beside it, as epochs of its own (``beam_pipelines.replay``)."""
        definition, pipeline_id = self._definition(ref)
        return replay.start_replay(self.store, self.data_dir, pipeline_id, definition, params,
                                   plan_sql=self._plan, preview=sql_versions.preview_rows,
                                   local_sink_roots=self.local_sink_roots)

    # -- helpers ------------------------------------------------------------

    def _definition(self, ref: str) -> tuple[PipelineDefinition, str]:
        with self.store.reading() as s:
            row = self._row(s, ref)
            return definition_from_dict(row.definition_dict()), row.id

    def _stored(self, definition: PipelineDefinition) -> str:
        """The definition as the store keeps it: every write goes through here, sealed."""
        return json.dumps(self._secrets.seal_definition(definition.to_dict()))

    def _row(self, session: Any, ref: str) -> PipelineRow:
        if not isinstance(ref, str) or not ref:
            raise DefinitionError("pipeline_id", "name the pipeline with pipeline_id or name")
        row = self.store.pipeline_by_ref(session, ref)
        if row is None:
            raise NotFoundError(f"no pipeline {ref!r}", {"pipeline": ref})
        return row

    def _holding(self, definition: PipelineDefinition) -> Runner:
        """The runner that holds the pipeline's events (see ``RunnerRegistry``)."""
        return self.runners.holding(definition.runner.type)


_PAST = {"start": "started", "pause": "paused", "resume": "resumed", "stop": "stopped"}
