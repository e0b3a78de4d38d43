-- Exactly one statement: a second one is refused before anything runs.
-- schema: [{"name": "n", "type": "int64"}]
-- events:
-- {"n": 1}
-- error: invalid_sql: sql must be exactly one SELECT statement, found 2
SELECT n FROM events; SELECT 2 AS n
