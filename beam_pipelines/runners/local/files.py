"""Small helpers for the local runner's own files in the data dir (manifests, old buffers).

Below both the epoch protocol (:mod:`.epochs`) and the data-dir upgrade
(:mod:`.upgrade`), and importing nothing but the standard library: the
upgrade runs first at every start, and going through ``epochs`` for this
would import the sinks' storage modules (``beam_pipelines.storage``) into it.
"""

from __future__ import annotations

import os

__all__ = ["remove_file"]


def remove_file(path: str) -> None:
    """Remove ``path``; one already gone is fine."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
