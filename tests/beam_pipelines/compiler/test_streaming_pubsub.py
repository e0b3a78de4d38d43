"""The streaming graph for real: the Pub/Sub emulator in, the GCS server out.

Beam's streaming DirectRunner (the BundleBasedDirectRunner with
``streaming=True``) reads the emulator's subscription, and the graph writes
windowed Parquet files to ``gs://`` on the local GCS server; every file is
read back with DuckDB. Everything runs on loopback, started here.

Two things of the DirectRunner shape this test (see the module's pitfalls):
its Pub/Sub read refuses ``id_label``, so the graph's ``Dedupe`` stage alone
drops the re-published batch; and its watermark is the wall clock at the end
of each pull, a pull waiting up to 30 s for messages, so after the last
window ends the test publishes one empty batch (a "tick") to end the wait,
and another before ``cancel()``, which waits for the pull in progress.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from beam_pipelines.compiler.streaming_graph import build_streaming_pipeline, pubsub_source
from beam_pipelines.model.layout import window_file_name
from beam_pipelines.storage import process
from tests import servers
from tests.beam_pipelines.compiler.stream_fixtures import PIPELINE_ID, batch, read_files, stream_spec
from tests.stores import Store, running_store
from transforms.batches import BATCH_ID, encode_batch
from transforms.decode import EVENT_TIME, INGESTED_AT, TIMESTAMP

pytestmark = [
    pytest.mark.pubsub,
    pytest.mark.skipif(not servers.PubSubEmulator.available(),
                       reason="the Pub/Sub emulator is not installed (Debian package "
                              f"google-cloud-cli-pubsub-emulator: {servers.PUBSUB_EMULATOR})"),
]

WINDOW_SECONDS = 2.0
PREFIX = "stream"
LATENESS_SECONDS = 60.0
RUN_SECONDS = 90.0  # the bound on the job's run; it normally finishes in a few seconds


@pytest.fixture(scope="module")
def gcs() -> Iterator[Store]:
    with running_store("gs") as store:
        yield store


@pytest.fixture
def topic(pubsub_emulator: servers.PubSubEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``(publisher, topic path, subscription path)`` on the pubsub_emulator."""
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator.host_port)
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic_path = publisher.topic_path(pubsub_emulator.project, "pipeline-events")
    subscription = subscriber.subscription_path(pubsub_emulator.project, "pipeline-events-job")
    publisher.create_topic(name=topic_path)
    subscriber.create_subscription(name=subscription, topic=topic_path)
    try:
        yield publisher, topic_path, subscription
    finally:
        subscriber.delete_subscription(subscription=subscription)
        publisher.delete_topic(topic=topic_path)
        subscriber.close()


def _windows_ahead(count: int) -> list[datetime]:
    """The starts of ``count`` windows, the first beginning at least 2 s from now."""
    first = (int(time.time() // WINDOW_SECONDS) + 2) * WINDOW_SECONDS
    return [datetime.fromtimestamp(first + i * WINDOW_SECONDS, timezone.utc) for i in range(count)]


def _expected(rows: list[tuple[int, datetime]]) -> dict[str, list[tuple[Any, ...]]]:
    """The rows the graph must write per window and partition (n=13 filtered out)."""
    files: dict[str, list[tuple[Any, ...]]] = {}
    for n, t in sorted(rows):
        if n == 13:
            continue
        k = "x" if n % 2 == 0 else "y"
        start = datetime.fromtimestamp(t.timestamp() // WINDOW_SECONDS * WINDOW_SECONDS,
                                       timezone.utc)
        name = window_file_name(PIPELINE_ID, start, 0, 0, "parquet", f"m={t:%M}/k={k}")
        files.setdefault(_any_pane(name), []).append(
            (n, k, n * 10, int(t.timestamp() * 1_000_000)))
    return files


_PANE = re.compile(r"-p\d{3}-")


def _any_pane(name: str) -> str:
    return _PANE.sub("-p*-", name)


def _by_window(files: dict[str, list[tuple[Any, ...]]]) -> dict[str, list[tuple[Any, ...]]]:
    """The files' rows merged per window and partition, whatever pane wrote them.

    A message pulled late (a slow start on a loaded machine) lands in a late
    pane's file next to the on-time one; either way each row must be there once.
    """
    merged: dict[str, list[tuple[Any, ...]]] = {}
    for name, rows in files.items():
        merged.setdefault(_any_pane(name), []).extend(rows)
    return {name: sorted(rows) for name, rows in merged.items()}


def _publish(publisher: Any, topic_path: str, batch_id: str, data: bytes) -> None:
    publisher.publish(topic_path, data, **{BATCH_ID: batch_id}).result(timeout=30)


def _empty_batch() -> bytes:
    return encode_batch(pa.table({"n": pa.array([], pa.int64()), "k": pa.array([], pa.string()),
                                  INGESTED_AT: pa.array([], TIMESTAMP),
                                  EVENT_TIME: pa.array([], TIMESTAMP)}))


def _read_back(gcs: Store, expected: dict[str, list[tuple[Any, ...]]],
               seconds: float) -> dict[str, list[tuple[Any, ...]]]:
    """Every final file's rows (``read_files``), polled until they hold ``expected``."""
    deadline = time.monotonic() + seconds
    while True:
        with tempfile.TemporaryDirectory() as local:
            gcs.download(PREFIX, local, suffix=".parquet")
            files = read_files(Path(local))
        if _by_window(files) == expected or time.monotonic() > deadline:
            return files
        time.sleep(0.5)


def test_events_come_out_per_window_exactly_once(topic: Any, gcs: Store) -> None:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import StandardOptions
    from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner

    publisher, topic_path, subscription = topic
    uri = gcs.uri(PREFIX)
    spec = stream_spec(uri, window_seconds=WINDOW_SECONDS, options=gcs.options,
                       partition_by="m=%M/k={k}", allowed_lateness_seconds=LATENESS_SECONDS)
    options = process.beam_options_for_sink(uri, gcs.options)
    options.view_as(StandardOptions).streaming = True
    pipeline = beam.Pipeline(runner=BundleBasedDirectRunner(), options=options)
    build_streaming_pipeline(pipeline, spec, pubsub_source(subscription, id_label=None))
    result = pipeline.run()  # returns at once: the executor runs in background threads
    try:
        w = _windows_ahead(3)
        now = datetime.now(timezone.utc)
        first = [(1, w[0]), (2, w[0] + timedelta(seconds=0.5)), (3, w[1] + timedelta(seconds=1))]
        second = [(4, w[1]), (13, w[1] + timedelta(seconds=0.2)), (5, w[2] + timedelta(seconds=1.5))]
        third = [(6, w[2] + timedelta(seconds=0.1))]
        _publish(publisher, topic_path, "batch-1", batch(first, ingested=now))
        _publish(publisher, topic_path, "batch-2", batch(second, ingested=now))
        _publish(publisher, topic_path, "batch-1", batch(first, ingested=now))  # re-published
        _publish(publisher, topic_path, "batch-3", batch(third, ingested=now))
        expected = _expected(first + second + third)
        time.sleep(max(0.0, (w[2] + timedelta(seconds=WINDOW_SECONDS + 0.5)
                             - datetime.now(timezone.utc)).total_seconds()))
        _publish(publisher, topic_path, "tick", _empty_batch())  # the last window has ended
        files = _read_back(gcs, expected, RUN_SECONDS)
    finally:
        # cancel() joins the runner's one worker thread, which may be in a
        # pull waiting up to 30 s for a message: give it one.
        _publish(publisher, topic_path, "stop", _empty_batch())
        result.cancel()
    assert _by_window(files) == expected
    assert all(_PANE.search(name) for name in files), sorted(files)
    # Every staged file was renamed into place: none is left in the scratch area.
    assert [k for k in gcs.objects(PREFIX) if k.startswith("_tmp/")] == []
