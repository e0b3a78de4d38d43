"""The job manager's supervisor: a broken manager is restarted, and ``/healthz`` says so.

``serve`` runs one :class:`ManagerSupervisor` next to its job manager. Once
a second it asks the manager what is wrong (:meth:`JobManager.health`: its
scheduler thread ended, no tick succeeded for a minute, no epoch worker can
start) and writes the answer to a heartbeat file in the data dir, the one
write it makes. When something is wrong it closes the manager (its running
epochs get a few seconds, then their workers are killed; the epochs stay
planned) and starts a new one, whose recovery runs them again. Restarts
that follow each other without a healthy look between them wait longer
each time, up to five minutes: a manager that breaks at once again (a full
disk, a store that does not answer) is not restarted in a tight loop.

The API's ``/healthz`` runs in other processes (gunicorn's workers) and
reads the file through :func:`manager_problem`: a problem written there, or
a file not written for ``STALE_AFTER_SECONDS`` (the supervisor, or the whole
``serve`` process, is gone), is a 503 with the reason.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any, Protocol

from beam_pipelines.runners.local.periodic import PeriodicThread

__all__ = ["HEARTBEAT_FILE", "STALE_AFTER_SECONDS", "ManagerSupervisor", "manager_problem",
           "write_heartbeat"]

_log = logging.getLogger(__name__)

HEARTBEAT_FILE = "job-manager.heartbeat"
# The supervisor writes every second; this much silence means it is not running.
STALE_AFTER_SECONDS = 15.0
# How long a broken manager's running epochs may go on before their workers are killed.
CLOSE_TIMEOUT_SECONDS = 10.0
_MAX_RESTART_PAUSE_SECONDS = 300.0
# A manager healthy this long after its start is no longer part of a series of restarts.
_SETTLED_AFTER_SECONDS = 60.0


class Supervised(Protocol):
    def health(self) -> str | None: ...

    def close(self, timeout: float = ...) -> None: ...


def write_heartbeat(data_dir: str, problem: str | None) -> None:
    """Record, atomically, that the manager was looked at now and what was wrong."""
    path = os.path.join(data_dir, HEARTBEAT_FILE)
    staging = f"{path}.{os.getpid()}"
    with open(staging, "w") as out:
        json.dump({"pid": os.getpid(), "written_at": time.time(), "problem": problem}, out)
    os.replace(staging, path)


def manager_problem(data_dir: str, *, now: float | None = None) -> str | None:
    """What is wrong with the job manager of this data dir, or None while it works."""
    try:
        with open(os.path.join(data_dir, HEARTBEAT_FILE)) as heartbeat:
            beat: dict[str, Any] = json.load(heartbeat)
    except FileNotFoundError:
        return "the job manager has not started"
    except (OSError, ValueError):
        return "the job manager's heartbeat cannot be read"
    if beat.get("problem"):
        return str(beat["problem"])
    age = (time.time() if now is None else now) - float(beat.get("written_at", 0.0))
    if age > STALE_AFTER_SECONDS:
        return f"the job manager's supervisor has not reported for {age:.0f} s"
    return None


class ManagerSupervisor:
    """Keeps a job manager running: ``start_manager`` makes and starts a new one."""

    def __init__(self, start_manager: Callable[[], Supervised], data_dir: str, *,
                 interval: float = 1.0) -> None:
        self.data_dir = data_dir
        self._start_manager = start_manager
        self.manager: Supervised | None = None
        self.restarts = 0
        self._restarts_in_a_row = 0
        self._restarted_at = 0.0
        self._restart_not_before = 0.0
        self._loop = PeriodicThread("job-manager-supervisor", interval, self._tick, _log)

    def start(self, *, watch: bool = True) -> None:
        """Start a manager and (``watch``) the thread that checks it every ``interval``;
        without it, the caller calls :meth:`check` itself."""
        self.manager = self._start_manager()
        write_heartbeat(self.data_dir, None)
        if watch:
            self._loop.start()

    def close(self, timeout: float = 30.0) -> None:
        self._loop.stop(timeout)
        if self.manager is not None:
            self.manager.close(timeout)

    def _tick(self) -> None:
        self.check()

    def check(self) -> str | None:
        """One look: report what is wrong and, when something is, restart."""
        problem = self.diagnose()
        if problem is not None:
            self.restart(problem)
        return problem

    def diagnose(self) -> str | None:
        """Ask the manager what is wrong and write the answer to the heartbeat."""
        if self.manager is None:
            problem: str | None = "the job manager could not be started"
        else:
            problem = self.manager.health()
        if problem is None and time.monotonic() - self._restarted_at > _SETTLED_AFTER_SECONDS:
            self._restarts_in_a_row = 0
        try:
            write_heartbeat(self.data_dir, problem)
        except OSError:  # a full disk must not keep the manager from being restarted
            _log.exception("writing the job manager's heartbeat failed")
        return problem

    def restart(self, problem: str) -> None:
        """Replace the manager; a restart soon after the last one waits its turn."""
        now = time.monotonic()
        if now < self._restart_not_before:
            return
        _log.error("the job manager is broken (%s): restarting it", problem)
        self._restarts_in_a_row += 1
        self.restarts += 1
        self._restarted_at = now
        self._restart_not_before = now + min(_MAX_RESTART_PAUSE_SECONDS,
                                             5.0 * 2 ** (self._restarts_in_a_row - 1))
        old, self.manager = self.manager, None
        if old is not None:
            try:
                old.close(CLOSE_TIMEOUT_SECONDS)
            except Exception:  # noqa: BLE001 - a broken manager may fail to close; start anyway
                _log.exception("closing the broken job manager failed")
        try:
            self.manager = self._start_manager()
        except Exception:  # noqa: BLE001 - reported by the next look, retried after the pause
            _log.exception("starting a new job manager failed")
            return
        _log.info("a new job manager runs (restart %s)", self.restarts)
