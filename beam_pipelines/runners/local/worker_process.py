"""The worker process's side of :class:`beam_pipelines.runners.local.workers.WorkerPool`.

A worker runs the pool's initializer, says it is ready, then runs one call
at a time from its pipe and sends back the result or the exception (with
its traceback text). It exits when the pipe closes, after its last allowed
task, or after a task that left it near its memory cap. Its ``comm`` name
(``ps``, ``top``) says whether it is running a task: ``pdo-epoch-busy``.
"""

from __future__ import annotations

import pickle
import resource
import signal
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["serve_tasks"]


def serve_tasks(conn: Connection, initializer: Callable[..., object], initargs: tuple[Any, ...],
                max_tasks: int, name: str) -> None:
    # Ctrl-C reaches the whole process group; the parent shuts workers down in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    initializer(*initargs)
    _set_process_name(f"{name}-idle")
    conn.send(("ready",))
    for _ in range(max_tasks):
        try:
            call = conn.recv()
        except EOFError:
            return  # the pool is gone
        fn, args = call
        _set_process_name(f"{name}-busy")
        try:
            reply: tuple[Any, ...] = ("ok", fn(*args), "")
        except BaseException as err:  # noqa: BLE001 - every failure goes back to the caller
            reply = ("error", _portable(err), traceback.format_exc())
        _set_process_name(f"{name}-idle")
        retiring = _near_memory_cap()
        try:
            conn.send((*reply, retiring))
        except Exception as err:  # noqa: BLE001 - pickling happens before anything is sent
            conn.send(("error", RuntimeError(f"the task's result could not be sent back: "
                                             f"{type(err).__name__}: {err}"), "", retiring))
        if retiring:
            return


# A worker whose private memory is past this share of its cap after a task retires.
_RETIRE_AT_SHARE_OF_CAP = 0.75


def _near_memory_cap() -> bool:
    cap, _hard = resource.getrlimit(resource.RLIMIT_DATA)
    if cap == resource.RLIM_INFINITY:
        return False
    try:
        with open("/proc/self/status") as status:
            used_kb = next(int(line.split()[1]) for line in status if line.startswith("VmData:"))
    except (OSError, StopIteration, ValueError):
        return False
    return used_kb * 1024 >= cap * _RETIRE_AT_SHARE_OF_CAP


def _portable(err: BaseException) -> BaseException:
    """``err``, or a RuntimeError saying what it was when it does not survive pickling
    (an exception whose ``__init__`` takes other arguments than ``args``)."""
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(err).__name__}: {err}")


def _set_process_name(name: str) -> None:
    """Shown by ``ps``/``top`` (Linux ``comm``, 15 characters): which epoch workers are busy."""
    try:
        with open("/proc/self/comm", "w") as comm:
            comm.write(name[:15])
    except OSError:
        pass
