"""Object storage for sinks (file://, gs://, s3:// through Beam), split by concern.

* :mod:`~beam_pipelines.storage.settings` — a sink's URI and options -> settings
  and Beam pipeline options (pure mapping);
* :mod:`~beam_pipelines.storage.redaction` — secrets out of messages (pure);
* :mod:`~beam_pipelines.storage.errors` — transient or terminal, and what a
  failed epoch reports;
* :mod:`~beam_pipelines.storage.files` — list, delete, measure, fsync, clean up,
  probe a sink;
* :mod:`~beam_pipelines.storage.process` — ALL process-wide state (environment,
  credential caches, retry patches, log hooks) and every function changing it;
* :mod:`~beam_pipelines.storage.iceberg` — the Iceberg table of a sink;
* :mod:`~beam_pipelines.storage.roots` — where local sinks may write;
* :mod:`~beam_pipelines.storage.sealing` — sink secrets sealed at rest.

Importing the package imports none of them; import the module you need.
"""
