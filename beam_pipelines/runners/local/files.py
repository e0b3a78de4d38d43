"""Small helpers for the local runner's own files in the data dir (manifests, ledgers, old buffers).

Below both the epoch protocol (:mod:`.epochs`) and the data-dir upgrade
(:mod:`.upgrade`), and importing nothing but the standard library: the
upgrade runs first at every start, and going through ``epochs`` for this
would import the sinks' storage modules (``beam_pipelines.storage``) into it.
The buffer's names are here too, so the log (:mod:`.log`), below the buffer
(:mod:`.buffer`), finds its ledger by the same rule.
"""

from __future__ import annotations

import os

__all__ = ["LEDGER_SUFFIX", "LOG_SUFFIX", "buffer_path", "ledger_beside", "log_directory",
           "remove_database", "remove_file", "remove_side_files"]

# What SQLite keeps beside a database: its WAL, shared memory and rollback journal.
_SIDE_FILES = ("-wal", "-shm", "-journal")

#: A pipeline's buffer in ``buffers/``: its ledger ``<id>.sqlite`` and its log ``<id>.log/``.
LEDGER_SUFFIX = ".sqlite"
LOG_SUFFIX = ".log"


def buffer_path(data_dir: str, pipeline_id: str) -> str:
    """The buffer's ledger; its log is the directory beside it (``log_directory``)."""
    return os.path.join(data_dir, "buffers", pipeline_id + LEDGER_SUFFIX)


def log_directory(path: str) -> str:
    """The log beside the ledger at ``path``."""
    return os.path.splitext(path)[0] + LOG_SUFFIX


def ledger_beside(directory: str) -> str:
    """The ledger beside the log ``directory`` (``log_directory``'s inverse)."""
    return os.path.splitext(directory)[0] + LEDGER_SUFFIX


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
