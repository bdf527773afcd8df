"""Trimming that never removes an entry some consumer group has not acknowledged.

An entry is still owed to a group while it sits in the group's pending list or lies
after the group's last-delivered id. The safe trim point (MINID) is the lowest such id
over all groups, further held back by the acked-entry retention period. A stream with
no group is never trimmed: a group created later must still see what came before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def parse_id(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def format_id(parts: tuple[int, int]) -> str:
    return f"{parts[0]}-{parts[1]}"


def next_id(parts: tuple[int, int]) -> tuple[int, int]:
    return (parts[0], parts[1] + 1)


@dataclass(frozen=True)
class GroupPosition:
    """What a group still owes: its lowest pending id (if any) and last-delivered id."""

    name: str
    last_delivered: tuple[int, int]
    lowest_pending: tuple[int, int] | None


def safe_min_id(
    groups: Sequence[GroupPosition], *, now_ms: int, retain_acked_ms: int
) -> tuple[int, int] | None:
    """The MINID below which every entry is acked by every group and past retention.

    None means nothing may be trimmed.
    """
    if not groups:
        return None
    owed = []
    for group in groups:
        first_undelivered = next_id(group.last_delivered)
        owed.append(
            min(first_undelivered, group.lowest_pending)
            if group.lowest_pending is not None
            else first_undelivered
        )
    bound = min(owed)
    retention_bound = (now_ms - retain_acked_ms, 0)
    return min(bound, retention_bound)
