"""Typed views of redis-py's stream replies, whose declared types are unions of every
shape a command can return. Normalising here keeps the rest of Oona precisely typed."""

from __future__ import annotations

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
