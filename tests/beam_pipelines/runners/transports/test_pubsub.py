"""``PubSubTransport`` on the real Pub/Sub emulator, read back with google-cloud-pubsub."""

from __future__ import annotations

import os
import signal
import time

import pytest

from beam_pipelines.errors import DefinitionError, Unavailable
from beam_pipelines.runners.transports import topic_name
from beam_pipelines.runners.transports.pubsub import PubSubTransport
from tests.servers import PubSubEmulator

pytestmark = pytest.mark.pubsub

PROJECT = "test-project"


@pytest.fixture
def transport(pubsub_emulator: PubSubEmulator, monkeypatch: pytest.MonkeyPatch) -> PubSubTransport:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator.host_port)
    return PubSubTransport(PROJECT)


def _pull_all(transport: PubSubTransport, pipeline_id: str) -> list[tuple[bytes, dict[str, str]]]:
    from google.cloud import pubsub_v1

    subscriber = pubsub_v1.SubscriberClient()
    path = transport.subscription_path(pipeline_id)
    response = subscriber.pull(subscription=path, max_messages=100, timeout=10)
    if response.received_messages:
        subscriber.acknowledge(subscription=path,
                               ack_ids=[m.ack_id for m in response.received_messages])
    return [(m.message.data, dict(m.message.attributes)) for m in response.received_messages]


def test_names_are_valid_pubsub_and_kafka_names() -> None:
    assert topic_name("pl_0123abcd") == "pipeline-do-pl_0123abcd"
    assert topic_name("pl_a/b c") == "pipeline-do-pl_a-b-c"
    with pytest.raises(ValueError, match="start with a letter"):
        topic_name("pl_1", prefix="9")
    transport = PubSubTransport(PROJECT)
    assert transport.subscription_path("pl_1") == \
        "projects/test-project/subscriptions/pipeline-do-pl_1"
    assert transport.topic_path("pl_1") == "projects/test-project/topics/pipeline-do-pl_1"


def test_ensure_is_idempotent_and_publish_is_read_back_with_its_attributes(
        transport: PubSubTransport) -> None:
    transport.ensure("pl_roundtrip")
    transport.ensure("pl_roundtrip")  # an existing topic and subscription are kept
    payload = bytes(range(256)) * 40
    transport.publish("pl_roundtrip", payload, {"batch_id": "b1", "events": "3"}, 10)
    assert _pull_all(transport, "pl_roundtrip") == [(payload, {"batch_id": "b1", "events": "3"})]


def test_remove_deletes_both_and_tolerates_missing_ones(transport: PubSubTransport) -> None:
    from google.api_core.exceptions import NotFound
    from google.cloud import pubsub_v1

    transport.ensure("pl_removed")
    transport.remove("pl_removed")
    transport.remove("pl_removed")
    with pytest.raises(NotFound):
        pubsub_v1.PublisherClient().get_topic(topic=transport.topic_path("pl_removed"))
    with pytest.raises(NotFound):
        pubsub_v1.SubscriberClient().get_subscription(
            subscription=transport.subscription_path("pl_removed"))
    # Publishing to a removed topic is refused, not lost silently.
    with pytest.raises(Unavailable, match="NOT_FOUND"):
        transport.publish("pl_removed", b"x", {"batch_id": "b"}, 5)


def test_a_forked_process_publishes_with_its_own_clients(transport: PubSubTransport) -> None:
    """gunicorn forks workers after the app is built: a client made before the fork
    must not be used after it."""
    transport.ensure("pl_forked")
    transport.publish("pl_forked", b"parent", {"batch_id": "p"}, 10)
    parent_publisher = transport._clients()[0]
    pid = os.fork()
    if pid == 0:  # the child: publish, report through the exit code only
        code = 1
        try:
            if transport._clients()[0] is not parent_publisher:
                transport.publish("pl_forked", b"child", {"batch_id": "c"}, 10)
                code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while (waited := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if waited[0] == 0:  # bounded: a hung child is killed and the test fails
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked process did not finish its publish within 60 s")
    assert os.waitstatus_to_exitcode(waited[1]) == 0
    assert sorted(_pull_all(transport, "pl_forked")) == [(b"child", {"batch_id": "c"}),
                                                         (b"parent", {"batch_id": "p"})]


def test_without_a_project_every_call_names_the_setting() -> None:
    transport = PubSubTransport(None)
    for call in (lambda: transport.ensure("pl_1"),
                 lambda: transport.publish("pl_1", b"", {}, 1),
                 lambda: transport.remove("pl_1")):
        with pytest.raises(DefinitionError, match="PIPELINE_DO_DATAFLOW_PROJECT"):
            call()
