"""Tests start the real server through :mod:`control_api.devserver`, and poll it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from control_api.devserver import LiveServer, free_port

__all__ = ["LiveServer", "free_port", "wait_for"]


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
