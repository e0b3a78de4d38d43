"""Where a distributed pipeline's ingest publishes: one module per broker.

``pubsub.PubSubTransport`` (Dataflow's source) and ``kafka.KafkaTransport``
(Flink's) implement ``beam_pipelines.runners.base.Transport`` with the same
naming rule (``topic_name``), so a pipeline's topic is found from its id alone.
"""

from __future__ import annotations

import re

__all__ = ["topic_name"]

TOPIC_PREFIX = "pipeline-do-"
_ALLOWED = re.compile(r"[^A-Za-z0-9._-]")


def topic_name(pipeline_id: str, prefix: str = TOPIC_PREFIX) -> str:
    """The pipeline's topic (and subscription) name, valid for Pub/Sub and Kafka alike.

    Pub/Sub wants 3-255 characters from ``[A-Za-z0-9-_.~+%]`` starting with a
    letter and not with ``goog``; Kafka at most 249 from ``[A-Za-z0-9._-]``.
    The prefix starts with a letter; pipeline ids are ``pl_`` + hex.
    """
    name = prefix + _ALLOWED.sub("-", pipeline_id)
    if not name[:1].isalpha() or name.lower().startswith("goog") or not 3 <= len(name) <= 249:
        raise ValueError(f"topic name {name!r} is not valid for Pub/Sub and Kafka: it must "
                         "start with a letter (not 'goog') and have 3 to 249 characters")
    return name
