-- The server's settings are out of reach: duckdb_settings() is refused.
-- schema: [{"name": "n", "type": "int64"}]
-- events:
-- {"n": 1}
-- error: refused: sql may not call the table function 'duckdb_settings'
SELECT name, value FROM duckdb_settings()
