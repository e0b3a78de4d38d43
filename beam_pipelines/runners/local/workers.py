"""A pool of worker processes in which a dying worker fails only its own task.

``concurrent.futures.ProcessPoolExecutor`` marks itself broken when any of
its workers dies and fails every future in flight: one epoch killed by the
kernel's OOM killer failed the epochs of every other pipeline, and every
later submit raised ``BrokenProcessPool``. Here each worker is a spawned
process with a pipe of its own that runs one task at a time, and one pool
thread watches the pipes and the processes' sentinels. A death is the
business of the one task the worker was running: its future fails with
:class:`WorkerDied` (naming the signal or exit code), a new worker takes
the dead one's place, and every other worker's task goes on.

A worker runs the initializer, reports ready, runs tasks and exits after
``max_tasks_per_worker`` of them, or after a task that left it using most
of its memory cap (``transforms.limits.limit_process_memory``: DuckDB keeps the address space
of a query that hit the cap, and every later allocation would fail); its
replacement is started then, so memory stays flat. Tasks only go to ready
workers. A worker that dies or hangs before it is ready is a failed start;
after three in a row the pool reports why through :meth:`WorkerPool.problem`
and tries again with growing pauses: a pool that cannot start workers runs nothing.

A running task can be cancelled (:meth:`WorkerPool.cancel`): its worker is
killed, as nothing short of that stops code inside a C extension, and
replaced; its future fails with :class:`TaskCancelled`.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from beam_pipelines.errors import PipelineDoError
from beam_pipelines.runners.local.worker_process import serve_tasks

__all__ = ["TaskCancelled", "WorkerDied", "WorkerPool"]

_log = logging.getLogger(__name__)

# A worker not ready this long after its start (imports, initializer) is killed.
START_TIMEOUT_SECONDS = 120.0
# Failed starts in a row after which the pool reports a problem.
FAILED_STARTS_REPORTED = 3
# How long the pool thread sleeps at most when nothing happens: the bound on
# noticing a start timeout, and on every wait of the pool.
_WAKE_SECONDS = 1.0


class WorkerDied(PipelineDoError):
    """The worker process running the task died: killed (``kill -9``, the
    kernel's OOM killer) or crashed. Retrying can help: it runs on a new worker."""

    transient = True

    def __init__(self, exitcode: int | None) -> None:
        self.exitcode = exitcode
        self.signal = signal.Signals(-exitcode) if exitcode is not None and exitcode < 0 else None
        how = f"killed by {self.signal.name}" if self.signal is not None \
            else f"exit code {exitcode}"
        super().__init__(f"a worker process died while running the epoch ({how})",
                         {"exitcode": exitcode})

    def __reduce__(self) -> tuple[Any, ...]:
        return WorkerDied, (self.exitcode,)


class TaskCancelled(PipelineDoError):
    """The task was cancelled (its worker killed) or the pool shut down before it ran."""


@dataclass
class _Task:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: Future[Any] = field(default_factory=Future)
    cancelled: bool = False


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection
    started_at: float
    ready: bool = False
    task: _Task | None = None
    tasks_done: int = 0
    hung_up: bool = False  # its end of the pipe closed: only the sentinel is left to watch
    # Killed by the pool (cancel, start timeout, shutdown): it gets no task
    # even if the result of the one it ran arrives before its death does.
    killed: bool = False

    def kill(self) -> None:
        self.killed = True
        self.process.kill()


class WorkerPool:
    """``size`` spawned worker processes running submitted calls one at a time each."""

    def __init__(self, size: int, *, initializer: Callable[..., object],
                 initargs: tuple[Any, ...] = (), max_tasks_per_worker: int = 100,
                 name: str = "pdo-worker") -> None:
        if size < 1 or max_tasks_per_worker < 1:
            raise ValueError(f"a pool needs size >= 1 and max_tasks_per_worker >= 1, "
                             f"got {size} and {max_tasks_per_worker}")
        self.size = size
        self.name = name
        self._initializer = initializer
        self._initargs = initargs
        self._max_tasks = max_tasks_per_worker
        self._context = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        self._queue: deque[_Task] = deque()
        self._workers: list[_Worker] = []
        self._retired: list[BaseProcess] = []  # exiting on their own after their last task
        self._closing = False
        self._close_deadline = 0.0
        self._failed_starts = 0
        self._start_error = ""
        self._next_start_at = 0.0
        self._wake_reader, self._wake_writer = self._context.Pipe(duplex=False)
        self._woken = False
        self._thread = threading.Thread(target=self._run, name=f"{name}-pool", daemon=True)
        self._thread.start()

    # -- the caller's side ----------------------------------------------------

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Run ``fn(*args)`` on a worker; ``fn`` and ``args`` must pickle."""
        task = _Task(fn, args)
        with self._lock:
            if self._closing:
                raise RuntimeError("the worker pool is shut down")
            self._queue.append(task)
            self._wake()
        return task.future

    def cancel(self, future: Future[Any]) -> bool:
        """Cancel a queued or running task; a running one's worker is killed.
        False when the task is already done (or not this pool's)."""
        with self._lock:
            for task in self._queue:
                if task.future is future:
                    self._queue.remove(task)
                    _finish(task, error=TaskCancelled("the task was cancelled before it ran"))
                    return True
            for worker in self._workers:
                if worker.task is not None and worker.task.future is future:
                    worker.task.cancelled = True
                    worker.kill()
                    return True
        return False

    def problem(self) -> str | None:
        """Why the pool cannot run tasks, or None while it can."""
        with self._lock:
            if self._failed_starts >= FAILED_STARTS_REPORTED:
                return (f"{self._failed_starts} epoch worker starts failed in a row; "
                        f"the last: {self._start_error}")
        if not self._thread.is_alive() and not self._closing:
            return "the worker pool's thread is not running"
        return None

    def describe(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"pid": w.process.pid, "ready": w.ready, "busy": w.task is not None,
                     "tasks_done": w.tasks_done} for w in self._workers]

    def shutdown(self, timeout: float = 30.0) -> None:
        """Fail the queued tasks, let running ones finish for up to ``timeout``
        seconds, then kill what is left. Returns within about ``timeout`` + 10 s."""
        with self._lock:
            if not self._closing:
                self._closing = True
                self._close_deadline = time.monotonic() + timeout
                while self._queue:
                    _finish(self._queue.popleft(), error=TaskCancelled("the worker pool shut down"))
            self._wake()
        self._thread.join(timeout + 5.0)
        with self._lock:  # the pool thread did not finish: never leave a worker behind
            leftover, self._workers = self._workers, []
            retired, self._retired = self._retired, []
        for process in [w.process for w in leftover] + retired:
            if process.is_alive():
                process.kill()
            process.join(5.0)
        for worker in leftover:
            if worker.task is not None:
                _finish(worker.task, error=TaskCancelled("the worker pool shut down"))
        if not self._thread.is_alive():
            self._wake_reader.close()
            self._wake_writer.close()

    # -- the pool thread ------------------------------------------------------

    def _wake(self) -> None:
        if not self._woken:
            self._woken = True
            try:
                self._wake_writer.send_bytes(b"")
            except OSError:
                pass  # shut down already

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    if self._woken:
                        while self._wake_reader.poll():
                            self._wake_reader.recv_bytes()
                        self._woken = False
                    if self._closing and self._close_step():
                        return
                    if not self._closing:
                        self._start_workers()
                        self._expire_starts()
                        self._dispatch()
                    waitables: list[Any] = [self._wake_reader]
                    for worker in self._workers:
                        waitables += [worker.process.sentinel]
                        if not worker.hung_up:
                            waitables.append(worker.conn)
                    waitables += [p.sentinel for p in self._retired]
                ready = set(wait(waitables, timeout=_WAKE_SECONDS))
                with self._lock:
                    for worker in list(self._workers):
                        if worker.conn in ready:
                            self._receive(worker)
                    for worker in list(self._workers):
                        if worker.process.sentinel in ready and worker in self._workers:
                            self._buried(worker)
                    for process in list(self._retired):
                        if process.sentinel in ready:
                            process.join(1.0)
                            self._retired.remove(process)
        except Exception:  # noqa: BLE001 - logged; problem() then reports the dead thread
            _log.exception("the worker pool's thread failed")

    def _start_workers(self) -> None:
        now = time.monotonic()
        while len(self._workers) < self.size and now >= self._next_start_at:
            parent_end, child_end = self._context.Pipe(duplex=True)
            process = self._context.Process(
                target=serve_tasks, name=self.name, daemon=True,
                args=(child_end, self._initializer, self._initargs, self._max_tasks, self.name))
            try:
                process.start()
            except Exception as err:  # noqa: BLE001 - fork/exec fails: out of memory, of pids
                parent_end.close()
                self._failed_start(f"starting a process failed: {type(err).__name__}: {err}")
                return
            finally:
                child_end.close()
            self._workers.append(_Worker(process, parent_end, now))

    def _expire_starts(self) -> None:
        now = time.monotonic()
        for worker in self._workers:
            if not worker.ready and now - worker.started_at > START_TIMEOUT_SECONDS:
                _log.warning("epoch worker %s not ready after %.0f s: killing it",
                             worker.process.pid, START_TIMEOUT_SECONDS)
                worker.kill()

    def _dispatch(self) -> None:
        for worker in self._workers:
            if not self._queue:
                return
            if worker.ready and worker.task is None and not worker.killed \
                    and worker.tasks_done < self._max_tasks:
                task = self._queue.popleft()
                if task.future.cancelled():
                    continue  # cancelled through the future itself
                try:
                    worker.conn.send((task.fn, task.args))
                except OSError:  # the worker is dead (its sentinel says so next): not run
                    self._queue.appendleft(task)
                    worker.hung_up = True
                    continue
                except Exception as err:  # noqa: BLE001 - unpicklable arguments fail this task
                    _finish(task, error=err)
                    continue
                worker.task = task

    def _receive(self, worker: _Worker) -> None:
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            worker.hung_up = True  # died: the sentinel tells
            return
        except Exception as err:  # noqa: BLE001 - a result that does not unpickle fails its task
            message = ("error", err, "", False)
        if message[0] == "ready":
            worker.ready = True
            self._failed_starts = 0
            return
        kind, payload, remote_traceback, retiring = message
        task, worker.task = worker.task, None
        worker.tasks_done += 1
        if task is not None:
            if kind == "ok":
                _finish(task, result=payload)
            else:
                _finish(task, error=_with_remote_traceback(payload, remote_traceback))
        if retiring or worker.tasks_done >= self._max_tasks:
            self._workers.remove(worker)  # it exits by itself; a new one starts now
            worker.conn.close()
            self._retired.append(worker.process)

    def _buried(self, worker: _Worker) -> None:
        """A worker process ended: fail its task (if any) and let another start."""
        if not worker.hung_up and worker.conn.poll():  # a result sent just before the end counts
            self._receive(worker)
            if worker not in self._workers:
                return
        worker.process.join(1.0)
        exitcode = worker.process.exitcode
        self._workers.remove(worker)
        worker.conn.close()
        task = worker.task
        if task is not None:
            if task.cancelled:
                _finish(task, error=TaskCancelled("the task was cancelled while it ran"))
            else:
                _log.warning("epoch worker %s died running a task (exit code %s)",
                             worker.process.pid, exitcode)
                _finish(task, error=WorkerDied(exitcode))
        elif not worker.ready and not self._closing:
            self._failed_start(str(WorkerDied(exitcode)).replace("while running the epoch",
                                                                 "while starting"))

    def _failed_start(self, reason: str) -> None:
        self._failed_starts += 1
        self._start_error = reason
        pause = min(30.0, 0.5 * 2 ** (self._failed_starts - 1))
        self._next_start_at = time.monotonic() + pause
        _log.error("an epoch worker failed to start (%s in a row, next try in %.1f s): %s",
                   self._failed_starts, pause, reason)

    def _close_step(self) -> bool:
        """One step of shutting down; True once every worker is gone."""
        past_deadline = time.monotonic() >= self._close_deadline
        for worker in list(self._workers):
            if worker.task is None or past_deadline:
                if worker.task is not None:
                    worker.task.cancelled = True
                if worker.process.is_alive():
                    worker.kill()
                worker.process.join(5.0)
                self._buried(worker)
        if past_deadline:
            for process in self._retired:
                if process.is_alive():
                    process.kill()
        for process in list(self._retired):
            process.join(0.0 if not past_deadline else 5.0)
            if not process.is_alive():
                self._retired.remove(process)
        return not self._workers and not self._retired


def _finish(task: _Task, *, result: Any = None, error: BaseException | None = None) -> None:
    if task.future.done():
        return
    if error is not None:
        task.future.set_exception(error)
    else:
        task.future.set_result(result)


class _RemoteTraceback(Exception):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


def _with_remote_traceback(err: BaseException, text: str) -> BaseException:
    if text:
        err.__cause__ = _RemoteTraceback(f'\n"""\n{text}"""')
    return err
