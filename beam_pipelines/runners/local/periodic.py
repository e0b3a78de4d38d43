"""A daemon thread that calls ``tick`` every ``interval`` seconds until stopped.

The job manager's scheduler and the webhook dispatcher are both such loops:
a failing tick is logged and the loop goes on, since one bad tick must not
stop every later one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

__all__ = ["PeriodicThread"]


class PeriodicThread:
    def __init__(self, name: str, interval: float, tick: Callable[[], None],
                 log: logging.Logger) -> None:
        self.name = name
        self.interval = interval
        self._tick = tick
        self._log = log
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception:  # noqa: BLE001 - the loop must outlive any one bad tick
                self._log.exception("%s tick failed", self.name)
            self._stop.wait(self.interval)
