-- unknown_fields keep: fields not in the schema arrive as one JSON object in _extra.
-- schema: [{"name": "id", "type": "int64"}]
-- unknown_fields: keep
-- events:
-- {"id": 1, "plan": "pro", "seats": 3}
-- {"id": 2}
-- expect:
-- {"id": 1, "plan": "pro", "seats": 3, "no_extra": false}
-- {"id": 2, "plan": null, "seats": null, "no_extra": true}
SELECT id, _extra ->> 'plan' AS plan, CAST(_extra ->> 'seats' AS INTEGER) AS seats,
       _extra IS NULL AS no_extra
FROM events ORDER BY id
