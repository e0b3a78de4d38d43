"""Deterministic synthetic event data set, written as NDJSON.

Every event is one JSON object of about 150 bytes on its own line::

    {"user_id":4821093,"country":"de","event":"view","amount":23.45,
     "ts":"2024-06-01T00:00:01.234Z","session":"9f2c4e1a7b3d5f60a1b2c3d4e5f60718"}

The columns are drawn with numpy from a fixed seed, assembled as an Arrow
table and serialised by DuckDB's JSON writer: there is no Python loop per
event, so a million events take a couple of seconds. The same seed and size
always give byte-identical files.

Timestamps are UTC (``Z`` suffix), sorted, and spread uniformly over
``DAYS`` days from ``START``, so partitioning by event date yields
``DAYS`` partitions.

Command line: ``python -m benchmarks.dataset OUT.ndjson [--events N]``.
"""

from __future__ import annotations

import argparse
import hashlib
import mmap
from itertools import pairwise
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

__all__ = [
    "COUNTRIES",
    "DAYS",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_EVENTS",
    "DEFAULT_SEED",
    "EVENT_TYPES",
    "START",
    "event_table",
    "file_sha256",
    "ndjson_batches",
    "write_head",
    "write_ndjson",
]

DEFAULT_EVENTS = 1_000_000
DEFAULT_SEED = 20240601
DEFAULT_BATCH_SIZE = 1_000

START = np.datetime64("2024-06-01T00:00:00.000", "ms")
DAYS = 3

# ~20 lower-case country codes with a skewed (Zipf-like) popularity.
COUNTRIES = (
    "us", "gb", "de", "fr", "in", "br", "ca", "jp", "es", "it",
    "nl", "au", "mx", "pl", "se", "kr", "tr", "ch", "be", "za",
)  # fmt: skip
EVENT_TYPES = ("view", "click", "add_to_cart", "buy")
_EVENT_WEIGHTS = (0.60, 0.25, 0.10, 0.05)

_MS_PER_DAY = 86_400_000
_NEWLINE = ord("\n")


def _country_weights() -> np.ndarray:
    ranks = np.arange(1, len(COUNTRIES) + 1, dtype=np.float64)
    weights = 1.0 / ranks
    return weights / weights.sum()


def event_table(events: int = DEFAULT_EVENTS, seed: int = DEFAULT_SEED) -> pa.Table:
    """Return ``events`` synthetic events as an Arrow table (columns before JSON).

    ``ts`` is a ``timestamp[ms]`` here; ``session`` is an integer session
    number that :func:`write_ndjson` turns into a 32-hex-digit id.
    """
    if events < 0:
        raise ValueError(f"events must be >= 0, got {events}")
    rng = np.random.default_rng(seed)
    user_id = rng.integers(1, 10_000_000, size=events, dtype=np.int64)
    country_idx = rng.choice(len(COUNTRIES), size=events, p=_country_weights())
    event_idx = rng.choice(len(EVENT_TYPES), size=events, p=_EVENT_WEIGHTS)
    # Log-normal amounts: median ~20, about three quarters above 10.
    amount = np.maximum(np.round(rng.lognormal(mean=3.0, sigma=1.0, size=events), 2), 0.01)
    offsets_ms = np.sort(rng.integers(0, DAYS * _MS_PER_DAY, size=events, dtype=np.int64))
    ts = START + offsets_ms.astype("timedelta64[ms]")
    session = user_id * 16 + rng.integers(0, 16, size=events, dtype=np.int64)
    return pa.table(
        {
            "user_id": pa.array(user_id, type=pa.int64()),
            "country": pa.array(COUNTRIES).take(pa.array(country_idx)),
            "event": pa.array(EVENT_TYPES).take(pa.array(event_idx)),
            "amount": pa.array(amount, type=pa.float64()),
            "ts": pa.array(ts, type=pa.timestamp("ms")),
            "session": pa.array(session, type=pa.int64()),
        }
    )


def write_ndjson(path: str | Path, events: int = DEFAULT_EVENTS, seed: int = DEFAULT_SEED) -> Path:
    """Generate ``events`` events and write them to ``path`` as NDJSON.

    Returns the path. The file is byte-for-byte deterministic for a given
    ``events`` and ``seed``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = event_table(events, seed)
    con = duckdb.connect()
    try:
        con.register("generated", table)
        con.execute(
            f"""
            COPY (
                SELECT user_id, country, event, amount,
                       strftime(ts, '%Y-%m-%dT%H:%M:%S.%gZ') AS ts,
                       md5(CAST(session AS VARCHAR)) AS session
                FROM generated
            ) TO '{_sql_path(path)}' (FORMAT json)
            """
        )
    finally:
        con.close()
    return path


def _sql_path(path: str | Path) -> str:
    return str(path).replace("'", "''")


def _line_ends(data: bytes | mmap.mmap) -> np.ndarray:
    """Byte offsets just past every newline in ``data`` (vectorized)."""
    view = np.frombuffer(data, dtype=np.uint8)
    return np.flatnonzero(view == _NEWLINE) + 1


def ndjson_batches(path: str | Path, batch_size: int = DEFAULT_BATCH_SIZE) -> list[bytes]:
    """Return the NDJSON file as request bodies of ``batch_size`` lines each.

    Each body ends with a newline; the last one may hold fewer lines. This is
    what an HTTP client would POST to an ingest endpoint.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    data = Path(path).read_bytes()
    if not data:
        return []
    ends = _line_ends(data)
    if len(ends) == 0 or ends[-1] != len(data):  # last line without newline
        ends = np.append(ends, len(data))
    cuts = np.concatenate(([0], ends[batch_size - 1 :: batch_size]))
    if cuts[-1] != len(data):
        cuts = np.append(cuts, len(data))
    return [data[start:stop] for start, stop in pairwise(cuts.tolist())]


def write_head(src: str | Path, dst: str | Path, lines: int) -> int:
    """Copy the first ``lines`` lines of ``src`` to ``dst``; return lines copied."""
    with (
        open(src, "rb") as handle,
        mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data,
    ):
        ends = _line_ends(data)
        copied = min(lines, len(ends))
        stop = int(ends[copied - 1]) if copied else 0
        Path(dst).write_bytes(data[:stop])
        del ends  # release the exported buffer before the mmap closes
    return copied


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, to record which data set a result was measured on."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="NDJSON file to write")
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    write_ndjson(args.out, args.events, args.seed)
    size = args.out.stat().st_size
    print(f"wrote {args.events} events, {size} bytes ({size / max(args.events, 1):.0f} B/event)")


if __name__ == "__main__":
    main()
