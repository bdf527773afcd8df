"""Event kinds, the one mapping from kind to priority, and the one event builder.

Every producer of an event (the risk engine, its breakers, conservative mode, Kasmina,
the security checks, Oona's consumers, the field-report windows) names it from
``EventKind`` and builds it with ``event``, so the same kind never travels at two
priorities and its level always follows its priority (``oona.events.level_for``).
HIGH and CRITICAL events go to the emergency stream, which is drained first: this
mapping decides what reaches the supervisor and observability without delay.
"""

from __future__ import annotations

from enum import StrEnum

from leyline_pb import leyline_pb2 as pb
from oona.events import MESSAGE_REJECTED, Priority, make_event


class BreakerName(StrEnum):
    """The breakers around Tamiyo's dependencies (events and gauges are labelled with these)."""

    INFERENCE = "inference"
    URZA = "urza"
    BUS_IO = "bus_io"
    POLICY_UPDATE = "policy_update"
    LEARNING = "learning"


class EventKind(StrEnum):
    """Every event name a component of the system emits."""

    LOSS_SPIKE = "loss_spike"
    ISOLATION_VIOLATION = "isolation_violation"
    HOOK_BUDGET_EXCEEDED = "hook_budget_exceeded"
    TIMEOUT = "timeout"
    BLUEPRINT_QUARANTINED = "blueprint_quarantined"
    EMERGENCY = "emergency"
    RISK_CATEGORY_CHANGED = "risk_category_changed"
    RISK_ELEVATED = "risk_elevated"
    ROLLBACK = "rollback"
    BREAKER_OPENED = "breaker_opened"
    BREAKER_HALF_OPEN = "breaker_half_open"
    BREAKER_CLOSED = "breaker_closed"
    CONSERVATIVE_ENTERED = "conservative_entered"
    CONSERVATIVE_EXITED = "conservative_exited"
    MESSAGE_REJECTED = MESSAGE_REJECTED
    COMMAND_REJECTED = "command_rejected"
    POLICY_UPDATE_REJECTED = "policy_update_rejected"
    POLICY_UPDATE_APPLIED = "policy_update_applied"
    POLICY_ROLLED_BACK = "policy_rolled_back"
    POLICY_CANDIDATE_PUBLISHED = "policy_candidate_published"
    POLICY_CANDIDATE_REJECTED = "policy_candidate_rejected"
    SERVER_RESTARTED = "server_restarted"


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
        EventKind.POLICY_ROLLED_BACK,
        EventKind.POLICY_CANDIDATE_REJECTED,
        EventKind.SERVER_RESTARTED,
    }
)


def priority_for(kind: str, breaker: str = "") -> Priority:
    """CRITICAL: blueprint quarantine, emergency, the inference breaker opening.
    HIGH: timeouts, loss spike, isolation violation, hook budget, a policy rollback,
    a learner's candidate the validation gate rejected, a restart of the embedded
    server and every security rejection (a forged or replayed message is worth a look
    at once).
    NORMAL: the rest, including names from outside this vocabulary.
    """
    if kind in _CRITICAL or (kind == EventKind.BREAKER_OPENED and breaker == BreakerName.INFERENCE):
        return pb.MESSAGE_PRIORITY_CRITICAL
    if kind in _HIGH:
        return pb.MESSAGE_PRIORITY_HIGH
    return pb.MESSAGE_PRIORITY_NORMAL


def event(
    kind: EventKind | str, breaker: str = "", /, **attributes: str | int | float
) -> pb.TelemetryEvent:
    """A TelemetryEvent of ``kind`` at the priority above (level from the priority);
    ``breaker`` names the breaker of a breaker event and is kept as an attribute."""
    if breaker:
        attributes["breaker"] = breaker
    return make_event(str(kind), priority_for(kind, breaker), **attributes)
