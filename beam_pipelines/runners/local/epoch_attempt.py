"""One attempt at an epoch's files: the write phase of the epoch protocol, up to the commit.

A live epoch (:func:`beam_pipelines.runners.local.epochs.run_epoch`) and a
replay's (:func:`beam_pipelines.runners.local.replays.run_replay_epoch`)
write the same way and commit differently: :meth:`EpochAttempt.begin` places
the attempt's manifest and tells whether an earlier attempt may have left
files; :func:`write_epoch_attempt` opens the sealed sink, checks a local one
against its roots, discards what an earlier attempt left (as its manifest
names it), runs the epoch's plan, sizes and syncs the files, and on any
failure classifies it and discards what this attempt wrote. The caller
removes the scratch, commits, then removes the manifest. Files and scratch
are named by ``naming``: the pipeline id, or a replay's
``{pipeline id}-{replay id}``, so a replay never takes a live name.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from beam_pipelines.errors import EpochError
from beam_pipelines.model.definition import PipelineDefinition, Sink
from beam_pipelines.model.layout import is_local
from beam_pipelines.model.manifest import FileEntry, read_manifest
from beam_pipelines.runners.local.buffer import buffer_path
from beam_pipelines.runners.local.files import remove_file
from beam_pipelines.storage.errors import classify_epoch_error
from beam_pipelines.storage.files import discard_attempt, file_sizes, sync_local_files
from beam_pipelines.storage.process import apply_epoch_sink_environment
from beam_pipelines.storage.roots import allowed_local_roots, check_local_catalog, check_local_sink
from beam_pipelines.storage.sealing import SecretBox
from transforms.decode import arrow_schema

if TYPE_CHECKING:  # Beam is imported in the workers only, when an epoch runs
    from beam_pipelines.runners.local.plan_cache import PlanCache

__all__ = ["EpochAttempt", "attempt_manifest", "discard_epoch_attempt", "write_epoch_attempt"]


@dataclass(frozen=True)
class EpochAttempt:
    """What one attempt writes. ``pipeline_id``'s log holds the range ``(range_start,
    range_end]``; ``naming`` names the files and scratch; ``sink`` is where they go, its
    secrets still sealed; ``retried``: an earlier attempt may have left files to discard."""

    pipeline_id: str
    naming: str
    epoch: int
    range_start: int
    range_end: int
    planned_at: float
    sql: str
    definition: PipelineDefinition
    sink: Sink
    manifest_path: str
    retried: bool

    @classmethod
    def begin(cls, data_dir: str, pipeline_id: str, naming: str, epoch: int, range_start: int,
              range_end: int, planned_at: float, sql: str, definition: PipelineDefinition,
              sink: Sink, *, failed_before: bool) -> EpochAttempt:
        """The next attempt, at its manifest (``attempt_manifest``): ``retried`` if
        ``failed_before`` (the catalog counts an earlier attempt) or an earlier attempt's
        manifest is still there, whatever the catalog's count says."""
        manifest_path = attempt_manifest(data_dir, naming, epoch)
        return cls(pipeline_id, naming, epoch, range_start, range_end, planned_at, sql,
                   definition, sink, manifest_path,
                   failed_before or os.path.exists(manifest_path))


def attempt_manifest(data_dir: str, naming: str, epoch_no: int) -> str:
    """Where the manifest of an epoch's latest attempt is written. It stays until the
    epoch commits or the attempt is discarded: it names the files a failed attempt left."""
    scratch = os.path.join(data_dir, "tmp")
    os.makedirs(scratch, exist_ok=True)
    return os.path.join(scratch, f"{naming}-{epoch_no}.manifest.json")


def write_epoch_attempt(data_dir: str, attempt: EpochAttempt, *,
                        local_sink_roots: Sequence[str] | None, plans: PlanCache | None,
                        iceberg: bool) -> tuple[Sink, list[FileEntry]]:
    """Write the attempt's files; return the opened sink and the files, synced.

    ``local_sink_roots``: as ``run_epoch`` takes them. ``iceberg``: an Iceberg
    sink's files go to its table here (a live epoch's; a replay writes files
    only). Any failure raises an ``EpochError`` once what the attempt wrote
    is discarded.
    """
    from beam_pipelines.compiler.epoch_graph import EpochSpec
    from beam_pipelines.runners.local.plan_cache import run_epoch_pipeline

    naming, epoch_no, manifest_path = attempt.naming, attempt.epoch, attempt.manifest_path
    definition, sink = attempt.definition, attempt.sink
    failure: EpochError | None = None
    try:
        # The stored secrets are sealed: open them here, where the epoch writes.
        sink = SecretBox.for_data_dir(data_dir).open_sink(sink)
        roots = allowed_local_roots(data_dir, local_sink_roots)
        if is_local(sink.uri):
            check_local_sink(sink.uri, roots)
        if sink.table:
            check_local_catalog(sink.table.get("catalog_uri"), roots)
        if attempt.retried:  # an earlier attempt may have died without cleaning up (kill -9)
            discard_epoch_attempt(sink, naming, epoch_no, manifest_path)
        spec = EpochSpec(
            pipeline_id=naming, epoch=epoch_no, range_start=attempt.range_start,
            range_end=attempt.range_end, sql=attempt.sql,
            buffer_path=buffer_path(data_dir, attempt.pipeline_id),
            input_schema=arrow_schema(definition.schema, definition.unknown_fields),
            sink=sink, planned_at=attempt.planned_at, manifest_path=manifest_path,
            pipeline_options=apply_epoch_sink_environment(sink))  # may fail on the sink's credentials
        # An Iceberg sink appends before the store commits; a re-run adopts the
        # files its snapshot already holds (see beam_pipelines.storage.iceberg).
        table = _iceberg_table(sink, data_dir, attempt.pipeline_id) if iceberg else None
        appended = table.appended_files(epoch_no) if table is not None else None
        entries = run_epoch_pipeline(spec, plans) if appended is None else appended
        sizes = file_sizes(sink, [e.path for e in entries], epoch_no, naming)
        files = [e.located(sizes[e.path]["uri"], sizes[e.path]["bytes"]) for e in entries]
        sync_local_files(sink, [f.uri for f in files])
        if table is not None and appended is None:
            table.append(epoch_no, files)
    except Exception as err:  # noqa: BLE001 - every failure is reported, then retried
        # The message goes to last_error, the logs and webhooks: a code and a
        # short reason; no secrets, no server path, no chained original.
        failure = classify_epoch_error(epoch_no, sink, err)
    if failure is not None:
        # Writers the failed run left open are closed when collected, and closing
        # uploads a gs:// or s3:// object: let that happen now, then clean up.
        gc.collect()
        discard_epoch_attempt(sink, naming, epoch_no, manifest_path)
        raise failure from None
    return sink, files


def discard_epoch_attempt(sink: Sink, naming: str, epoch_no: int, manifest_path: str) -> None:
    """Remove an uncommitted attempt's scratch and final files, as its manifest names them
    (``naming``: the pipeline id, or a replay's ``{pipeline id}-{replay id}``).

    An Iceberg sink keeps its files: a snapshot may already hold them, and the
    next attempt adopts them (files no snapshot holds are invisible to readers).
    """
    paths: list[str] = []
    if not sink.table:
        try:
            paths = [entry.path for entry in read_manifest(manifest_path)]
        except (OSError, ValueError):
            paths = []  # no manifest: the attempt never got to its files
    discard_attempt(sink, naming, epoch_no, paths)
    remove_file(manifest_path)


def _iceberg_table(sink: Any, data_dir: str, pipeline_id: str) -> Any:
    if not sink.table:
        return None
    from beam_pipelines.storage.iceberg import EpochTable

    return EpochTable(sink, data_dir, pipeline_id)
