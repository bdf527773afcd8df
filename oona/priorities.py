"""The one mapping from an event's kind to its MessagePriority (and telemetry level).

Every producer of an event (the risk engine, its breakers, conservative mode, Kasmina,
the security checks, Oona's consumers) asks this module, so the same kind of event
never travels at two priorities. It lives in Oona, the layer every component shares.
Priority is a property of each event: HIGH and CRITICAL events go to the emergency
stream, which is drained first, so the mapping decides what reaches the supervisor and
observability without delay.
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
    MESSAGE_REJECTED = "message_rejected"
    COMMAND_REJECTED = "command_rejected"
    POLICY_UPDATE_REJECTED = "policy_update_rejected"
    POLICY_UPDATE_APPLIED = "policy_update_applied"
    POLICY_ROLLED_BACK = "policy_rolled_back"


INFERENCE_BREAKER = "inference"

_CRITICAL: frozenset[str] = frozenset({EventKind.BLUEPRINT_QUARANTINED, EventKind.EMERGENCY})
_HIGH: frozenset[str] = frozenset(
    {
        EventKind.TIMEOUT,
        EventKind.LOSS_SPIKE,
        EventKind.ISOLATION_VIOLATION,
        EventKind.HOOK_BUDGET_EXCEEDED,
        EventKind.MESSAGE_REJECTED,
        EventKind.COMMAND_REJECTED,
        EventKind.POLICY_UPDATE_REJECTED,
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
    HIGH: timeouts, loss spike, isolation violation, hook budget, and every security
    rejection (a forged or replayed message is worth a look at once). NORMAL: the rest.

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
