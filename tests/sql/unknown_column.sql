-- A column the schema does not have fails when the SQL is planned, naming it.
-- schema: [{"name": "n", "type": "int64"}]
-- events:
-- {"n": 1}
-- error: invalid_sql: Binder Error: Referenced column "amount" not found
SELECT amount FROM events
