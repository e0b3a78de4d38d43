"""The dependency rules, checked on the source: the data plane knows nothing of the API.

``beam_pipelines`` and ``transforms`` import nothing of ``control_api``;
``transforms`` imports nothing of ``beam_pipelines``; and the API's own
tables (keys, webhooks and their outbox, idempotency records) are declared
in ``control_api`` only.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
API_TABLES = {"api_keys", "webhooks", "webhook_events", "webhook_deliveries", "webhook_attempts",
              "ingest_announcements", "idempotency_keys"}
API_WORDS = ("apikey", "webhook", "idempotency")


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at top level or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _package(module: str) -> str:
    return module.split(".", 1)[0]


@pytest.mark.parametrize(("package", "forbidden"), [
    ("beam_pipelines", {"control_api"}),
    ("transforms", {"control_api", "beam_pipelines"}),
])
def test_a_lower_package_imports_nothing_above_it(package: str, forbidden: set[str]) -> None:
    modules = _modules(package)
    assert modules, f"no modules under {package}/"
    upward = {f"{path.relative_to(ROOT)} imports {name}"
              for path in modules for name in _imports(path) if _package(name) in forbidden}
    assert not upward


def test_the_data_plane_declares_and_names_no_api_table() -> None:
    hits = []
    for path in _modules("beam_pipelines"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef) and any(w in node.name.lower() for w in API_WORDS):
                hits.append(f"{path.relative_to(ROOT)}: class {node.name}")
            elif isinstance(node, ast.Constant) and node.value in API_TABLES:
                hits.append(f"{path.relative_to(ROOT)}: table name {node.value!r}")
            elif isinstance(node, ast.Name | ast.Attribute):
                name = node.id if isinstance(node, ast.Name) else node.attr
                if any(w in name.lower() for w in API_WORDS):
                    hits.append(f"{path.relative_to(ROOT)}: {name}")
    assert not hits


def test_the_api_tables_are_made_with_the_data_planes_in_one_database(tmp_path: Path) -> None:
    from sqlalchemy import inspect

    from beam_pipelines.catalog.store import Store, default_database_url
    from control_api import tables

    store = Store(default_database_url(str(tmp_path)))
    try:
        tables.create_all(store)
        names = set(inspect(store.engine).get_table_names())
    finally:
        store.dispose()
    assert names >= API_TABLES
    assert {"pipelines", "sql_versions", "epochs", "epoch_files", "logs"} <= names


def test_the_api_and_the_job_manager_start_without_duckdb_or_beam(tmp_path: Path) -> None:
    """Neither runs user SQL or Beam in its own process: the SQL check and plan run in
    the isolated child, epochs in the workers, and decoding needs DuckDB only for a
    batch the fast path refused. Importing either would cost every API process and
    the manager ~20 MB (DuckDB) or ~90 MB (Beam) for nothing."""
    script = textwrap.dedent(f"""
        import sys
        from control_api import create_app
        create_app({{"DATA_DIR": {str(tmp_path / "data")!r},
                     "API_KEY": "pdo_layering_test_key_0123456789abcdef"}})
        from beam_pipelines.runners.engines import distributed_engines
        from beam_pipelines.runners.job_watcher import JobWatcher
        from beam_pipelines.runners.local.scheduler import JobManager
        from beam_pipelines.runners.local.supervisor import ManagerSupervisor
        from control_api.webhooks.dispatcher import WebhookDispatcher
        from control_api.webhooks.outbox import Outbox
        print(",".join(sorted({{"duckdb", "apache_beam"}} & set(sys.modules))))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == ""
