-- _event_time comes from the schema's event-time field; ISO text and epoch millis both parse.
-- schema: [{"name": "id", "type": "int64"}, {"name": "ts", "type": "timestamp"}]
-- event_time_field: ts
-- events:
-- {"id": 1, "ts": "2026-02-01T10:30:00Z"}
-- {"id": 2, "ts": 1769990400000}
-- expect:
-- {"id": 1, "_event_time": "2026-02-01T10:30:00+00:00", "day": "2026-02-01", "hour": 10}
-- {"id": 2, "_event_time": "2026-02-02T00:00:00+00:00", "day": "2026-02-02", "hour": 0}
SELECT id, _event_time, strftime(_event_time, '%Y-%m-%d') AS day,
       hour(_event_time) AS hour
FROM events ORDER BY id
