-- Computed columns: arithmetic, string functions, CASE, casts.
-- schema: [{"name": "amount", "type": "float64"}, {"name": "country", "type": "string"}]
-- events:
-- {"amount": 10.0, "country": "gb"}
-- {"amount": 2.5, "country": "fr"}
-- expect:
-- {"country_uc": "FR", "gross": 3.0, "size": "small", "cents": 250}
-- {"country_uc": "GB", "gross": 12.0, "size": "large", "cents": 1000}
SELECT upper(country) AS country_uc, amount * 1.2 AS gross,
       CASE WHEN amount >= 5 THEN 'large' ELSE 'small' END AS size,
       CAST(amount * 100 AS BIGINT) AS cents
FROM events ORDER BY country_uc
