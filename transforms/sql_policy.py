"""What user SQL may say: one SELECT over ``events``, no server internals.

The check runs on DuckDB's own parse tree (``json_serialize_sql``), so it
sees every function call and table reference however the text spells it
(quotes, case, ``x.f()`` method syntax, subqueries, CTEs). It refuses:

- any statement but one SELECT (CTEs allowed);
- a table other than ``events`` or a CTE in scope: the catalog's views
  (``pg_catalog.pg_settings``, ``information_schema.*``), file paths, and
  Python replacement scans all arrive as such references;
- a table function outside a short allow-list (``range``, ``unnest``, ...):
  the others read the catalog, settings, files or logs (``duckdb_*``,
  ``pragma_*``, ``query``, ``read_*``, ``glob``, ``which_secret``);
- a scalar function or macro that reads settings or the environment or runs
  SQL from a string (``current_setting``, ``getenv``, ``version``,
  ``json_execute_serialized_sql``, ...).

External access off and the configuration lock (``transforms.sandbox``)
stay as the second wall; this one keeps the server's directories, version
and settings out of replies and files.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import duckdb

__all__ = ["ALLOWED_TABLE_FUNCTIONS", "DENIED_FUNCTION_PREFIXES", "DENIED_FUNCTIONS", "INPUT_TABLE",
           "SqlError", "check_sql", "clean_message"]

INPUT_TABLE = "events"

ALLOWED_TABLE_FUNCTIONS = frozenset({
    "range", "generate_series", "unnest", "json_each", "json_tree", "repeat", "repeat_row",
    "pg_timezone_names", "icu_calendar_names",
})
DENIED_FUNCTION_PREFIXES = ("duckdb_", "pragma_", "parquet_", "read_", "json_execute",
                            "json_serialize", "json_deserialize", "__internal")
DENIED_FUNCTIONS = frozenset({
    "current_setting", "getenv", "getvariable", "version", "platform", "user_agent",
    "extension_versions", "database_list", "database_size", "show_databases", "current_query",
    "query", "query_table", "which_secret", "glob", "sniff_csv", "checkpoint", "force_checkpoint",
    "enable_checkpoint_on_shutdown", "disable_checkpoint_on_shutdown", "enable_profiling",
    "disable_profiling", "enable_profile", "disable_profile", "enable_logging", "disable_logging",
    "truncate_duckdb_logs", "write_log", "copy_database", "import_database", "parse_duckdb_log_message",
})
_REFUSED_REFS = {"SHOW_REF": "DESCRIBE, SHOW and SUMMARIZE"}


class SqlError(ValueError):
    """The SQL is refused or failed; ``code`` says how, the message says why.

    Codes: ``invalid_sql`` (syntax, binding, types), ``refused`` (the
    sandbox's rules), ``memory_limit``, ``timeout``, ``output_limit`` (the
    result is larger than allowed), ``busy`` (too many isolated runs at once).
    """

    def __init__(self, message: str, code: str = "invalid_sql") -> None:
        super().__init__(message)
        self.code = code


def check_sql(sql: str) -> None:
    """Refuse anything but one SELECT that reads only ``events`` and allowed functions."""
    import duckdb  # here: the API imports this module for SqlError, and checks in a child

    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as err:
        raise SqlError(clean_message(err)) from None
    if len(statements) != 1:
        raise SqlError(f"sql must be exactly one SELECT statement, found {len(statements)}")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise SqlError(f"sql must be a SELECT statement, found {kind.name}")
    _walk(_parse_tree(sql))


def clean_message(err: BaseException) -> str:
    """DuckDB's message, short, without the quoted paths a reply must not carry."""
    text = str(err).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    short = " ".join(lines[:3])[:500]
    return _redact_paths(short)


def _redact_paths(text: str) -> str:
    out: list[str] = []
    for i, part in enumerate(text.split('"')):
        out.append("<path>" if i % 2 == 1 and part.startswith("/") else part)
    return '"'.join(out)


_PARSER: duckdb.DuckDBPyConnection | None = None


def _parse_tree(sql: str) -> Any:
    global _PARSER
    import duckdb

    if _PARSER is None:  # parsing only: no data, no settings of the server
        _PARSER = duckdb.connect(":memory:", config={"enable_external_access": False,
                                                     "autoload_known_extensions": False,
                                                     "autoinstall_known_extensions": False,
                                                     "threads": 1})
    row = _PARSER.cursor().execute("SELECT json_serialize_sql(?)", [sql]).fetchone()
    try:
        tree: dict[str, Any] = json.loads(row[0]) if row else {"error": True}
    except RecursionError:
        raise SqlError("sql is nested too deeply") from None
    if tree.get("error"):
        raise SqlError(f"sql could not be parsed: {tree.get('error_message', '')[:300]}")
    return tree


def _walk(tree: Any) -> None:
    """Check every node; iterative, so a deeply nested query cannot exhaust the stack."""
    stack: list[tuple[Any, frozenset[str]]] = [(tree, frozenset())]
    while stack:
        node, ctes = stack.pop()
        if isinstance(node, list):
            stack.extend((item, ctes) for item in node)
            continue
        if not isinstance(node, dict):
            continue
        cte_map = node.get("cte_map")
        if isinstance(cte_map, dict) and cte_map.get("map"):
            ctes = ctes | {str(entry.get("key", "")).lower() for entry in cte_map["map"]}
        kind = node.get("type")
        if kind == "BASE_TABLE":
            _check_table(node, ctes)
        elif kind == "TABLE_FUNCTION":
            name = str((node.get("function") or {}).get("function_name", "")).lower()
            if name not in ALLOWED_TABLE_FUNCTIONS:
                raise SqlError(f"sql may not call the table function {name!r}: reading files, "
                               "settings or the catalog is disabled; allowed are "
                               + ", ".join(sorted(ALLOWED_TABLE_FUNCTIONS)), "refused")
        elif isinstance(kind, str) and kind in _REFUSED_REFS:
            raise SqlError(f"sql may not use {_REFUSED_REFS[kind]}", "refused")
        if "function_name" in node:
            _check_function(str(node["function_name"]).lower())
        stack.extend((value, ctes) for value in node.values() if isinstance(value, (dict, list)))


def _check_table(node: dict[str, Any], ctes: frozenset[str]) -> None:
    name = str(node.get("table_name", ""))
    qualified = ".".join(p for p in (node.get("catalog_name"), node.get("schema_name"), name) if p)
    if qualified.lower() == INPUT_TABLE or qualified.lower() in ctes:
        return
    shown = "a file" if "/" in qualified or "." in name else repr(qualified)
    raise SqlError(f"sql may read only the table {INPUT_TABLE!r} and its own CTEs, "
                   f"not {shown}", "refused")


def _check_function(name: str) -> None:
    if name in DENIED_FUNCTIONS or name.startswith(DENIED_FUNCTION_PREFIXES):
        raise SqlError(f"sql may not call {name}(): it reads server settings or internals",
                       "refused")
