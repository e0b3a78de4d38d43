-- Without an event-time field, _event_time is the time of ingest.
-- schema: [{"name": "id", "type": "int64"}]
-- events:
-- {"id": 1}
-- expect:
-- {"id": 1, "_ingested_at": "2026-03-01T12:00:00+00:00", "same": true}
SELECT id, _ingested_at, _event_time = _ingested_at AS same FROM events
