"""Compile a pipeline definition into Beam transforms.

* :mod:`~beam_pipelines.compiler.epoch_graph`: the bounded graph of one epoch
  (source → DuckDbSql → split partitions → WriteToFiles). Its transforms take
  everything they need as constructor arguments or element data, so they
  pickle and could run on any Beam worker; the source is given to it.

The local runner's pieces live with it: ``ReadBufferRange``, the one
local-only source, in :mod:`beam_pipelines.runners.local.buffer_source`, and
the compiled plans it keeps and re-runs in
:mod:`beam_pipelines.runners.local.plan_cache`.

* :mod:`~beam_pipelines.compiler.streaming_graph`: the same transforms as
  one unbounded job (Dataflow, Flink): transport → decode → de-duplicate →
  event-time windows → DuckDbSql → partitions → windowed files. Its sources
  are in :mod:`~beam_pipelines.compiler.streaming_sources` (Pub/Sub, Kafka),
  its last two stages in :mod:`~beam_pipelines.compiler.window_files`.

This package re-exports nothing: each name is imported from its own module.
"""
