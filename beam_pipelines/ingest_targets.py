"""The ingest path's cache of pipeline definitions, and how a schema change reaches it.

Ingest decodes every request against the pipeline's schema; reading the
definition from the store per request would cost more than the decode, so
each API process keeps it for a few seconds. ``transform`` may add fields to
the schema, and from the moment it returns every process must decode with
the new one (else a new field would be dropped or rejected after the user
was told it is accepted). So a schema change also replaces a small stamp file
per pipeline in the data dir, after the store committed it; a cached entry
is used only while the stamp is the one seen before the entry was read: one
``stat`` per request, and a changed stamp means a fresh read.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from beam_pipelines.model.definition import PipelineDefinition

__all__ = ["IngestTargets"]

_TTL_SECONDS = 5.0
_MAX_ENTRIES = 10_000
_Stamp = tuple[int, int] | None


class IngestTargets:
    """``ref`` → (definition, pipeline id), cached until the TTL or a schema change."""

    def __init__(self, data_dir: str,
                 lookup: Callable[[str], tuple[PipelineDefinition, str]]) -> None:
        self._dir = os.path.join(data_dir, "schema-stamps")
        self._lookup = lookup
        self._entries: dict[str, tuple[float, _Stamp, PipelineDefinition, str]] = {}
        self._lock = threading.Lock()

    def get(self, ref: str, *, fresh: bool = False) -> tuple[PipelineDefinition, str]:
        now = time.monotonic()
        cached = None if fresh else self._entries.get(ref)
        if cached is not None and cached[0] > now and cached[1] == self._stamp(cached[3]):
            return cached[2], cached[3]
        # The stamp is read before the definition (learning the id first if need be):
        # a change committed in between then shows as a changed stamp next time.
        pipeline_id = cached[3] if cached is not None else self._lookup(ref)[1]
        stamp = self._stamp(pipeline_id)
        definition, pipeline_id = self._lookup(ref)
        if len(self._entries) > _MAX_ENTRIES:
            self._entries.clear()
        self._entries[ref] = (now + _TTL_SECONDS, stamp, definition, pipeline_id)
        return definition, pipeline_id

    def schema_changed(self, pipeline_id: str) -> None:
        """Call after the store committed a new schema: every process reads it next."""
        os.makedirs(self._dir, exist_ok=True)
        path = os.path.join(self._dir, pipeline_id)
        scratch = f"{path}.{os.getpid()}.{threading.get_ident()}"
        with open(scratch, "w") as f:
            f.write(str(time.time()))
        os.replace(scratch, path)  # a new inode: a changed stamp even within one mtime tick
        self.forget(pipeline_id, keep_stamp=True)

    def forget(self, pipeline_id: str, *, keep_stamp: bool = False) -> None:
        """Drop the pipeline's entries (and, for a deleted pipeline, its stamp)."""
        with self._lock:
            self._entries = {k: v for k, v in self._entries.items() if v[3] != pipeline_id}
        if not keep_stamp:
            try:
                os.remove(os.path.join(self._dir, pipeline_id))
            except FileNotFoundError:
                pass

    def _stamp(self, pipeline_id: str) -> _Stamp:
        try:
            st = os.stat(os.path.join(self._dir, pipeline_id))
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns
