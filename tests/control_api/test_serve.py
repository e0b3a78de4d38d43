"""``pipeline-do serve`` start-up: the port is bound before anything else starts,
a taken port ends the command at once, and "listening" is printed only once the
API answers."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from typing import Any

import requests

from tests.conftest import ADMIN_KEY
from tests.live import free_port


def _serve(port: int, data_dir: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "control_api.cli", "serve", "--host", "127.0.0.1",
         "--port", str(port), "--data-dir", data_dir, "--job-workers", "1"],
        env={**os.environ, "PIPELINE_DO_API_KEY": ADMIN_KEY}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True)


def _stop(process: subprocess.Popen[str]) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def test_a_taken_port_exits_non_zero_at_once_with_a_clear_message(tmp_path: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = _serve(port, str(tmp_path))
        try:
            _stdout, stderr = process.communicate(timeout=60)
        finally:
            _stop(process)
        assert process.returncode != 0
        assert f"port {port} on 127.0.0.1 is in use" in stderr
        assert "listening" not in _stdout
        # the port still belongs to its owner: nothing was started on it
        assert taken.getsockname()[1] == port


def test_the_listening_line_comes_once_the_api_answers(tmp_path: Any) -> None:
    port = free_port()
    process = _serve(port, str(tmp_path))
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        seen: list[str] = []
        while not any("pipeline.do listening" in line for line in seen):
            try:
                seen.append(lines.get(timeout=120))
            except queue.Empty:
                raise AssertionError(f"no listening line; stdout so far: {seen}") from None
        # Asked once, at once: no retry loop here, since the line promises an answer.
        response = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=30)
        assert response.status_code == 200
        assert f"http://127.0.0.1:{port}" in seen[-1]
    finally:
        _stop(process)
    assert process.returncode == 0

