"""Small measuring helpers shared by the benchmark contenders.

:class:`PeakRss` samples the resident set size of a process and all of its
descendants in a background thread and keeps the peak, e.g.::

    with PeakRss(server_pid) as rss:
        ...                      # drive the load
    print(rss.peak_mb)

:func:`percentile` gives nearest-rank percentiles of a list of latencies;
:func:`cpu_by_role` the CPU time a server's processes have used, by role.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Sequence

import psutil

__all__ = ["PeakRss", "cpu_by_role", "percentile", "process_tree", "wait_until_idle"]


def process_tree(root: psutil.Process) -> list[psutil.Process]:
    """``root`` and all its descendants; empty if ``root`` is gone."""
    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


# A server process's role, from its command line; the root is the ``serve``
# process (job manager, webhook dispatcher), which also reaps recycled epoch
# workers: their CPU shows in its children's times.
_ROLES = (("gunicorn", "api"), ("multiprocessing.spawn", "epoch_workers"))


def _role(command: str) -> str:
    return next((r for marker, r in _ROLES if marker in command), "manager")


def _process_role(process: psutil.Process, roles: dict[int, str]) -> str:
    """``process``'s role; a child of an API process (its SQL forkserver, the
    resource tracker) is ``api`` too. ``roles``: the parents' roles, listed first."""
    role = _role(" ".join(process.cmdline()))
    if role == "manager" and roles.get(process.ppid()) == "api":
        return "api"
    return role


def cpu_by_role(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) used so far by server ``pid``'s processes, by role:
    ``api`` (gunicorn), ``epoch_workers`` and ``manager`` (the serve process).

    A process an API worker started (its SQL forkserver and resource tracker,
    which stop when idle) counts as ``api``, and so does such a child's time
    once it has exited and been reaped (its parent's children times): else a
    forkserver stopping between two samples would take its CPU out of the
    totals and a role's difference could come out negative.
    """
    root = psutil.Process(pid)
    totals = {"api": 0.0, "epoch_workers": 0.0, "manager": 0.0}
    roles: dict[int, str] = {}
    for process in process_tree(root):
        try:
            role = roles[process.pid] = _process_role(process, roles)
            times = process.cpu_times()
        except psutil.Error:  # exited between listing and sampling
            continue
        totals[role] += times.user + times.system
        if process.pid == pid:
            totals["epoch_workers"] += times.children_user + times.children_system
        elif role == "api":
            totals["api"] += times.children_user + times.children_system
    return totals


def wait_until_idle(pid: int, timeout: float = 60.0) -> float:
    """Wait until process ``pid`` and its children are idle; return the seconds it took.

    Idle: under a tenth of a core over half a second.
    """
    started = time.monotonic()

    def cpu_seconds() -> float:
        return sum(cpu_by_role(pid).values())

    before = cpu_seconds()
    while time.monotonic() - started < timeout:
        time.sleep(0.5)
        now = cpu_seconds()
        if now - before < 0.05:
            break
        before = now
    return round(time.monotonic() - started, 2)


class PeakRss:
    """Peak RSS (MiB) of process ``pid`` plus its children, sampled every ``interval`` s.

    The process tree is listed again every ``rescan`` s: listing scans all of
    /proc (~3 ms of CPU), reading the listed processes' RSS costs ~0.3 ms.
    """

    def __init__(self, pid: int | None = None, interval: float = 0.05, rescan: float = 1.0):
        self._process = psutil.Process(pid or os.getpid())
        self._interval = interval
        self._rescan = rescan
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tree: list[psutil.Process] = []
        self._listed_at = -float("inf")
        self._roles: dict[int, str] = {}
        self.peak_bytes = 0
        self.start_bytes = 0
        # RSS by role (see cpu_by_role; "manager" for a process that is not a
        # server's) at the moment of the peak: which process role dominates it.
        self.peak_by_role: dict[str, int] = {}

    def _processes(self) -> list[psutil.Process]:
        now = time.monotonic()
        if now - self._listed_at >= self._rescan:
            self._tree = process_tree(self._process)
            self._listed_at = now
            for process in self._tree:
                # Until it execs, a just-spawned process shows its parent's
                # command line: "manager" is looked at again on the next listing.
                if self._roles.get(process.pid, "manager") == "manager":
                    try:
                        self._roles[process.pid] = _process_role(process, self._roles)
                    except psutil.Error:
                        pass
        return self._tree

    def sample(self, *, rescan: bool = False) -> int:
        """Current RSS in bytes of the process tree (and update the peak)."""
        if rescan:
            self._listed_at = -float("inf")
        total = 0
        by_role: dict[str, int] = {}
        for process in self._processes():
            try:
                rss = process.memory_info().rss
            except psutil.Error:  # exited between listing and sampling
                continue
            total += rss
            role = self._roles.get(process.pid, "manager")
            by_role[role] = by_role.get(role, 0) + rss
        if total > self.peak_bytes:
            self.peak_bytes, self.peak_by_role = total, by_role
        return total

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.sample()

    def __enter__(self) -> PeakRss:
        self.start_bytes = self.sample(rescan=True)
        self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample(rescan=True)

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20

    @property
    def peak_by_role_mb(self) -> dict[str, float]:
        return {role: round(b / 2**20, 1) for role, b in sorted(self.peak_by_role.items())}

    @property
    def start_mb(self) -> float:
        return self.start_bytes / 2**20


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile (``pct`` in 0..100) of ``values``; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]
