"""Typed views of redis-py's stream replies, whose declared types are unions of every
shape a command can return. Normalising here keeps the rest of Oona precisely typed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

RawEntry = tuple[str, dict[bytes, bytes]]


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def entries(reply: Any) -> list[RawEntry]:
    """[(id, fields)] from XRANGE / XCLAIM / XAUTOCLAIM entry lists; deleted entries
    (no fields) are left out."""
    return [(text(entry_id), fields) for entry_id, fields in reply or [] if fields is not None]


def stream_batches(reply: Any) -> list[tuple[str, list[RawEntry]]]:
    """[(key, entries)] from XREADGROUP."""
    return [(text(key), entries(batch)) for key, batch in reply or []]


def group_lag(group: Any, count_after: Callable[[str], int]) -> int:
    """Entries a consumer group has not acked (not yet delivered plus pending), from one
    XINFO GROUPS entry.

    After deletions the server cannot tell how many entries are undelivered (its
    ``lag`` is nil); then ``count_after(undelivered_after(group))`` counts them.
    """
    undelivered = group.get("lag")
    if undelivered is None:
        undelivered = count_after(undelivered_after(group))
    return int(undelivered) + int(group["pending"])


def undelivered_after(group: Any) -> str:
    """The exclusive XRANGE start of a group's undelivered entries."""
    return "(" + text(group["last-delivered-id"])
