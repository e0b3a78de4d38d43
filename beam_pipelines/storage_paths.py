"""Where an epoch's files live, and what the store says about them.

``pipeline_options`` turns a sink's ``options`` into Beam pipeline options
for its filesystem; ``file_sizes`` checks after a run that every file of
the manifest exists, exactly once, and measures it. Beam's ``fileio`` only
logs a failed rename, so this check is what keeps a missing file from
being committed.
"""

from __future__ import annotations

from typing import Any

from beam_pipelines.definition import Sink

__all__ = ["file_sizes", "join_uri", "pipeline_options"]


def join_uri(root: str, relative: str) -> str:
    return f"{root.rstrip('/')}/{relative}"


def pipeline_options(sink: Sink) -> dict[str, Any]:
    if "://" not in sink.uri:
        return {}
    from beam_pipelines.storage import pipeline_options_for_sink

    return pipeline_options_for_sink(sink.uri, sink.options)


def file_sizes(sink: Sink, relative_paths: list[str], epoch: int) -> dict[str, Any]:
    """Map each relative path to ``{"uri", "bytes"}``; fail if one is missing."""
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    if "://" in sink.uri:
        FileSystems.set_options(PipelineOptions(flags=[], **pipeline_options(sink)))
    uris = [join_uri(sink.uri, p) for p in relative_paths]
    results = FileSystems.match(uris) if uris else []
    sizes: dict[str, Any] = {}
    for relative, uri, result in zip(relative_paths, uris, results):
        found = [m for m in result.metadata_list if m.path.rstrip("/").endswith(relative)]
        if len(found) != 1:
            raise FileNotFoundError(f"epoch {epoch} output {uri} was not written")
        sizes[relative] = {"uri": uri, "bytes": found[0].size_in_bytes}
    # A second shard for one partition would mean rows the manifest misses.
    extra = [join_uri(sink.uri, p).replace("-00000.", "-00001.") for p in relative_paths]
    for result in FileSystems.match(extra) if extra else []:
        if result.metadata_list:
            raise RuntimeError(f"epoch {epoch} wrote more than one shard for a partition")
    return sizes
