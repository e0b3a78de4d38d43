"""User SQL for the API (plan, dry run) in a short-lived child process.

DuckDB's ``memory_limit`` bounds its buffer manager only: a cross join's
Arrow result, a list built by ``list()``/``range()``, a recursive CTE's
state and constant folding at plan time all allocate outside it (one dry
run grew an API worker to 22.9 GB). So the API never runs, nor even parses,
user SQL in its own process, and never imports DuckDB for it. Each plan or
dry run forks a child from a forkserver that has DuckDB and pyarrow
imported already; the child caps its data segment (``limit_process_memory``:
what it uses plus ``PIPELINE_DO_SQL_MEMORY_MB``), checks the SQL
(``transforms.sql_policy``), runs it with a row limit and a result cap, and
sends back Arrow IPC.
The parent waits at most ``PIPELINE_DO_DRY_RUN_TIMEOUT_SECONDS`` and then
kills it, reads at most ``_MAX_REPLY_BYTES`` from it, and turns every end
(error, death, timeout) into a ``SqlError`` with a code. The API worker's
memory stays flat whatever the SQL does.

At most ``_MAX_CHILDREN`` run at once per API process; a caller that finds
no slot within the timeout gets ``SqlError`` code ``busy``.

The forkserver (and the resource tracker it starts) stops once no plan or
dry run has run for ``IDLE_STOP_SECONDS`` (3 s): plans come with ``create``
and ``transform``, a few at a time, and dry runs with a person at the
console, so most of the time an API process needs neither. Each process
that planned held ~85 MB (server and tracker) for good, and for 10 s after
its last plan with the first idle stop: in ``make bench`` both API
processes' servers were still alive at the peak, ~170 MB of it. The next
call after an idle stop starts them again (~0.5 s): a person running dry
runs a few seconds apart keeps the same server.

Cost, measured on this 2-core machine: the forkserver starts on the first
call in an API process (~0.5 s; then it holds ~73 MB RSS, 26 MB of it unshared); each
plan or dry run then takes ~40 ms where planning in-process took ~15 ms.
A forked child needs the parent's ``__main__`` to be importable without
side effects (gunicorn's and pytest's are; a script needs the usual
``if __name__ == "__main__"`` guard).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing import forkserver, resource_tracker
from multiprocessing.connection import Connection
from typing import Any

import pyarrow as pa

from transforms.limits import (
    DRY_RUN_TIMEOUT_SECONDS,
    SQL_MEMORY_MB,
    duckdb_memory_limit,
    limit_process_memory,
    memory_budget_error,
)
from transforms.sql_policy import SqlError, check_sql, clean_message

__all__ = ["IDLE_STOP_SECONDS", "dry_run_isolated", "forkserver_pid", "plan_isolated"]

# A dry run's reply is a page of rows for a person to look at.
_MAX_REPLY_BYTES = 16 << 20
_MAX_HEADER_BYTES = 16384
_MAX_CHILDREN = 2
IDLE_STOP_SECONDS = 3.0
_slots = threading.BoundedSemaphore(_MAX_CHILDREN)
_context_lock = threading.Lock()
_context: Any = None
_running = 0  # children started and not yet ended (under _context_lock)
_last_end = 0.0
_idle_timer: threading.Timer | None = None
# The process's forkserver (what the "forkserver" context starts) and the
# resource tracker it starts, for their stop.
_FORKSERVER: Any = forkserver._forkserver
_TRACKER: Any = resource_tracker._resource_tracker


def plan_isolated(sql: str, input_schema: pa.Schema, *, memory_mb: int | None = None,
                  timeout_seconds: float | None = None) -> pa.Schema:
    """``plan_sql`` in a bounded child process: the output schema, or ``SqlError``."""
    reply = _run_child(sql, input_schema.empty_table(), 0, memory_mb, timeout_seconds)
    return reply.schema


def dry_run_isolated(sql: str, events: pa.Table, limit: int, *, memory_mb: int | None = None,
                     timeout_seconds: float | None = None) -> pa.Table:
    """At most ``limit`` rows of ``sql`` over ``events``, run in a bounded child process."""
    return _run_child(sql, events, limit, memory_mb, timeout_seconds)


def _run_child(sql: str, events: pa.Table, limit: int, memory_mb: int | None,
               timeout_seconds: float | None) -> pa.Table:
    budget = memory_mb or SQL_MEMORY_MB
    timeout = timeout_seconds or DRY_RUN_TIMEOUT_SECONDS
    if not _slots.acquire(timeout=timeout):
        raise SqlError(f"more than {_MAX_CHILDREN} SQL plans or dry runs are running on this "
                       "server process; try again shortly", "busy")
    try:
        context = _begin_child()
        try:
            return _supervise(context, sql, _to_ipc(events), limit, budget, timeout)
        finally:
            _end_child()
    finally:
        _slots.release()


def _supervise(context: Any, sql: str, payload: bytes, limit: int, budget: int,
               timeout: float) -> pa.Table:
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child_main, args=(send, sql, payload, limit, budget),
                            name="pipeline-do-sql", daemon=True)
    child.start()
    send.close()
    try:
        if not receive.poll(timeout):
            raise SqlError(f"the SQL ran longer than {timeout:g} s and was stopped", "timeout")
        # JSON, not pickle: nothing from the process that ran user SQL is unpickled here
        status, code, message = json.loads(receive.recv_bytes(_MAX_HEADER_BYTES))
        if status == "error":
            raise SqlError(message, code)
        return _from_ipc(receive.recv_bytes(_MAX_REPLY_BYTES))
    except (EOFError, OSError):  # it died before answering, or the reply was too large
        child.join(1.0)
        raise _child_failure(child.exitcode, budget) from None
    finally:
        if child.is_alive():
            child.kill()
        child.join(5.0)
        receive.close()


def _child_failure(exitcode: int | None, budget: int) -> SqlError:
    if exitcode is None:  # still alive: the reply itself was over the limit
        return SqlError(f"the dry run's rows are larger than {_MAX_REPLY_BYTES >> 20} MB: "
                        "ask for fewer rows or columns", "output_limit")
    if exitcode in (-signal.SIGKILL, -signal.SIGABRT, -signal.SIGSEGV, -signal.SIGBUS):
        # an allocation that failed where nothing could report it (C++ terminate)
        return memory_budget_error(budget)
    return SqlError(f"the SQL stopped its process (exit code {exitcode})", "invalid_sql")


def _child_main(send: Connection, sql: str, payload: bytes, limit: int,
                budget: int) -> None:
    """In the child: bound the process, check the SQL, run, answer once, exit.

    The check is here, not in the parent: parsing user SQL takes DuckDB,
    which the API process then never imports (~20 MB) nor keeps a parser
    connection of, and a parse tree of any size is built under the cap.
    """
    from transforms.sandbox import run_sql, sandboxed_connection  # preloaded in the server

    try:
        os.chdir("/")  # nothing the SQL might show names the server's directories
        limit_process_memory(budget)
        check_sql(sql)
        events = _from_ipc(payload)
        del payload
        # A plan is a run over no rows with LIMIT 0.
        con = sandboxed_connection(threads=1, memory_limit=duckdb_memory_limit(budget))
        table = run_sql(con, sql, events, max_rows=limit, memory_mb=budget,
                        max_output_mb=_MAX_REPLY_BYTES >> 20)
        reply = _to_ipc(table)
        _answer(send, "ok", "", "")
        send.send_bytes(reply)
    except SqlError as err:
        _answer(send, "error", err.code, str(err))
    except MemoryError:
        _answer(send, "error", "memory_limit", str(memory_budget_error(budget)))
    except Exception as err:  # noqa: BLE001 - the parent answers it; nothing else can
        _answer(send, "error", "invalid_sql", clean_message(err))
    finally:
        send.close()


def _answer(send: Connection, status: str, code: str, message: str) -> None:
    send.send_bytes(json.dumps([status, code, message[:1000]]).encode())


def _begin_child() -> Any:
    """The forkserver context, counting one more child: one server per process
    imports DuckDB (``transforms.sandbox``) and pyarrow once; each child is a fork of it, without the
    threads and memory of the API. A stop in progress finishes first (the lock),
    and none starts while a child runs (the count)."""
    global _context, _running
    with _context_lock:
        if _context is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["transforms.isolation", "transforms.sandbox"])
            _context = context
        _running += 1
        return _context


def _end_child() -> None:
    global _running, _last_end, _idle_timer
    with _context_lock:
        _running -= 1
        _last_end = time.monotonic()
        if _running == 0 and _idle_timer is None:
            _arm_idle_timer(IDLE_STOP_SECONDS)


def _arm_idle_timer(delay: float) -> None:
    global _idle_timer
    _idle_timer = threading.Timer(delay, _stop_when_idle)
    _idle_timer.daemon = True
    _idle_timer.start()


def _stop_when_idle() -> None:
    """Stop the forkserver if nothing ran for ``IDLE_STOP_SECONDS``;
    otherwise look again when that time is up."""
    global _idle_timer
    with _context_lock:
        _idle_timer = None
        if _running:
            return  # the last child to end starts the next timer
        wait = _last_end + IDLE_STOP_SECONDS - time.monotonic()
        if wait > 0:
            _arm_idle_timer(wait)
            return
        # The standard library's own stop (its tests use it); the next
        # ``Process.start`` runs ``ensure_running`` again, for both.
        _FORKSERVER._stop()
        # The forkserver started the resource tracker (12 MB) and it is its
        # only user in an API process. Where other multiprocessing children
        # live (the job manager's epoch workers), they share the tracker and
        # it stays.
        if not multiprocessing.active_children():
            _TRACKER._stop()


def forkserver_pid() -> int | None:
    """The running forkserver's pid, or None (for tests and diagnostics)."""
    pid: int | None = _FORKSERVER._forkserver_pid
    return pid


def _to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()
