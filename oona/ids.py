"""Unique, time-ordered identifiers for messages and commands."""

from __future__ import annotations

import itertools
import os
import threading
import time

_NODE = os.urandom(4).hex()
_counter = itertools.count()
_lock = threading.Lock()
_last_ns = 0


def new_message_id() -> str:
    """An id that sorts by creation time and is unique across processes.

    Layout: 16 hex digits of a strictly increasing nanosecond clock (per process),
    8 hex digits of a random node id chosen at import, 6 hex digits of a counter.
    The fixed width makes string order equal time order.
    """
    global _last_ns
    with _lock:
        now = max(time.time_ns(), _last_ns + 1)
        _last_ns = now
        seq = next(_counter) & 0xFFFFFF
    return f"{now:016x}-{_NODE}-{seq:06x}"


def id_timestamp_ns(message_id: str) -> int:
    """The creation time encoded in an id made by new_message_id."""
    return int(message_id[:16], 16)
