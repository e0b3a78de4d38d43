"""Shared fixtures: an app on a temp data dir, a real server, a job manager."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.live import LiveServer
from tests.servers import PubSubEmulator

ADMIN_KEY = "pdo_test_admin_key_0123456789"


@pytest.fixture
def app(tmp_path: Any) -> Any:
    from control_api import create_app

    return create_app({"DATA_DIR": str(tmp_path / "data"), "API_KEY": ADMIN_KEY,
                       "RATE_LIMIT": 0, "TESTING": True})


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
def live_server(tmp_path: Any) -> Iterator[LiveServer]:
    data_dir = tmp_path / "server"
    data_dir.mkdir()
    server = LiveServer(str(data_dir), api_key=ADMIN_KEY).start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="session")
def pubsub_emulator() -> Iterator[PubSubEmulator]:
    """Google's Pub/Sub emulator on loopback, shared by the session's tests; they skip,
    saying why, on a machine without it."""
    if not PubSubEmulator.available():
        pytest.skip("the Pub/Sub emulator is not installed here (Debian package "
                    "google-cloud-cli-pubsub-emulator, and java)")
    with PubSubEmulator() as server:
        yield server
