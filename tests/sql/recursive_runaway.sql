-- A recursive CTE that never ends is stopped by the query's time bound.
-- schema: [{"name": "n", "type": "int64"}]
-- timeout_seconds: 2
-- events:
-- {"n": 1}
-- error: timeout: the SQL ran longer than 2 s and was stopped
WITH RECURSIVE r(i) AS (
    SELECT n FROM events
    UNION ALL
    SELECT i + 1 FROM r
)
SELECT count(*) AS c FROM r
