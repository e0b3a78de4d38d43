"""Settings: every ``PIPELINE_DO_*`` variable is read once, by a known reader, into typed settings."""

from __future__ import annotations

import ast
import dataclasses
import os
from pathlib import Path

import pytest

from control_api.config import ENV_NAMES, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("beam_pipelines", "control_api", "transforms")
#: The modules allowed to read the environment: the server's settings, the
#: data plane's and the transforms' readers for the worker processes they run
#: in, and the client (a separate program with its own two variables).
READERS = {"control_api/config.py", "beam_pipelines/settings.py", "transforms/limits.py",
           "control_api/client.py"}
CLIENT_ENV_NAMES = {"PIPELINE_DO_URL", "PIPELINE_DO_API_KEY"}
#: Modules of other steps of the redesign that still read their variable
#: themselves; each is to call ``beam_pipelines.settings.data_plane_settings()``.
PENDING_READERS: set[str] = set()


def _sources() -> list[tuple[str, ast.Module]]:
    return [(str(path.relative_to(ROOT)), ast.parse(path.read_text(), str(path)))
            for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))]


def _env_names(tree: ast.Module) -> set[str]:
    """Each ``PIPELINE_DO_*`` name written as a whole string in the code (not in prose)."""
    return {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
            and isinstance(node.value, str) and node.value.startswith("PIPELINE_DO_")
            and node.value.replace("_", "").isalnum() and node.value.isupper()}


def _constants(tree: ast.Module) -> dict[str, str]:
    return {target.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
            for target in node.targets if isinstance(target, ast.Name)}


def _is_environ(node: ast.expr) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "environ" \
        and isinstance(node.value, ast.Name) and node.value.id == "os"


def _environment_reads(tree: ast.Module) -> set[str]:
    """The ``PIPELINE_DO_*`` variables read through ``os.environ`` or ``os.getenv``."""
    constants = _constants(tree)
    read: set[str] = set()
    for node in ast.walk(tree):
        key: ast.expr | None = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            if (node.func.attr == "get" and _is_environ(node.func.value)) or (
                    node.func.attr == "getenv" and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "os"):
                key = node.args[0]
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) \
                and _is_environ(node.value):
            key = node.slice
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            read.add(key.value)
        elif isinstance(key, ast.Name) and key.id in constants:
            read.add(constants[key.id])
    return {name for name in read if name.startswith("PIPELINE_DO_")}


def test_every_variable_the_code_names_is_a_setting() -> None:
    unknown = {f"{path}: {name}" for path, tree in _sources()
               for name in _env_names(tree) - set(ENV_NAMES) - CLIENT_ENV_NAMES}
    assert not unknown


def test_only_the_readers_read_the_environment() -> None:
    outside = {f"{path} reads {sorted(names)}" for path, tree in _sources()
               if (names := _environment_reads(tree)) and path not in READERS | PENDING_READERS}
    assert not outside


def test_every_setting_is_read_by_a_reader() -> None:
    named = set().union(*(_env_names(tree) for path, tree in _sources()
                          if path in READERS | PENDING_READERS))
    assert set(ENV_NAMES) <= named
    assert len(ENV_NAMES) == len(set(ENV_NAMES))


def test_settings_come_from_the_environment_then_the_overrides(tmp_path: Path) -> None:
    env = {"PIPELINE_DO_DATA_DIR": str(tmp_path / "env"), "PIPELINE_DO_RATE_LIMIT": "7",
           "PIPELINE_DO_MAX_BODY_BYTES": "2048", "PIPELINE_DO_WEBHOOK_ALLOW_PRIVATE": "yes",
           "PIPELINE_DO_WEBHOOK_RETRY_SECONDS": "0.5", "PIPELINE_DO_EPOCH_MAX_ATTEMPTS": "3",
           "PIPELINE_DO_LOCAL_SINK_ROOTS": os.pathsep.join(["/srv/a", "/srv/b/"]),
           "PIPELINE_DO_SECRET_KEY": "k"}
    settings = load_settings({"RATE_LIMIT": 0}, environ=env)
    assert settings.data_dir == str(tmp_path / "env")
    assert settings.database_url.endswith(os.path.join(str(tmp_path / "env"), "pipeline-do.sqlite"))
    assert (settings.rate_limit, settings.max_body_bytes) == (0, 2048)
    assert (settings.webhook_allow_private, settings.webhook_retry_seconds) == (True, 0.5)
    assert settings.webhook_ingested_interval == 10.0
    assert settings.local_sink_roots == ("/srv/a", "/srv/b")
    assert settings.secret_key == "k"
    assert (settings.data_plane.epoch_max_attempts,
            settings.data_plane.epoch_max_transient_attempts) == (3, 30)
    assert settings.flask_config()["MAX_CONTENT_LENGTH"] == 2048
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.rate_limit = 5  # type: ignore[misc]


def test_defaults_without_any_variable(tmp_path: Path) -> None:
    settings = load_settings({"DATA_DIR": str(tmp_path)}, environ={})
    assert settings == Settings(data_dir=str(tmp_path), database_url=settings.database_url)
    assert not settings.run_job_manager and not settings.webhook_allow_private


@pytest.mark.parametrize(("name", "value", "message"), [
    ("PIPELINE_DO_RATE_LIMIT", "lots", "PIPELINE_DO_RATE_LIMIT must be an integer, got 'lots'"),
    ("PIPELINE_DO_MAX_BODY_BYTES", "0", "PIPELINE_DO_MAX_BODY_BYTES must be at least 1, got 0"),
    ("PIPELINE_DO_WEBHOOK_RETRY_SECONDS", "soon",
     "PIPELINE_DO_WEBHOOK_RETRY_SECONDS must be a number, got 'soon'"),
    ("PIPELINE_DO_LOCAL_SINK_ROOTS", "relative/dir", "PIPELINE_DO_LOCAL_SINK_ROOTS must list"),
])
def test_a_malformed_variable_stops_the_server_naming_it(tmp_path: Path, name: str, value: str,
                                                         message: str) -> None:
    with pytest.raises(SystemExit, match=message.replace("(", r"\(")):
        load_settings({"DATA_DIR": str(tmp_path)}, environ={name: value})
