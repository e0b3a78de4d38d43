"""Clients made once per process and key, on first use: the transports' and engines' caches.

gunicorn forks its workers after ``create_app``, and neither gRPC (Pub/Sub)
nor librdkafka (Kafka) threads survive a fork, nor should two processes
share one HTTP connection pool (the Dataflow and Flink REST clients). So a
client is never handed across a fork: a cache seen from another process than
the one that filled it starts empty. A client whose making fails is not kept:
the next call tries again.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["ProcessClients"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ProcessClients(Generic[K, V]):
    """This process's client of each key (a transport's one, an engine's per endpoint)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = 0
        self._clients: dict[K, V] = {}

    def get(self, key: K, make: Callable[[], V]) -> V:
        """The client of ``key`` made in this process, ``make()`` on first use."""
        with self._lock:
            if self._pid != os.getpid():
                self._clients = {}
                self._pid = os.getpid()
            if key not in self._clients:
                self._clients[key] = make()
            return self._clients[key]
