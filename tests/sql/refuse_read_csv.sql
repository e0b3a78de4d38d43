-- Files are out of reach: read_csv is refused by name, whatever it would read.
-- schema: [{"name": "n", "type": "int64"}]
-- events:
-- {"n": 1}
-- error: refused: sql may not call the table function 'read_csv'
SELECT * FROM read_csv('/etc/passwd')
