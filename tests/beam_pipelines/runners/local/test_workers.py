"""The worker pool on real spawned processes: a dying worker fails only its own task."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest

from beam_pipelines.runners.local.workers import TaskCancelled, WorkerDied, WorkerPool
from tests.live import wait_for
from transforms.limits import limit_process_memory

# -- tasks: module level, so a spawned worker imports them by name ------------------


def _no_setup() -> None:
    pass


def _pid() -> int:
    return os.getpid()


def _hold(gate: str) -> int:
    """Say which process runs this (``gate.pid``), then wait for ``gate`` to exist."""
    with open(f"{gate}.pid", "w") as out:
        out.write(str(os.getpid()))
    deadline = time.monotonic() + 120
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.02)
    return os.getpid()


def _allocate(megabytes: int, how: str) -> str:
    if how == "pyarrow":
        import pyarrow as pa

        pa.allocate_buffer(megabytes << 20)
    elif how == "duckdb":
        import duckdb

        with duckdb.connect() as con:
            con.sql(f"SELECT list(i) FROM range({megabytes << 17}) t(i)").fetchall()
    else:
        bytearray(megabytes << 20)
    return "allocated"


class _Unpicklable(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code}: {text}")


def _raise_unpicklable() -> None:
    raise _Unpicklable(7, "cannot be rebuilt from its args")


def _fail_setup() -> None:
    raise ImportError("a module the worker needs is missing")


# -- helpers ------------------------------------------------------------------------


@pytest.fixture
def pool() -> Iterator[WorkerPool]:
    workers = WorkerPool(2, initializer=_no_setup, max_tasks_per_worker=1000, name="pdo-test")
    yield workers
    workers.shutdown(10)


def _holding(pool: WorkerPool, tmp_path: Any, name: str) -> tuple[Future[Any], str, int]:
    """Submit a held task; return its future, its gate, and the pid of the worker running it."""
    gate = str(tmp_path / name)
    future = pool.submit(_hold, gate)
    pid = wait_for(lambda: _read(f"{gate}.pid"), message=f"task {name} to start")
    return future, gate, int(pid)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def _release(gate: str) -> None:
    open(gate, "w").close()


def _failure(future: Future[Any]) -> BaseException | None:
    return future.exception(timeout=60)


# -- tests --------------------------------------------------------------------------


def test_a_killed_worker_fails_its_own_task_only_and_is_replaced_again_and_again(
        pool: WorkerPool, tmp_path: Any) -> None:
    for round_ in range(4):
        victim, _gate, victim_pid = _holding(pool, tmp_path, f"victim-{round_}")
        bystander, bystander_gate, bystander_pid = _holding(pool, tmp_path, f"bystander-{round_}")
        os.kill(victim_pid, signal.SIGKILL)
        died = _failure(victim)
        assert isinstance(died, WorkerDied) and died.signal == signal.SIGKILL
        assert "worker process died" in died.message and "SIGKILL" in died.message
        _release(bystander_gate)
        assert bystander.result(timeout=60) == bystander_pid  # ran on, on the same worker
        # The pool is whole again: two workers (the next round holds both at once).
        assert pool.submit(_pid).result(timeout=120) != victim_pid
        assert len(pool.describe()) == 2 and pool.problem() is None
    first, first_gate, first_pid = _holding(pool, tmp_path, "last-1")
    second, second_gate, second_pid = _holding(pool, tmp_path, "last-2")
    _release(first_gate)
    _release(second_gate)
    assert {first.result(timeout=60), second.result(timeout=60)} == {first_pid, second_pid}


def test_a_worker_is_replaced_after_max_tasks_and_every_task_runs_once(tmp_path: Any) -> None:
    pool = WorkerPool(1, initializer=_no_setup, max_tasks_per_worker=2, name="pdo-test")
    try:
        pids = [pool.submit(_pid).result(timeout=120) for _ in range(6)]
    finally:
        pool.shutdown(10)
    assert [pids.count(p) for p in dict.fromkeys(pids)] == [2, 2, 2]


def test_cancel_kills_the_running_task_and_the_pool_goes_on(
        pool: WorkerPool, tmp_path: Any) -> None:
    running, _gate, pid = _holding(pool, tmp_path, "running")
    assert pool.cancel(running)
    assert isinstance(_failure(running), TaskCancelled)
    wait_for(lambda: not _alive(pid), message="the cancelled task's worker to end")
    assert pool.submit(_pid).result(timeout=120) != pid
    assert not pool.cancel(running)  # done already


def test_a_task_is_never_sent_to_a_worker_cancelled_after_its_result_was_sent(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """The race seen once in a full run: ``cancel`` kills a worker whose result
    is already in the pipe; the pool thread takes the result, finds the worker
    idle and gives it the next task, which then dies with it (exit code -9).
    Held here by the pool's lock (made re-entrant) so the order is certain."""
    monkeypatch.setattr(threading, "Lock", threading.RLock)
    pool = WorkerPool(1, initializer=_no_setup, name="pdo-test")
    monkeypatch.undo()
    try:
        gate = str(tmp_path / "gate")
        first = pool.submit(_hold, gate)
        wait_for(lambda: os.path.exists(f"{gate}.pid"), message="the first task to run")
        with pool._lock:
            worker = pool._workers[0]
            open(gate, "w").close()
            wait_for(worker.conn.poll, message="the first task's result in the pipe")
            assert pool.cancel(first)
            second = pool.submit(_pid)
        first_pid = worker.process.pid
        assert second.result(timeout=120) != first_pid
        assert first.done()  # its result counted, or it was cancelled: never lost silently
    finally:
        pool.shutdown(10.0)


def test_an_allocation_past_the_memory_cap_fails_its_task_and_the_next_task_runs() -> None:
    pool = WorkerPool(1, initializer=limit_process_memory, initargs=(768,), name="pdo-test")
    try:
        first = pool.submit(_pid).result(timeout=120)
        pids = []
        for how in ("pyarrow", "duckdb", "python"):
            failure = _failure(pool.submit(_allocate, 4096, how))
            assert isinstance(failure, MemoryError) or "Out of Memory" in str(failure), failure
            assert pool.submit(_allocate, 64, "pyarrow").result(timeout=120) == "allocated"
            pids.append(pool.submit(_pid).result(timeout=120))
    finally:
        pool.shutdown(10)
    # pyarrow fails before it maps anything: the same worker goes on. DuckDB keeps
    # the address space it reached: that worker retires and a new one runs the next task.
    assert pids[0] == first and pids[1] != first


def test_an_exception_that_does_not_pickle_comes_back_by_name(pool: WorkerPool) -> None:
    failure = _failure(pool.submit(_raise_unpicklable))
    assert isinstance(failure, RuntimeError) and "_Unpicklable: 7: cannot be rebuilt" in str(failure)
    assert pool.submit(_pid).result(timeout=60) > 0


def test_workers_that_cannot_start_are_reported_and_nothing_hangs(tmp_path: Any) -> None:
    pool = WorkerPool(1, initializer=_fail_setup, name="pdo-test")
    try:
        queued = pool.submit(_pid)
        problem = wait_for(pool.problem, timeout=120, message="the pool to report failed starts")
        assert "starts failed in a row" in problem and "exit code 1" in problem
        assert not queued.done()
    finally:
        pool.shutdown(5)
    assert isinstance(_failure(queued), TaskCancelled)
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(_pid)


def test_shutdown_lets_a_running_task_finish_then_kills_what_is_left(
        pool: WorkerPool, tmp_path: Any) -> None:
    finishing, finishing_gate, _pid1 = _holding(pool, tmp_path, "finishing")
    stuck, _stuck_gate, stuck_pid = _holding(pool, tmp_path, "stuck")
    _release(finishing_gate)
    finishing.result(timeout=60)
    pool.shutdown(1.0)
    assert isinstance(_failure(stuck), TaskCancelled)
    assert not _alive(stuck_pid)
    assert pool.describe() == []


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False
