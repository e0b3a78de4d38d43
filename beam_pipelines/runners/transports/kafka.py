"""Kafka as a pipeline's transport: the source of its Flink job (Beam's ``ReadFromKafka``).

One topic per pipeline, ``topic_name(pipeline_id)``; the Flink job reads it
with its own consumer group, so no subscription is made here. Messages carry
the batch's attributes as Kafka headers (``batch_id`` first of all, which
the streaming read de-duplicates by).

The producer is idempotent with ``acks=all``: a publish returns only once
every in-sync replica has the message (its delivery report came back
without error), and librdkafka's own retries cannot write it twice. Like
the Pub/Sub clients, librdkafka's threads do not survive a fork: each
process makes its own producer and admin client on first use.

Tested against librdkafka's built-in mock cluster (``test.mock.num.brokers``),
which speaks the Kafka protocol for produce and fetch but has no
controller, so topic creation and deletion (``ensure``/``remove``) are
exercised against a real broker only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

from beam_pipelines.errors import DefinitionError, Unavailable
from beam_pipelines.runners.process_clients import ProcessClients
from beam_pipelines.runners.transports import TOPIC_PREFIX, topic_name
from transforms.batches import BATCH_ID, EVENT_TIME_MS

__all__ = ["KafkaTransport"]

ADMIN_TIMEOUT_SECONDS = 30.0
# librdkafka gives up on an undelivered message after this; a publish waits
# less (its ``timeout_s``) and the caller retries with the same batch id.
DELIVERY_TIMEOUT_MS = 30_000
_POLL_SECONDS = 0.05


class KafkaTransport:
    """``Transport`` on Kafka through confluent-kafka (librdkafka)."""

    def __init__(self, bootstrap: str | None, *, prefix: str = TOPIC_PREFIX,
                 partitions: int = 4, replication_factor: int = -1,
                 config: Mapping[str, Any] | None = None) -> None:
        """``bootstrap``: ``host:port[,...]`` (``PIPELINE_DO_KAFKA_BOOTSTRAP``); None refuses
        every call naming the setting. ``replication_factor`` -1 is the broker's default;
        ``config`` adds librdkafka settings (security, SASL...)."""
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.partitions = partitions
        self.replication_factor = replication_factor
        self.config = dict(config or {})
        self._clients_by_pid: ProcessClients[None, tuple[Any, Any]] = ProcessClients()

    def topic(self, pipeline_id: str) -> str:
        """What the Flink job reads (``ReadFromKafka(topics=[...])``)."""
        return topic_name(pipeline_id, self.prefix)

    # -- Transport --------------------------------------------------------------

    def ensure(self, pipeline_id: str) -> None:
        from confluent_kafka import KafkaError
        from confluent_kafka.admin import NewTopic

        _, admin = self._clients()
        name = self.topic(pipeline_id)
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=self.partitions,
                      replication_factor=self.replication_factor)],
            operation_timeout=ADMIN_TIMEOUT_SECONDS, request_timeout=ADMIN_TIMEOUT_SECONDS)
        _settle(futures[name], "create", done_already=KafkaError.TOPIC_ALREADY_EXISTS)

    def publish(self, pipeline_id: str, data: bytes, attributes: Mapping[str, str],
                timeout_s: float) -> None:
        """Produce one message and wait for its delivery report (``Unavailable`` if none)."""
        from confluent_kafka import KafkaException

        producer, _ = self._clients()
        delivered = threading.Event()
        outcome: list[Any] = []

        def on_delivery(error: Any, _message: Any) -> None:
            outcome.append(error)
            delivered.set()

        headers = [(key, value.encode()) for key, value in attributes.items()]
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                producer.produce(self.topic(pipeline_id), value=data, headers=headers,
                                 on_delivery=on_delivery, **_key_and_time(attributes))
                break
            except BufferError:  # the local queue is full: serve reports, then try again
                if time.monotonic() > deadline:
                    raise Unavailable("the Kafka producer's queue stayed full for "
                                      f"{timeout_s:g} s", {"transport": "kafka"}) from None
                producer.poll(_POLL_SECONDS)
            except KafkaException as err:
                raise _unavailable("Kafka refused the publish", err) from None
        # Delivery reports are served by whichever thread polls: each waits for its own.
        while not delivered.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Unavailable(f"Kafka did not confirm the publish within {timeout_s:g} s",
                                  {"transport": "kafka"})
            producer.poll(min(_POLL_SECONDS, remaining))
        if outcome[0] is not None:
            raise Unavailable(f"Kafka refused the publish: {outcome[0].name()}",
                              {"transport": "kafka"})

    def remove(self, pipeline_id: str) -> None:
        from confluent_kafka import KafkaError

        _, admin = self._clients()
        name = self.topic(pipeline_id)
        futures = admin.delete_topics([name], operation_timeout=ADMIN_TIMEOUT_SECONDS,
                                      request_timeout=ADMIN_TIMEOUT_SECONDS)
        _settle(futures[name], "delete", done_already=KafkaError.UNKNOWN_TOPIC_OR_PART)

    # -- clients ----------------------------------------------------------------

    def _clients(self) -> tuple[Any, Any]:
        """This process's producer and admin client (made on first use after a fork)."""
        bootstrap = self.bootstrap
        if not bootstrap:
            raise DefinitionError("runner.options.kafka_bootstrap", "the Kafka transport needs "
                                  "brokers: set PIPELINE_DO_KAFKA_BOOTSTRAP on the server")
        return self._clients_by_pid.get(None, lambda: self._connect(bootstrap))

    def _connect(self, bootstrap: str) -> tuple[Any, Any]:
        try:
            from confluent_kafka import Producer
            from confluent_kafka.admin import AdminClient
        except ImportError:
            raise DefinitionError("runner.type", "the Kafka transport needs "
                                  "confluent-kafka: pip install 'pipeline-do[flink]'") from None
        common = {"bootstrap.servers": bootstrap, **self.config}
        producer = Producer({**common, "acks": "all", "enable.idempotence": True,
                             "linger.ms": 0, "delivery.timeout.ms": DELIVERY_TIMEOUT_MS})
        return producer, AdminClient(common)


def _settle(future: Any, verb: str, *, done_already: int) -> None:
    """Wait for a topic's creation or deletion; the error ``done_already`` (the topic
    exists already, or is gone already) is the outcome wanted, so it is no error."""
    from confluent_kafka import KafkaException

    try:
        future.result(timeout=ADMIN_TIMEOUT_SECONDS + 5)
    except KafkaException as err:
        if err.args[0].code() != done_already:
            raise _unavailable(f"could not {verb} the pipeline's Kafka topic", err) from None
    except TimeoutError:
        raise Unavailable(f"Kafka did not {verb} the pipeline's topic within "
                          f"{ADMIN_TIMEOUT_SECONDS:g} s", {"transport": "kafka"}) from None


def _unavailable(what: str, err: Exception) -> Unavailable:
    """``err``'s librdkafka error name (``_TRANSPORT``, ``TOPIC_AUTHORIZATION_FAILED``...)."""
    error: Any = err.args[0] if err.args else None
    reason = error.name() if hasattr(error, "name") else type(err).__name__
    return Unavailable(f"{what}: {reason}", {"transport": "kafka"})


def _key_and_time(attributes: Mapping[str, str]) -> dict[str, Any]:
    """The record key is the batch id (the streaming read de-duplicates by it) and its
    timestamp the batch's earliest event time (the read's watermark follows it)."""
    out: dict[str, Any] = {}
    if BATCH_ID in attributes:
        out["key"] = attributes[BATCH_ID].encode()
    if EVENT_TIME_MS in attributes:
        out["timestamp"] = int(attributes[EVENT_TIME_MS])
    return out
