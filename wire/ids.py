"""Request ids: one generator and one accepted form for every hop.

An id is a random per-process prefix and a counter: unique without a system call per request
(``uuid4`` reads ``os.urandom``, which releases the GIL, so a busy event loop may wait for a
compute thread to hand it back). The prefix is drawn again in a forked child.
"""

from __future__ import annotations

import itertools
import os
import re
from typing import Final

__all__ = ["REQUEST_ID_PATTERN", "new_request_id", "new_request_id_bytes", "valid_request_id"]

REQUEST_ID_PATTERN: Final = r"[!-~]{1,128}"
"""What a caller may send as ``X-Request-ID``: 1-128 printable ASCII characters, no spaces."""
_VALID = re.compile(REQUEST_ID_PATTERN)


class _Ids:
    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        self.prefix = os.urandom(10).hex()
        self.prefix_bytes = self.prefix.encode("ascii")
        self.counter = itertools.count()


_ids = _Ids()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_ids.reseed)


def new_request_id() -> str:
    """32 hex digits, unique per process and across processes."""
    return f"{_ids.prefix}{next(_ids.counter) & 0xFFFFFFFFFFFF:012x}"


def new_request_id_bytes() -> bytes:
    return b"%s%012x" % (_ids.prefix_bytes, next(_ids.counter) & 0xFFFFFFFFFFFF)


def valid_request_id(value: str | bytes | None) -> bool:
    """Whether a caller's ``X-Request-ID`` is kept (otherwise a new one replaces it)."""
    if not value:
        return False
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    return _VALID.fullmatch(text) is not None
