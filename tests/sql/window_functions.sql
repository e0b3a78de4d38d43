-- Window functions run over the epoch's events: rank and running sum per key.
-- schema: [{"name": "user", "type": "string"}, {"name": "n", "type": "int64"}]
-- events:
-- {"user": "a", "n": 5}
-- {"user": "b", "n": 1}
-- {"user": "a", "n": 2}
-- {"user": "a", "n": 7}
-- expect:
-- {"user": "a", "n": 2, "rank": 1, "running": 2}
-- {"user": "a", "n": 5, "rank": 2, "running": 7}
-- {"user": "a", "n": 7, "rank": 3, "running": 14}
-- {"user": "b", "n": 1, "rank": 1, "running": 1}
SELECT user, n, row_number() OVER (PARTITION BY user ORDER BY n) AS rank,
       sum(n) OVER (PARTITION BY user ORDER BY n) AS running
FROM events ORDER BY user, n
