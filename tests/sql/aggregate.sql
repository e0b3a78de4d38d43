-- GROUP BY with count, sum and avg: one row per group.
-- schema: [{"name": "country", "type": "string"}, {"name": "amount", "type": "int64"}]
-- events:
-- {"country": "gb", "amount": 1}
-- {"country": "fr", "amount": 5}
-- {"country": "gb", "amount": 3}
-- expect:
-- {"country": "fr", "events": 1, "total": 5, "mean": 5.0}
-- {"country": "gb", "events": 2, "total": 4, "mean": 2.0}
SELECT country, count(*) AS events, sum(amount) AS total, avg(amount) AS mean
FROM events GROUP BY country ORDER BY country
