"""The one mapping from an event's kind to its MessagePriority (and telemetry level).

Every producer of a risk, breaker or conservative-mode event asks this module, so the
same kind of event never travels at two priorities. Priority is a property of each
event: HIGH and CRITICAL events go to the emergency stream, which is drained first, so
the mapping decides what reaches the supervisor and observability without delay.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypeAlias

from leyline_pb import leyline_pb2 as pb

Priority: TypeAlias = pb.MessagePriority.ValueType
Level: TypeAlias = pb.TelemetryLevel.ValueType


class EventKind(StrEnum):
    """The names of the events the risk engine, its breakers and conservative mode emit."""

    LOSS_SPIKE = "loss_spike"
    ISOLATION_VIOLATION = "isolation_violation"
    HOOK_BUDGET_EXCEEDED = "hook_budget_exceeded"
    TIMEOUT = "timeout"
    BLUEPRINT_QUARANTINED = "blueprint_quarantined"
    EMERGENCY = "emergency"
    RISK_CATEGORY_CHANGED = "risk_category_changed"
    BREAKER_OPENED = "breaker_opened"
    BREAKER_HALF_OPEN = "breaker_half_open"
    BREAKER_CLOSED = "breaker_closed"
    CONSERVATIVE_ENTERED = "conservative_entered"
    CONSERVATIVE_EXITED = "conservative_exited"


INFERENCE_BREAKER = "inference"

_CRITICAL: frozenset[str] = frozenset({EventKind.BLUEPRINT_QUARANTINED, EventKind.EMERGENCY})
_HIGH: frozenset[str] = frozenset(
    {
        EventKind.TIMEOUT,
        EventKind.LOSS_SPIKE,
        EventKind.ISOLATION_VIOLATION,
        EventKind.HOOK_BUDGET_EXCEEDED,
    }
)
_LEVELS: dict[Priority, Level] = {
    pb.MESSAGE_PRIORITY_CRITICAL: pb.TELEMETRY_LEVEL_CRITICAL,
    pb.MESSAGE_PRIORITY_HIGH: pb.TELEMETRY_LEVEL_WARNING,
    pb.MESSAGE_PRIORITY_NORMAL: pb.TELEMETRY_LEVEL_INFO,
    pb.MESSAGE_PRIORITY_LOW: pb.TELEMETRY_LEVEL_DEBUG,
}


def priority_for(kind: str, breaker: str = "") -> Priority:
    """CRITICAL: blueprint quarantine, emergency, the inference breaker opening.
    HIGH: timeouts, loss spike, isolation violation, hook budget. NORMAL: the rest.

    Takes any event name, so events from outside the risk engine map too (to NORMAL
    unless listed here).
    """
    if kind in _CRITICAL or (kind == EventKind.BREAKER_OPENED and breaker == INFERENCE_BREAKER):
        return pb.MESSAGE_PRIORITY_CRITICAL
    if kind in _HIGH:
        return pb.MESSAGE_PRIORITY_HIGH
    return pb.MESSAGE_PRIORITY_NORMAL


def level_for(priority: Priority) -> Level:
    """The telemetry level that goes with a priority, so the two never disagree."""
    return _LEVELS.get(priority, pb.TELEMETRY_LEVEL_INFO)


def risk_event(
    kind: EventKind, breaker: str = "", **attributes: str | int | float
) -> pb.TelemetryEvent:
    """A TelemetryEvent whose priority and level come from the mapping above."""
    priority = priority_for(kind, breaker)
    attrs = {k: str(v) for k, v in attributes.items()}
    if breaker:
        attrs["breaker"] = breaker
    return pb.TelemetryEvent(
        name=str(kind), level=level_for(priority), priority=priority, attributes=attrs
    )
