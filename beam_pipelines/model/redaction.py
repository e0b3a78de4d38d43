"""Hiding a URL's password before it is shown: the one rule for it.

``postgresql://u:pw@h/db`` becomes ``postgresql://u:***@h/db``: the user and
host stay readable, the password never leaves. Replies (``sink.options``,
``sink.table.catalog_uri``) and storage's messages use this same function.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["hide_password"]

_URL_PASSWORD = re.compile(r"(://[^/@:\s]*):[^/@\s]*@")


def hide_password(value: Any) -> Any:
    """Every ``scheme://user:password@`` in a string with the password as ``***``.

    Anything but a string is returned as it is (option values are strings,
    but a stored definition is not re-validated).
    """
    return _URL_PASSWORD.sub(r"\1:***@", value) if isinstance(value, str) else value
