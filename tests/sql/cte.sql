-- CTEs: a WITH query may name steps and read them more than once.
-- schema: [{"name": "n", "type": "int64"}]
-- events:
-- {"n": 1}
-- {"n": 2}
-- {"n": 3}
-- {"n": 4}
-- expect:
-- {"n": 3, "share": 0.3}
-- {"n": 4, "share": 0.4}
WITH big AS (SELECT n FROM events WHERE n > 2),
     total AS (SELECT sum(n) AS t FROM events)
SELECT n, n / t AS share FROM big, total ORDER BY n
