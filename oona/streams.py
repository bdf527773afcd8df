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


def stream_key(prefix: str, stream: str) -> str:
    """Redis key of a logical stream."""
    return f"{prefix}:stream:{stream}"


def dead_letter_key(prefix: str, stream: str) -> str:
    """Redis key of a stream's dead-letter stream."""
    return f"{prefix}:dead:{stream}"
