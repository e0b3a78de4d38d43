"""Tests start the real server through :mod:`control_api.devserver`."""

from control_api.devserver import LiveServer, free_port

__all__ = ["LiveServer", "free_port"]
