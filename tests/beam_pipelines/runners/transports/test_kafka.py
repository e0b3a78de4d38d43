"""``KafkaTransport`` against librdkafka's mock cluster, a Kafka-protocol broker in process.

The mock cluster (``test.mock.num.brokers``) listens on a real loopback port
and answers produce and fetch as a broker does, so what ``publish`` sends is
read back by a plain ``Consumer``. It has no controller: topic creation and
deletion (``ensure``/``remove``) time out there, so they are checked against a
real broker only (none runs on these machines).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from beam_pipelines.errors import DefinitionError, Unavailable
from beam_pipelines.runners.transports.kafka import KafkaTransport

confluent_kafka = pytest.importorskip("confluent_kafka",
                                      reason="pip install 'pipeline-do[flink]' (confluent-kafka)")


@pytest.fixture(scope="module")
def bootstrap() -> Iterator[str]:
    """A one-broker mock cluster; it lives as long as the client that made it."""
    owner = confluent_kafka.Producer({"test.mock.num.brokers": 1, "log_level": 3})
    brokers = owner.list_topics(timeout=10).brokers.values()
    yield ",".join(f"{b.host}:{b.port}" for b in brokers)
    owner.flush(5)


def _consume(bootstrap: str, topic: str, count: int) -> list[Any]:
    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": "test",
                                         "auto.offset.reset": "earliest", "log_level": 3})
    consumer.subscribe([topic])
    got: list[Any] = []
    try:
        for _ in range(60):  # bounded: 60 polls of at most 0.5 s
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                got.append(message)
            if len(got) >= count:
                break
    finally:
        consumer.close()
    return got


def test_publish_is_confirmed_and_read_back_with_its_headers(bootstrap: str) -> None:
    transport = KafkaTransport(bootstrap)
    payloads = [bytes(range(256)) * 50, b"second"]
    for i, payload in enumerate(payloads):
        transport.publish("pl_kafka", payload, {"batch_id": f"b{i}", "events": "1"}, 10)
    got = _consume(bootstrap, transport.topic("pl_kafka"), len(payloads))
    assert sorted(m.value() for m in got) == sorted(payloads)
    assert sorted(tuple(m.headers()) for m in got) == [
        (("batch_id", b"b0"), ("events", b"1")), (("batch_id", b"b1"), ("events", b"1"))]
    assert transport.topic("pl_kafka") == "pipeline-do-pl_kafka"


def test_a_publish_no_broker_confirms_is_unavailable() -> None:
    transport = KafkaTransport("127.0.0.1:1", config={"log_level": 0})
    with pytest.raises(Unavailable, match="did not confirm the publish within 1 s"):
        transport.publish("pl_nobody", b"x", {"batch_id": "b"}, 1.0)


def test_without_brokers_every_call_names_the_setting() -> None:
    transport = KafkaTransport(None)
    for call in (lambda: transport.ensure("pl_1"),
                 lambda: transport.publish("pl_1", b"", {}, 1),
                 lambda: transport.remove("pl_1")):
        with pytest.raises(DefinitionError, match="PIPELINE_DO_KAFKA_BOOTSTRAP"):
            call()


def test_a_topic_already_there_or_already_gone_is_no_error_and_others_name_the_reason(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``ensure``/``remove``'s wait on the admin client's future (a ``concurrent.futures``
    one), given the outcomes a real broker answers with."""
    from concurrent.futures import Future

    from beam_pipelines.runners.transports import kafka

    def settled(error: int | None) -> Future[None]:
        future: Future[None] = Future()
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(confluent_kafka.KafkaException(confluent_kafka.KafkaError(error)))
        return future

    kafka_error = confluent_kafka.KafkaError
    kafka._settle(settled(None), "create", done_already=kafka_error.TOPIC_ALREADY_EXISTS)
    kafka._settle(settled(kafka_error.TOPIC_ALREADY_EXISTS), "create",
                  done_already=kafka_error.TOPIC_ALREADY_EXISTS)
    kafka._settle(settled(kafka_error.UNKNOWN_TOPIC_OR_PART), "delete",
                  done_already=kafka_error.UNKNOWN_TOPIC_OR_PART)
    with pytest.raises(Unavailable) as caught:
        kafka._settle(settled(kafka_error.TOPIC_AUTHORIZATION_FAILED), "delete",
                      done_already=kafka_error.UNKNOWN_TOPIC_OR_PART)
    assert caught.value.message == ("could not delete the pipeline's Kafka topic: "
                                    "TOPIC_AUTHORIZATION_FAILED")
    monkeypatch.setattr(kafka, "ADMIN_TIMEOUT_SECONDS", 0.05)
    with pytest.raises(Unavailable, match="Kafka did not create the pipeline's topic within"):
        kafka._settle(Future(), "create", done_already=kafka_error.TOPIC_ALREADY_EXISTS)
