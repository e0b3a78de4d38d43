"""Runaway user SQL ends as a clean ``SqlError`` within its bounds, in the epoch
step and in the API's isolated child alike, and the calling process stays flat.

Bounds are small (256 MB, a few seconds) so the runaways end in seconds.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import textwrap
import time
from multiprocessing import resource_tracker

import psutil
import pyarrow as pa
import pytest

from transforms import isolation
from transforms.isolation import dry_run_isolated, plan_isolated
from transforms.sandbox import SqlError, run_sql, sandboxed_connection, sql_chunks
from transforms.sql import _DuckDbSqlFn

BUDGET_MB = 256
TIMEOUT_S = 5.0
EVENTS = pa.table({"user_id": pa.array(range(2000), pa.int64()),
                   "country": pa.array(["de", "fr"] * 1000)})

# Each one grew a process without bound before: a cross join whose result is
# materialized, a recursive CTE that doubles, lists and strings built outside
# DuckDB's buffer manager, and a recursive CTE that never ends.
RUNAWAYS = [
    "SELECT a.*, b.user_id AS b, c.user_id AS c FROM events a, events b, events c",
    "SELECT a.*, b.user_id AS b, c.user_id AS c FROM events a, events b, events c "
    "ORDER BY a.user_id + b.user_id + c.user_id",
    "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t, range(2)) SELECT * FROM t",
    "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t, range(2)) "
    "SELECT count(*) AS n FROM t",
    "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT max(n) AS n FROM t",
    "SELECT list(range) AS l FROM range(1000000000) GROUP BY range % 2",
    "SELECT repeat(a.country, 100000) AS s FROM events a, events b",
    "SELECT length(string_agg(repeat('x', 100), ',')) AS n FROM events a, events b, events c",
]
BOUND_CODES = {"memory_limit", "timeout", "output_limit"}


@pytest.mark.parametrize("sql", RUNAWAYS)
def test_a_runaway_dry_run_ends_cleanly_and_the_caller_stays_flat(sql: str) -> None:
    me = psutil.Process()
    dry_run_isolated("SELECT * FROM events", EVENTS, 10)  # the forkserver is up
    before = me.memory_info().rss
    try:
        rows = dry_run_isolated(sql, EVENTS, 100, memory_mb=BUDGET_MB, timeout_seconds=TIMEOUT_S)
    except SqlError as err:
        assert err.code in BOUND_CODES, err
        assert "Traceback" not in str(err) and "\n" not in str(err)
    else:  # a LIMIT that DuckDB could push into the query is an answer too
        assert rows.num_rows <= 100
    assert me.memory_info().rss - before < 64 << 20


def test_a_dry_run_answers_at_most_its_limit_and_the_rows_of_the_sql() -> None:
    rows = dry_run_isolated("SELECT user_id * 2 AS x FROM events ORDER BY x", EVENTS, 3)
    assert rows.to_pylist() == [{"x": 0}, {"x": 2}, {"x": 4}]
    endless = dry_run_isolated("SELECT a.user_id FROM events a, events b, events c", EVENTS, 7,
                               memory_mb=BUDGET_MB, timeout_seconds=TIMEOUT_S)
    assert endless.num_rows == 7


def test_planning_is_bounded_too() -> None:
    """Constant folding runs at plan time: it must not fold in the API's memory."""
    schema = plan_isolated("SELECT list_sum(range(2000000000)) AS s, user_id FROM events",
                           EVENTS.schema, memory_mb=BUDGET_MB, timeout_seconds=TIMEOUT_S)
    assert schema.names == ["s", "user_id"]
    with pytest.raises(SqlError) as caught:
        plan_isolated("SELECT nope FROM events", EVENTS.schema)
    assert caught.value.code == "invalid_sql" and "nope" in str(caught.value)
    with pytest.raises(SqlError) as caught:
        plan_isolated("SELECT * FROM duckdb_settings()", EVENTS.schema)
    assert caught.value.code == "refused"


def _tracker_pid() -> int | None:
    """This process's multiprocessing resource tracker, or None."""
    pid: int | None = resource_tracker._resource_tracker._pid  # type: ignore[attr-defined]
    return pid


def test_the_forkserver_stops_when_idle_and_the_next_plan_starts_it_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An API process holds the forkserver and its resource tracker only while it plans."""
    monkeypatch.setattr(isolation, "IDLE_STOP_SECONDS", 0.3)
    assert not multiprocessing.active_children()  # else the tracker is shared and stays
    assert plan_isolated("SELECT user_id FROM events", EVENTS.schema).names == ["user_id"]
    first = isolation.forkserver_pid()
    tracker = _tracker_pid()
    assert first is not None and psutil.pid_exists(first) and tracker is not None
    # Calls closer together than the idle time keep it: the same server answers.
    for _ in range(3):
        dry_run_isolated("SELECT country FROM events", EVENTS, 1)
        time.sleep(0.1)
    assert isolation.forkserver_pid() == first
    deadline = time.monotonic() + 10
    while isolation.forkserver_pid() is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert isolation.forkserver_pid() is None
    assert not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE
    assert _tracker_pid() is None and not psutil.pid_exists(tracker)
    rows = dry_run_isolated("SELECT user_id * 2 AS x FROM events ORDER BY x", EVENTS, 2)
    assert rows.to_pylist() == [{"x": 0}, {"x": 2}]
    assert isolation.forkserver_pid() not in (None, first)


def test_the_idle_stop_keeps_a_resource_tracker_that_other_children_share(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """In the job manager's process the epoch workers use the same tracker: it stays."""
    monkeypatch.setattr(isolation, "IDLE_STOP_SECONDS", 0.3)
    other = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(30,))
    other.start()
    try:
        dry_run_isolated("SELECT country FROM events", EVENTS, 1)
        tracker = _tracker_pid()
        deadline = time.monotonic() + 10
        while isolation.forkserver_pid() is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert isolation.forkserver_pid() is None
        assert tracker is not None and _tracker_pid() == tracker
        assert psutil.pid_exists(tracker)
    finally:
        other.kill()
        other.join(10)


@pytest.mark.parametrize("sql", RUNAWAYS)
def test_the_epoch_step_stops_a_runaway_query(sql: str) -> None:
    """In a process of its own with the epoch worker's cap, so a miss shows as a crash."""
    script = textwrap.dedent(f"""
        import pyarrow as pa
        from transforms.limits import limit_process_memory
        from transforms.sandbox import SqlError, run_sql, sandboxed_connection
        limit_process_memory({2 * BUDGET_MB})  # the job manager's worker cap, a backstop
        events = pa.table({{"user_id": pa.array(range(2000), pa.int64()),
                           "country": pa.array(["de", "fr"] * 1000)}})
        con = sandboxed_connection(memory_limit="{BUDGET_MB // 2}MB")
        try:
            run_sql(con, {sql!r}, events, {TIMEOUT_S}, memory_mb={BUDGET_MB},
                    max_output_mb={BUDGET_MB // 4})
            print("finished")
        except SqlError as err:
            print(err.code)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] in BOUND_CODES, done.stdout


def test_a_result_streamed_in_chunks_holds_every_row_once_in_order() -> None:
    con = sandboxed_connection()
    try:
        big = pa.table({"user_id": pa.array(range(200_000), pa.int64())})
        sql = "SELECT user_id, user_id * 2 AS x FROM events WHERE user_id % 3 <> 0"
        chunks = list(sql_chunks(con, sql, big, 30.0, chunk_rows=100_000))
        # DuckDB's batches (64k rows) gathered to at least 100k, the rest last.
        assert [c.num_rows for c in chunks] == [131_072, 133_333 - 131_072]
        whole = run_sql(con, sql, big, 30.0)
        assert pa.concat_tables(chunks).equals(whole)
        assert whole.column("user_id").to_pylist() == [n for n in range(200_000) if n % 3]
        # An empty result is one empty table that still has the result's columns.
        (empty,) = sql_chunks(con, "SELECT user_id AS u FROM events WHERE false", EVENTS,
                              chunk_rows=500)
        assert empty.num_rows == 0 and empty.schema.names == ["u"]
    finally:
        con.close()


def test_a_consumers_time_between_chunks_is_not_the_querys() -> None:
    """The timeout bounds DuckDB's time: writing each chunk (here: a sleep) does not
    count toward it, and a query that runs too long is still stopped."""
    big = pa.table({"user_id": pa.array(range(300_000), pa.int64())})
    con = sandboxed_connection()
    try:
        seen = 0
        for chunk in sql_chunks(con, "SELECT user_id FROM events", big, 0.5, chunk_rows=65536):
            seen += chunk.num_rows
            time.sleep(0.3)  # 5 chunks: 1.5 s in all, three times the timeout
        assert seen == 300_000
        with pytest.raises(SqlError) as caught:
            for _chunk in sql_chunks(con, RUNAWAYS[4], EVENTS, 0.5, chunk_rows=65536):
                pass
        assert caught.value.code in BOUND_CODES
    finally:
        con.close()


def test_output_is_read_in_batches_and_capped() -> None:
    con = sandboxed_connection()
    try:
        with pytest.raises(SqlError) as caught:
            run_sql(con, "SELECT a.*, b.user_id AS b FROM events a, events b", EVENTS, 30.0,
                    max_output_mb=1)
        assert caught.value.code == "output_limit" and "1 MB" in str(caught.value)
        # what fits is returned whole, and the connection is fine afterwards
        small = run_sql(con, "SELECT count(*) AS n FROM events a, events b", EVENTS, 30.0,
                        max_output_mb=1)
        assert small.to_pylist() == [{"n": 4_000_000}]
        assert run_sql(con, "SELECT user_id FROM events", EVENTS, max_rows=5).num_rows == 5
    finally:
        con.close()


def test_an_epoch_step_failure_carries_its_code_and_the_connection_is_not_kept() -> None:
    fn = _DuckDbSqlFn("WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) "
                      "SELECT max(n) AS n FROM t", 1.0, "plan-runaway")
    fn.setup()
    with pytest.raises(SqlError) as caught:
        list(fn.process(EVENTS))
    fn.teardown()
    assert caught.value.code == "timeout" and "longer than 1 s" in str(caught.value)


def test_a_query_cannot_spill_to_disk_or_show_a_directory() -> None:
    con = sandboxed_connection(memory_limit="64MB")
    try:
        settings = dict(con.sql("SELECT name, value FROM duckdb_settings()").fetchall())
        assert settings["temp_directory"] == ""
        assert settings["max_temp_directory_size"] == "0 bytes"
        with pytest.raises(SqlError) as caught:
            run_sql(con, "SELECT * FROM range(20000000) ORDER BY random()",
                    pa.table({"x": [1]}), 30.0, memory_mb=128)
        assert caught.value.code == "memory_limit" and "128 MB" in str(caught.value)
    finally:
        con.close()


def test_an_epoch_worker_capped_for_its_budget_runs_sql_and_stops_runaways() -> None:
    """An epoch worker's cap (``epoch_worker.WORKER_MEMORY_MB``) in a Beam worker process."""
    script = textwrap.dedent("""
        import apache_beam as beam
        import pyarrow as pa
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner
        from beam_pipelines.runners.local.epoch_worker import WORKER_MEMORY_MB
        from transforms.limits import limit_process_memory
        from transforms.sql import DuckDbSql

        limit_process_memory(WORKER_MEMORY_MB)
        events = pa.table({"i": pa.array(range(1000), pa.int64())})
        for sql in ["SELECT sum(i) AS s FROM events",
                    "SELECT a.i, b.i AS j, c.i AS k FROM events a, events b, events c",
                    "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t, range(2)) "
                    "SELECT count(*) AS n FROM t"]:
            try:
                with beam.Pipeline(runner=FnApiRunner()) as p:
                    (p | beam.Create([0]) | "Events" >> beam.Map(lambda _: events)
                     | DuckDbSql(sql) | "Show" >> beam.Map(lambda t: print("rows", t.num_rows)))
            except Exception as err:
                print("error", type(err).__name__ + ":", str(err).split(" [while running")[0])
    """)
    env = {**os.environ, "PIPELINE_DO_SQL_MEMORY_MB": str(BUDGET_MB),
           "PIPELINE_DO_SQL_TIMEOUT_SECONDS": str(TIMEOUT_S)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith(("rows", "error"))]
    assert lines[0] == "rows 1"
    assert lines[1] == f"error SqlError: the SQL's result is larger than its {BUDGET_MB // 4} MB " \
                       "limit: check its joins"
    assert lines[2].startswith("error SqlError: the SQL ")  # out of memory or of time
    assert len(lines) == 3
