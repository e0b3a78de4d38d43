"""Google Pub/Sub as a pipeline's transport: the source of its Dataflow job.

One topic and one subscription per pipeline, both named ``topic_name(pipeline_id)``
in the server's project. The Dataflow job reads the subscription
(``subscription_path``), so what ingest publishes while no job runs (created,
paused, between a drain and a relaunch) waits there, up to Pub/Sub's retention.

The clients are gRPC clients, which must not cross a ``fork``: gunicorn forks
its workers after ``create_app``, so each process makes its own on first use
(keyed by pid). ``PUBSUB_EMULATOR_HOST`` is honoured by the client library
itself (plain-text channel, no credentials).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from beam_pipelines.errors import DefinitionError, Unavailable
from beam_pipelines.runners.process_clients import ProcessClients
from beam_pipelines.runners.transports import TOPIC_PREFIX, topic_name

__all__ = ["PubSubTransport"]

_log = logging.getLogger(__name__)

# Admin calls (create/delete topic and subscription) are few and small.
ADMIN_TIMEOUT_SECONDS = 30.0
# How long a message the Dataflow job has not acknowledged is redelivered: the
# job acknowledges only after its checkpoint, so this is generous.
ACK_DEADLINE_SECONDS = 60


class PubSubTransport:
    """``Transport`` on Google Pub/Sub: ensure/publish/remove per pipeline."""

    def __init__(self, project: str | None, *, prefix: str = TOPIC_PREFIX) -> None:
        """``project``: where the topics live (``PIPELINE_DO_DATAFLOW_PROJECT``); None
        refuses every call with the setting's name, so a server without it still
        starts and only distributed pipelines are refused."""
        self.project = project
        self.prefix = prefix
        self._clients_by_pid: ProcessClients[None, tuple[Any, Any]] = ProcessClients()

    # -- names ----------------------------------------------------------------

    def topic_path(self, pipeline_id: str) -> str:
        return f"projects/{self._project()}/topics/{topic_name(pipeline_id, self.prefix)}"

    def subscription_path(self, pipeline_id: str) -> str:
        """What the Dataflow job reads (``ReadFromPubSub(subscription=...)``)."""
        return (f"projects/{self._project()}/subscriptions/"
                f"{topic_name(pipeline_id, self.prefix)}")

    def _project(self) -> str:
        if not self.project:
            raise DefinitionError("runner.options.project", "the Pub/Sub transport needs a "
                                  "Google Cloud project: set PIPELINE_DO_DATAFLOW_PROJECT on "
                                  "the server")
        return self.project

    # -- Transport --------------------------------------------------------------

    def ensure(self, pipeline_id: str) -> None:
        """Create the topic, then its subscription; an existing one is kept as it is."""
        from google.api_core import exceptions

        topic, subscription = self.topic_path(pipeline_id), self.subscription_path(pipeline_id)
        publisher, subscriber = self._clients()
        try:
            try:
                publisher.create_topic(name=topic, timeout=ADMIN_TIMEOUT_SECONDS)
            except exceptions.AlreadyExists:
                pass
            try:
                subscriber.create_subscription(
                    name=subscription, topic=topic, ack_deadline_seconds=ACK_DEADLINE_SECONDS,
                    timeout=ADMIN_TIMEOUT_SECONDS)
            except exceptions.AlreadyExists:
                pass
        except exceptions.GoogleAPIError as err:
            _log.warning("Pub/Sub ensure %s failed: %r", topic, err)
            raise Unavailable("could not create the pipeline's Pub/Sub topic and subscription: "
                              f"{_reason(err)}", {"transport": "pubsub"}) from None

    def publish(self, pipeline_id: str, data: bytes, attributes: Mapping[str, str],
                timeout_s: float) -> None:
        """Publish and wait for Pub/Sub's message id; raise ``Unavailable`` otherwise.

        The client's own retries are bounded by ``timeout_s`` too, so a message
        whose publish this call gave up on is not sent behind the caller's back
        much later (the caller retries it with the same batch id).
        """
        from google.api_core import exceptions
        from google.api_core.retry import Retry

        topic = self.topic_path(pipeline_id)
        publisher, _ = self._clients()
        future = publisher.publish(topic, data,
                                   retry=Retry(timeout=timeout_s), timeout=timeout_s,
                                   **dict(attributes))
        try:
            future.result(timeout=timeout_s)
        except (TimeoutError, exceptions.RetryError):
            raise Unavailable(f"Pub/Sub did not confirm the publish within {timeout_s:g} s",
                              {"transport": "pubsub"}) from None
        except exceptions.GoogleAPIError as err:
            raise Unavailable(f"Pub/Sub refused the publish: {_reason(err)}",
                              {"transport": "pubsub"}) from None

    def remove(self, pipeline_id: str) -> None:
        """Delete the subscription (what is unread goes with it), then the topic."""
        from google.api_core import exceptions

        topic, subscription = self.topic_path(pipeline_id), self.subscription_path(pipeline_id)
        publisher, subscriber = self._clients()
        try:
            try:
                subscriber.delete_subscription(subscription=subscription,
                                               timeout=ADMIN_TIMEOUT_SECONDS)
            except exceptions.NotFound:
                pass
            try:
                publisher.delete_topic(topic=topic, timeout=ADMIN_TIMEOUT_SECONDS)
            except exceptions.NotFound:
                pass
        except exceptions.GoogleAPIError as err:
            raise Unavailable("could not delete the pipeline's Pub/Sub topic and subscription: "
                              f"{_reason(err)}", {"transport": "pubsub"}) from None

    # -- clients ----------------------------------------------------------------

    def _clients(self) -> tuple[Any, Any]:
        """This process's publisher and subscriber (made on first use after a fork)."""
        return self._clients_by_pid.get(None, _connect)


def _connect() -> tuple[Any, Any]:
    try:
        import google.cloud.pubsub_v1 as pubsub_v1
    except ImportError:
        raise DefinitionError("runner.type", "the Pub/Sub transport needs "
                              "google-cloud-pubsub: pip install 'pipeline-do[gcp]'") from None

    from google.auth.exceptions import DefaultCredentialsError

    try:
        # Each message is one whole ingest request, confirmed before the
        # ack: batching would only add its latency (10 ms by default).
        publisher = pubsub_v1.PublisherClient(
            batch_settings=pubsub_v1.types.BatchSettings(max_messages=1))
        return publisher, pubsub_v1.SubscriberClient()
    except DefaultCredentialsError:
        raise Unavailable("the server has no Google credentials for Pub/Sub: set "
                          "GOOGLE_APPLICATION_CREDENTIALS (or PUBSUB_EMULATOR_HOST)",
                          {"transport": "pubsub"}) from None


def _reason(err: Exception) -> str:
    """The broker's short reason (a gRPC status name), never a stack or an address."""
    status = getattr(err, "grpc_status_code", None)
    return str(status.name) if status is not None else type(err).__name__
