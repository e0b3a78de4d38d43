"""Tests start the real server through :mod:`control_api.devserver`, poll it, and read
what it wrote back with DuckDB."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import duckdb
import psutil

from control_api.devserver import LiveServer, free_port

__all__ = ["LiveServer", "busy_epoch_workers", "free_port", "kill_busy_epoch_workers",
           "planned_epoch", "query", "wait_for"]


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.1,
             message: str = "condition") -> Any:
    """Poll until ``predicate`` returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {message}")
        time.sleep(interval)


def query(sql: str) -> list[tuple[Any, ...]]:
    """All rows of one query, run on a DuckDB connection of its own.

    Never DuckDB's shared default connection (``duckdb.sql``): a result left
    open on it breaks every later query of the test run.
    """
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        return con.execute(sql).fetchall()


def busy_epoch_workers(server: LiveServer) -> list[psutil.Process]:
    """Epoch workers running an epoch now (the pool names them ``pdo-epoch-busy``)."""
    assert server.process is not None
    busy = []
    for child in psutil.Process(server.process.pid).children(recursive=True):
        try:
            if child.name() == "pdo-epoch-busy":
                busy.append(child)
        except psutil.Error:
            pass  # ended while we looked
    return busy


def _halted(process: psutil.Process) -> str | None:
    """The process's status once it is stopped (SIGSTOP delivered) or a zombie, else None."""
    status = str(process.status())
    return status if status in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE) else None


def kill_busy_epoch_workers(server: LiveServer, at_most: int | None = None) -> list[psutil.Process]:
    """SIGKILL epoch workers that are running an epoch at the moment of the kill.

    A worker found busy may finish its epoch before the kill lands (a slow
    machine takes its time between the look and the signal), and killing an
    idle worker fails no epoch. So each is stopped (SIGSTOP) first, and killed
    only if its name still says busy; one that went idle meanwhile is let go.
    """
    killed: list[psutil.Process] = []
    for worker in busy_epoch_workers(server):
        if at_most is not None and len(killed) >= at_most:
            break
        try:
            worker.suspend()
            status = wait_for(lambda w=worker: _halted(w), timeout=30,  # type: ignore[misc]
                              interval=0.001, message="the worker to stop")
            if status == psutil.STATUS_STOPPED and worker.name() == "pdo-epoch-busy":
                worker.kill()
                killed.append(worker)
            else:
                worker.resume()
        except psutil.Error:
            pass  # ended while we looked
    return killed


def planned_epoch(data_dir: str) -> bool:
    """Whether the server's catalog holds an epoch planned and not yet committed."""
    con = sqlite3.connect(os.path.join(data_dir, "pipeline-do.sqlite"), timeout=10)
    try:
        return con.execute("SELECT count(*) FROM epochs WHERE status = 'planned'").fetchone()[0] > 0
    finally:
        con.close()
