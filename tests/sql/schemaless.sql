-- Without a schema each event is kept whole as JSON text in the column value.
-- events:
-- {"kind": "click", "x": 3}
-- {"kind": "view"}
-- expect:
-- {"kind": "click", "x": 3}
-- {"kind": "view", "x": null}
SELECT value ->> 'kind' AS kind, CAST(value ->> 'x' AS INTEGER) AS x
FROM events ORDER BY kind
