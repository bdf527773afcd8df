"""Logical stream names, their Redis keys, and routing by a message's own priority."""

from __future__ import annotations

from enum import StrEnum

from leyline_pb import leyline_pb2 as pb


class Stream(StrEnum):
    """The logical streams (docs/architecture.md lists who writes and reads each)."""

    EMERGENCY = "emergency"
    NORMAL = "normal"
    TELEMETRY = "telemetry"
    TELEMETRY_AGGREGATED = "telemetry.aggregated"
    POLICY = "policy"
    FIELD_REPORTS = "field_reports"
    FIELD_REPORT_ACKS = "field_reports.acks"
    TRAJECTORIES = "trajectories"


URGENT_PRIORITIES = frozenset({pb.MESSAGE_PRIORITY_HIGH, pb.MESSAGE_PRIORITY_CRITICAL})


def is_urgent(priority: pb.MessagePriority.ValueType) -> bool:
    """HIGH and CRITICAL messages take the emergency lane."""
    return priority in URGENT_PRIORITIES


def lane_for(priority: pb.MessagePriority.ValueType, default: str = Stream.NORMAL) -> str:
    """The stream a message goes to on a priority-routed lane.

    Decided per message from its own priority: there is no client-wide mode, so one
    urgent message never drags the traffic after it onto the emergency stream.
    """
    return Stream.EMERGENCY if is_urgent(priority) else default


def stream_tag(stream: str) -> str:
    """The hash tag of a logical stream: on a Redis Cluster only the part inside the
    braces picks a key's slot, so every key of one stream (the stream, its dead-letter
    stream, its groups' ledger) lives in one slot, and the scripts and transactions
    that touch several of them run on one node."""
    return f"{{{stream}}}"


def stream_key(prefix: str, stream: str) -> str:
    """Redis key of a logical stream."""
    return f"{prefix}:stream:{stream_tag(stream)}"


def dead_letter_key(prefix: str, stream: str) -> str:
    """Redis key of a stream's dead-letter stream."""
    return f"{prefix}:dead:{stream_tag(stream)}"


def ledger_key(prefix: str, stream: str, group: str, unit_id: str) -> str:
    """Redis key of one signed unit in a group's ledger of a stream (oona.dedup)."""
    return f"{prefix}:seen:{stream_tag(stream)}:{group}:{unit_id}"


def stream_of_key(key: str, kind_prefix: str) -> str:
    """The logical stream a stream or dead-letter key names (`kind_prefix` is e.g.
    ``tamiyo:stream:``): the inverse of `stream_key` and `dead_letter_key`."""
    return key.removeprefix(kind_prefix).removeprefix("{").removesuffix("}")
