"""Compile a pipeline definition into Beam transforms.

* :mod:`~beam_pipelines.compiler.epoch_graph`: the bounded graph of one epoch
  (source → DuckDbSql → split partitions → WriteToFiles). Its transforms take
  everything they need as constructor arguments or element data, so they
  pickle and could run on any Beam worker.
* :mod:`~beam_pipelines.compiler.local_source`: ``ReadBufferRange``, the one
  local-only piece: it reads the epoch's rows from the SQLite buffer.
* :mod:`~beam_pipelines.compiler.plans`: ``PlanCache``, the compiled epoch
  plans the local runner keeps and re-runs, and ``run_epoch_pipeline``.

A streaming graph (Pub/Sub or Kafka → windows → the same transforms) will
sit beside the epoch graph as ``streaming_graph``.

Each name is imported from its own module; this package re-exports nothing,
so moving the local pieces to ``runners/local`` moves one import each.
"""
