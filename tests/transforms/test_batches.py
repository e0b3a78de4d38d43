"""Batches read in a wider schema than they were written in (additive schema evolution)."""

from __future__ import annotations

import pyarrow as pa

from transforms.batches import conform_batch, decode_batch, encode_batch

OLD = pa.schema([("n", pa.int64()), ("_ingested_at", pa.timestamp("us", tz="UTC"))])
NEW = pa.schema([("n", pa.int64()), ("x", pa.float64()),
                 ("_ingested_at", pa.timestamp("us", tz="UTC"))])


def test_an_old_batch_gets_the_new_columns_as_nulls_in_the_new_order() -> None:
    old = decode_batch(encode_batch(pa.table({"n": [1, 2], "_ingested_at": [0, 1]},
                                             schema=OLD)))
    wide = conform_batch(old, NEW)
    assert wide.schema.equals(NEW)
    assert wide.to_pydict() == {"n": [1, 2], "x": [None, None],
                                "_ingested_at": old.column("_ingested_at").to_pylist()}
    assert pa.concat_tables([wide, NEW.empty_table()]).num_rows == 2


def test_a_batch_already_in_the_schema_is_the_same_table() -> None:
    table = pa.table({"n": [1], "x": [0.5], "_ingested_at": [0]}, schema=NEW)
    assert conform_batch(table, NEW) is table
