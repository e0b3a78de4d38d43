"""User SQL runs sandboxed: one SELECT, no files, no network, no settings."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest

from beam_pipelines.model.definition import Field
from transforms.decode import arrow_schema
from transforms.sandbox import (
    _POOL_SIZE,
    SqlError,
    borrow_connection,
    plan_sql,
    return_connection,
    run_sql,
    sandboxed_connection,
)
from transforms.sql import POOL_MAX_INPUT_ROWS, _DuckDbSqlFn

SCHEMA = arrow_schema([Field("user_id", "int64", True), Field("country", "string")])


def test_plan_yields_the_output_schema() -> None:
    out = plan_sql("SELECT user_id * 2 AS doubled, upper(country) AS c, _event_time FROM events "
                   "WHERE user_id > 1", SCHEMA)
    assert [(f.name, str(f.type)) for f in out] == [
        ("doubled", "int64"), ("c", "string"), ("_event_time", "timestamp[us, tz=UTC]")]


def test_ctes_are_allowed() -> None:
    out = plan_sql("WITH x AS (SELECT user_id FROM events) SELECT count(*) AS n FROM x", SCHEMA)
    assert out.names == ["n"]


@pytest.mark.parametrize(("sql", "text"), [
    ("DELETE FROM events", "must be a SELECT"),
    ("SELECT 1; SELECT 2", "exactly one"),
    ("SELECT * FROM read_csv('/etc/passwd')", "disabled"),
    ("SELECT * FROM read_parquet('http://example.com/x.parquet')", "disabled"),
    ("SELECT nope FROM events", "nope"),
    ("SELECT * FROM other_table", "other_table"),
    ("ATTACH 'x.db'", "must be a SELECT"),
    ("SET enable_external_access = true", "must be a SELECT"),
    ("COPY events TO '/tmp/x.csv'", "must be a SELECT"),
    ("SELEC 1", "syntax"),
])
def test_everything_but_one_select_over_events_is_refused(sql: str, text: str) -> None:
    with pytest.raises(SqlError) as caught:
        plan_sql(sql, SCHEMA)
    assert text.lower() in str(caught.value).lower()


def test_configuration_is_locked() -> None:
    con = sandboxed_connection()
    with pytest.raises(Exception, match="configuration"):
        con.execute("SET enable_external_access = true")
    table = pa.table({"user_id": [1, 2, 3]})
    assert run_sql(con, "SELECT sum(user_id) AS s FROM events", table).to_pylist() == [{"s": 6}]


def test_a_runaway_query_is_interrupted() -> None:
    con = sandboxed_connection()
    table = pa.table({"user_id": [1]})
    with pytest.raises(SqlError, match="longer than"):
        run_sql(con, "SELECT count(*) FROM range(100000000000) a", table, timeout_seconds=0.5)


def test_memory_is_bounded() -> None:
    con = sandboxed_connection(memory_limit="64MB")
    with pytest.raises(Exception, match=r"(?i)memory"):
        run_sql(con, "SELECT list(range) FROM range(100000000) GROUP BY range % 2",
                pa.table({"user_id": [1]}))


def test_a_pooled_connection_serves_only_its_own_key_and_the_pool_is_bounded() -> None:
    events = pa.table({"user_id": [1, 2, 3]})
    first = borrow_connection("plan-a")
    assert run_sql(first, "SELECT sum(user_id) AS s FROM events", events).to_pylist() == [{"s": 6}]
    return_connection("plan-a", first)
    assert borrow_connection("plan-b") is not first  # another pipeline's plan: a new one
    again = borrow_connection("plan-a")
    assert again is first
    # What the last query registered is gone; the lock on settings still holds.
    with pytest.raises(duckdb.CatalogException):
        again.sql("SELECT * FROM events")
    with pytest.raises(duckdb.Error, match="locked"):
        again.execute("SET enable_external_access = true")
    return_connection("plan-a", again)
    others = [borrow_connection(f"plan-{k}") for k in range(_POOL_SIZE)]
    for k, con in enumerate(others):
        return_connection(f"plan-{k}", con)
    with pytest.raises(duckdb.ConnectionException):  # the least recently used was closed
        first.sql("SELECT 1")
    assert borrow_connection("plan-a") is not first


def test_a_connection_is_kept_only_after_a_small_query_that_ended_normally() -> None:
    fn = _DuckDbSqlFn("SELECT CAST(country AS INTEGER) AS n FROM events", 60.0, "plan-failing")
    fn.setup()
    used = fn._con
    with pytest.raises(Exception, match="Could not convert"):
        list(fn.process(pa.table({"country": ["de"]})))
    fn.teardown()
    assert borrow_connection("plan-failing") is not used
    fine = _DuckDbSqlFn("SELECT upper(country) AS c FROM events", 60.0, "plan-fine")
    fine.setup()
    kept = fine._con
    assert [t.to_pylist() for t in fine.process(pa.table({"country": ["de"]}))] == [[{"c": "DE"}]]
    fine.teardown()
    assert borrow_connection("plan-fine") is kept
    # After a large input the connection is closed: it would keep what that query held.
    large = _DuckDbSqlFn("SELECT count(*) AS n FROM events", 60.0, "plan-large")
    large.setup()
    used = large._con
    rows = pa.table({"n": pa.array(range(POOL_MAX_INPUT_ROWS + 1), pa.int64())})
    assert [t.to_pylist() for t in large.process(rows)] == [[{"n": POOL_MAX_INPUT_ROWS + 1}]]
    large.teardown()
    assert borrow_connection("plan-large") is not used
