"""User SQL cannot read the server's settings, catalog, environment or files.

The cases are generated from DuckDB's own function catalog, so a function a
DuckDB upgrade adds is checked without anyone listing it here.
"""

from __future__ import annotations

import os
import sys
import tempfile

import duckdb
import pyarrow as pa
import pytest

from beam_pipelines.model.definition import Field
from transforms.decode import arrow_schema
from transforms.sandbox import SqlError, plan_sql, run_sql, sandboxed_connection
from transforms.sql_policy import (
    ALLOWED_TABLE_FUNCTIONS,
    DENIED_FUNCTION_PREFIXES,
    DENIED_FUNCTIONS,
    check_sql,
    clean_message,
)

SCHEMA = arrow_schema([Field("user_id", "int64", True), Field("country", "string")])


def _catalog() -> list[tuple[str, str, int]]:
    """(name, type, number of parameters) of every function the sandbox's DuckDB has."""
    con = sandboxed_connection(threads=1)
    try:
        return sorted(set(con.sql(  # a test may read the catalog; user SQL may not
            "SELECT function_name, function_type, len(coalesce(parameters, [])) "
            "FROM duckdb_functions() WHERE function_name SIMILAR TO '[a-z_][a-z0-9_]*'").fetchall()))
    finally:
        con.close()


CATALOG = _catalog()
TABLE_FUNCTIONS = sorted({n for n, t, _ in CATALOG if t in ("table", "table_macro")})
DENIED_BY_NAME = sorted({n for n, t, _ in CATALOG if t not in ("table", "table_macro") and (
    n in DENIED_FUNCTIONS or n.startswith(DENIED_FUNCTION_PREFIXES))})
ZERO_ARGUMENT = sorted({(n, t) for n, t, k in CATALOG if k == 0})


def _refused(sql: str) -> SqlError:
    with pytest.raises(SqlError) as caught:
        plan_sql(sql, SCHEMA)
    assert caught.value.code == "refused", caught.value
    return caught.value


@pytest.mark.parametrize("name", [n for n in TABLE_FUNCTIONS if n not in ALLOWED_TABLE_FUNCTIONS])
def test_every_table_function_outside_the_allow_list_is_refused(name: str) -> None:
    for sql in (f"SELECT * FROM {name}()", f'SELECT * FROM "{name.upper()}"()',
                f"SELECT user_id FROM events WHERE user_id IN (SELECT 1 FROM main.{name}())",
                f"WITH x AS (SELECT * FROM {name}()) SELECT * FROM x"):
        assert name in str(_refused(sql))


@pytest.mark.parametrize("name", DENIED_BY_NAME)
def test_every_denied_scalar_function_or_macro_is_refused_however_it_is_spelled(name: str) -> None:
    for sql in (f"SELECT {name}() AS v", f'SELECT "{name.upper()}"() AS v',
                f"SELECT 'temp_directory'.{name}() AS v FROM events",
                f"SELECT list_transform([1], x -> {name}()) AS v",
                f"SELECT (SELECT max(country) FROM events WHERE country = {name}()) AS v"):
        assert name in str(_refused(sql))


def test_the_reported_leaks_are_refused() -> None:
    for sql, name in [("SELECT * FROM duckdb_settings()", "duckdb_settings"),
                      ("SELECT current_setting('temp_directory') AS t", "current_setting"),
                      ("SELECT * FROM duckdb_extensions()", "duckdb_extensions"),
                      ("SELECT path FROM duckdb_databases()", "duckdb_databases"),
                      ("SELECT * FROM pragma_database_size()", "pragma_database_size"),
                      ("SELECT getenv('HOME') AS h", "getenv"),
                      ("SELECT * FROM query('SELECT * FROM duckdb_settings()')", "query"),
                      ("SELECT json_execute_serialized_sql('{}') AS j", "json_execute_serialized_sql")]:
        assert name in str(_refused(sql))


@pytest.mark.parametrize("sql", [
    "SELECT * FROM pg_catalog.pg_settings",
    "SELECT * FROM information_schema.tables",
    "SELECT * FROM duckdb_settings",
    "SELECT * FROM sqlite_master",
    "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM 'data.parquet'",
    "SELECT * FROM memory.main.events",
    "SELECT * FROM SCHEMA",  # a Python variable of this module: no replacement scans
    # a CTE is visible only where it is defined
    "SELECT * FROM (WITH pg_settings AS (SELECT 1) SELECT * FROM pg_settings) x, pg_settings",
])
def test_only_events_and_ctes_in_scope_can_be_read(sql: str) -> None:
    assert "may read only the table 'events'" in str(_refused(sql))


def test_describe_show_and_summarize_are_refused() -> None:
    for sql in ("SELECT * FROM (DESCRIBE events)", "SELECT * FROM (SHOW ALL TABLES)",
                "SELECT * FROM (SUMMARIZE events)"):
        assert "DESCRIBE" in str(_refused(sql))


def test_ordinary_queries_pass_the_check() -> None:
    for sql in ["SELECT * FROM events",
                "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t WHERE n < 3) "
                "SELECT e.*, t.n FROM events e, t",
                "WITH a AS (SELECT * FROM events), b AS (SELECT * FROM a) SELECT * FROM b",
                "SELECT country, count(*) OVER (PARTITION BY country) AS n, "
                "list_transform([user_id], x -> x + 1) AS l, unnest([1, 2]) AS u FROM events "
                "QUALIFY n > 0",
                "SELECT * FROM events, range(3) r, generate_series(1, 2) g",
                "SELECT current_date AS d, now() AS t, uuid() AS u, upper(country) AS c FROM events",
                "SELECT * FROM events WHERE country IN (SELECT country FROM events LIMIT 1)",
                "FROM events SELECT * EXCLUDE (country)",
                "SELECT user_id FROM events UNION ALL BY NAME SELECT user_id FROM events",
                "SELECT * FROM events USING SAMPLE 10%",
                "SELECT a.user_id FROM events a ASOF JOIN events b ON a.user_id >= b.user_id",
                "SELECT [x + 1 for x in [user_id]] AS l, {'a': 1} AS s FROM events GROUP BY ALL",
                "SELECT * FROM events e JOIN LATERAL (SELECT e.user_id + 1 AS n) x ON true",
                "UNPIVOT (SELECT user_id, user_id AS b FROM events) ON user_id, b "
                "INTO NAME k VALUE v",
                "SELECT * FROM (VALUES (1, 'a')) t(x, y)"]:
        check_sql(sql)


@pytest.mark.parametrize("depth", [10, 300, 900, 5000])
def test_deeply_nested_sql_is_checked_or_refused_never_a_crash(depth: int) -> None:
    for sql in ("SELECT " + "abs(" * depth + "1" + ")" * depth + " AS x",
                "SELECT 1 AS x FROM " + "(SELECT 1 FROM " * depth + "events" + ") t" * depth,
                "SELECT 1 AS x FROM " + "(SELECT 1 FROM " * depth + "pg_settings" + ") t" * depth):
        try:
            check_sql(sql)
        except SqlError as err:
            assert err.code in ("invalid_sql", "refused")
        else:
            assert "pg_settings" not in sql


def _server_paths() -> list[str]:
    paths = {os.getcwd(), os.path.expanduser("~"), tempfile.gettempdir(), sys.prefix,
             os.path.dirname(duckdb.__file__), "/root", "/home"}
    return sorted(p for p in paths if p not in ("", "/"))


@pytest.mark.parametrize(("name", "kind"), ZERO_ARGUMENT)
def test_no_function_the_sandbox_allows_shows_a_server_path(name: str, kind: str) -> None:
    sql = (f"SELECT * FROM {name}()" if kind in ("table", "table_macro")
           else f"SELECT {name}() AS v FROM events")
    try:
        check_sql(sql)
    except SqlError as err:
        assert err.code == "refused"
        return
    con = sandboxed_connection(threads=1)
    try:
        text = str(run_sql(con, sql, pa.table({"user_id": [1]}), 10.0).to_pylist())
    except SqlError as err:  # it may fail (wrong use); then its message must be clean too
        text = str(err)
    finally:
        con.close()
    assert not [p for p in _server_paths() if p in text], text


def test_error_messages_lose_quoted_paths() -> None:
    err = duckdb.PermissionException(
        'Permission Error: Cannot access directory "/root/.duckdb/stored_secrets" - disabled')
    assert clean_message(err) == ('Permission Error: Cannot access directory "<path>" - '
                                  "disabled")
