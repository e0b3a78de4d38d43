"""Small helpers for the local runner's own files in the data dir (manifests, ledgers, old buffers).

Below both the epoch protocol (:mod:`.epochs`) and the data-dir upgrade
(:mod:`.upgrade`), and importing nothing but the standard library: the
upgrade runs first at every start, and going through ``epochs`` for this
would import the sinks' storage modules (``beam_pipelines.storage``) into it.
"""

from __future__ import annotations

import os

__all__ = ["remove_database", "remove_file", "remove_side_files"]

# What SQLite keeps beside a database: its WAL, shared memory and rollback journal.
_SIDE_FILES = ("-wal", "-shm", "-journal")


def remove_file(path: str) -> None:
    """Remove ``path``; one already gone is fine."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def remove_side_files(path: str) -> None:
    """Remove what SQLite left beside the database at ``path``, not the database."""
    for suffix in _SIDE_FILES:
        remove_file(path + suffix)


def remove_database(path: str) -> None:
    """Remove the SQLite database at ``path`` and what it left beside it."""
    remove_file(path)
    remove_side_files(path)
