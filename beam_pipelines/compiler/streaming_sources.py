"""The streaming graph's transports as ``Read`` stages: Pub/Sub (Dataflow) and Kafka (Flink).

Both yield the graph's element contract, ``(batch_id, Arrow IPC bytes)``:

* Pub/Sub: the message data is the batch, its ``batch_id`` attribute the id
  (``transforms.batches.BATCH_ID``); a message without one (not published
  by pipeline.do's ingest) falls back to its Pub/Sub message id.
* Kafka: the record value is the batch, its key the batch id (UTF-8): the
  ingest producer must key each record by ``batch_id``; a record without a
  key is identified by the SHA-256 of its value.

Nothing is read or connected here: the sources are plain PTransforms that
pickle, expanded by the runner that runs the job.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import apache_beam as beam

from transforms.batches import BATCH_ID

__all__ = ["kafka_source", "pubsub_source"]


def _pubsub_pair(message: Any) -> Iterator[tuple[str, bytes]]:
    attributes = message.attributes or {}
    batch_id = attributes.get(BATCH_ID) or message.message_id
    yield str(batch_id), bytes(message.data)


def _kafka_pair(record: tuple[bytes | None, bytes]) -> Iterator[tuple[str, bytes]]:
    key, value = record
    data = bytes(value)
    # A record without a key (not from pipeline.do's producer) is its own
    # batch: identified by its content, so only an identical copy is dropped.
    yield (key.decode("utf-8") if key else "sha256:" + hashlib.sha256(data).hexdigest()), data


class _TransportRead(beam.PTransform):
    """A transport's read, built when the graph is expanded, and the step that
    turns its messages into ``(batch_id, bytes)``."""

    def __init__(self, make_read: Callable[[], beam.PTransform],
                 to_pair: Callable[[Any], Iterator[tuple[str, bytes]]]) -> None:
        super().__init__()
        self._make_read = make_read
        self._to_pair = to_pair

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return (pbegin
                | "ReadMessages" >> self._make_read()
                | "BatchIdAndData" >> beam.FlatMap(self._to_pair)
                    .with_output_types(tuple[str, bytes]))


def _read_pubsub(subscription_path: str, id_label: str | None,
                 timestamp_attribute: str | None) -> beam.PTransform:
    from apache_beam.io.gcp.pubsub import ReadFromPubSub

    return ReadFromPubSub(subscription=subscription_path, with_attributes=True,
                          id_label=id_label, timestamp_attribute=timestamp_attribute)


def _read_kafka(bootstrap: str, topic: str, expansion_service: str | None) -> beam.PTransform:
    from apache_beam.io.kafka import ReadFromKafka

    return ReadFromKafka(consumer_config={"bootstrap.servers": bootstrap,
                                          "auto.offset.reset": "earliest"},
                         topics=[topic], expansion_service=expansion_service)


def pubsub_source(subscription_path: str, id_label: str | None = BATCH_ID,
                  timestamp_attribute: str | None = None) -> beam.PTransform:
    """Read ``projects/P/subscriptions/S`` with attributes.

    ``id_label`` lets Dataflow drop a re-published batch at the read (its own
    exactly-once de-duplication by attribute). Beam's Python DirectRunner
    refuses any ``id_label`` ("DirectRunner: id_label is not supported for
    PubSub reads"): pass ``id_label=None`` there; the graph's ``Dedupe`` stage
    drops re-published batches on every runner anyway.

    ``timestamp_attribute`` names an attribute holding the batch's earliest
    event time (unix milliseconds or RFC 3339): the messages' timestamps, and
    so the job's watermark, then follow event time rather than publish time
    (see the graph's ``EventTime`` stage on lateness).
    """
    return _TransportRead(partial(_read_pubsub, subscription_path, id_label, timestamp_attribute),
                          _pubsub_pair)


def kafka_source(bootstrap: str, topic: str,
                 expansion_service: str | None = None) -> beam.PTransform:
    """Read ``topic`` from the Kafka cluster at ``bootstrap`` (Beam's cross-language IO).

    ``ReadFromKafka`` is a Java transform: it is expanded when the pipeline is
    built for a runner, by ``expansion_service`` (an address) or, when None,
    by Beam's default one, a jar downloaded from Maven Central. Nothing is
    built or contacted until then.
    """
    return _TransportRead(partial(_read_kafka, bootstrap, topic, expansion_service), _kafka_pair)
