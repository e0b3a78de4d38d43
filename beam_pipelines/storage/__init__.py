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

How Beam 2.77 reaches gs:// (read from the installed sources)
-------------------------------------------------------------
``GCSFileSystem`` makes a new ``GcsIO`` per call, whose
``gcsio.create_storage_client(options)`` always calls
``auth.get_service_credentials(options)``. That calls ``google.auth.default()``
under ``@retry.with_exponential_backoff(num_retries=4, initial_delay_secs=2)``
and caches the result **per process** (``auth._Credentials``). Without Google
credentials this backs off ~25 s (measured) before connecting anonymously.
``--no_auth`` does *not* help: only the Dataflow runner's API client reads it.
There is no pipeline option for the GCS endpoint either: the only way to
point Beam's client elsewhere is the environment variable
``STORAGE_EMULATOR_HOST`` read by google-cloud-storage's ``Client()``.
So for gs:// :func:`~beam_pipelines.storage.process.apply_sink_environment`:

1. sets ``os.environ["STORAGE_EMULATOR_HOST"] = options.endpoint_url`` (or
   restores the value the process started with when the sink has no endpoint);
2. fills Beam's credential cache itself, without back-off:
   anonymous (``None``) when the sink has an ``endpoint_url`` and no
   ``credentials_file`` (Beam then uses ``storage.Client.create_anonymous_client()``,
   which honours ``STORAGE_EMULATOR_HOST``); else the ``credentials_file`` /
   ``GOOGLE_APPLICATION_CREDENTIALS`` file; else one ``google.auth.default()``
   call (anonymous if it finds nothing);
3. :func:`~beam_pipelines.storage.process.configure_retries` (below).

Because that state is per process, a worker must call
:func:`~beam_pipelines.storage.process.apply_sink_environment` (or
:func:`~beam_pipelines.storage.process.beam_options_for_sink`, which does)
before *each* epoch and run one epoch at a time: Beam's
``FileSystems.set_options`` (done by ``Pipeline()``) is process-global too.
The FnApiRunner's default in-process worker sees this state; a multi-process
SDK worker would not. :func:`beam_pipelines.storage.files.check_sink_reachable`
changes none of it (own client, short timeouts), so it is safe in the web process.

Failing fast
------------
Left alone, an unreachable store stalls an epoch for minutes: gcsio retries
every call for 120 s (google-cloud-storage ``DEFAULT_RETRY``); Beam's
``S3IO`` list/copy/delete/stat calls retry 7 times from 5 s (~10 min), on top
of botocore's own retries. :func:`~beam_pipelines.storage.process.configure_retries`
(applied once by :func:`~beam_pipelines.storage.process.apply_sink_environment`,
:data:`~beam_pipelines.storage.process.DEFAULT_RETRY_DEADLINE` = 10 s) bounds
all three: gcsio's ``Retry`` deadline, a cap on each sleep of Beam's shared
retry ``Clock``, and ``AWS_RETRY_MODE=standard`` / ``AWS_MAX_ATTEMPTS=2`` in
the environment when unset. Against a closed port an epoch's write then fails
in ~2 s (gs, deadline 2 s) / ~0.3 s (s3), and
:func:`beam_pipelines.storage.errors.is_transient_storage_error` says ``True``.

Beam makes a new boto3 session per S3 call (~0.15 s each, re-reading the
botocore models); :func:`~beam_pipelines.storage.process.apply_sink_environment`
makes them share one loader (~0.02 s each), which halves a small s3:// epoch.
"""
