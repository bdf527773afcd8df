"""The one event-kind -> MessagePriority mapping."""

from __future__ import annotations

import pytest

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.events import EventKind, event, priority_for
from oona.events import level_for

CRITICAL, HIGH, NORMAL = (
    pb.MESSAGE_PRIORITY_CRITICAL,
    pb.MESSAGE_PRIORITY_HIGH,
    pb.MESSAGE_PRIORITY_NORMAL,
)


@pytest.mark.parametrize(
    ("kind", "breaker", "priority"),
    [
        (EventKind.BLUEPRINT_QUARANTINED, "", CRITICAL),
        (EventKind.EMERGENCY, "", CRITICAL),
        (EventKind.BREAKER_OPENED, "inference", CRITICAL),
        (EventKind.TIMEOUT, "", HIGH),
        (EventKind.LOSS_SPIKE, "", HIGH),
        (EventKind.ISOLATION_VIOLATION, "", HIGH),
        (EventKind.HOOK_BUDGET_EXCEEDED, "", HIGH),
        (EventKind.BREAKER_OPENED, "urza", NORMAL),
        (EventKind.BREAKER_OPENED, "bus_io", NORMAL),
        (EventKind.BREAKER_HALF_OPEN, "inference", NORMAL),
        (EventKind.BREAKER_CLOSED, "inference", NORMAL),
        (EventKind.CONSERVATIVE_ENTERED, "", NORMAL),
        (EventKind.CONSERVATIVE_EXITED, "", NORMAL),
        (EventKind.RISK_CATEGORY_CHANGED, "", NORMAL),
        (EventKind.MESSAGE_REJECTED, "", HIGH),
        (EventKind.COMMAND_REJECTED, "", HIGH),
        (EventKind.POLICY_UPDATE_REJECTED, "", HIGH),
        (EventKind.POLICY_UPDATE_APPLIED, "", NORMAL),
        (EventKind.POLICY_ROLLED_BACK, "", HIGH),
        ("some_other_event", "", NORMAL),  # names from elsewhere map too
    ],
)
def test_priority_mapping(kind: str, breaker: str, priority: int) -> None:
    assert priority_for(kind, breaker) == priority


def test_every_event_kind_is_mapped_and_levels_follow_priority() -> None:
    for kind in EventKind:
        built = event(kind, "inference" if "breaker" in kind else "")
        assert built.priority in (CRITICAL, HIGH, NORMAL)
        assert built.level == level_for(built.priority)
    assert level_for(CRITICAL) == pb.TELEMETRY_LEVEL_CRITICAL
    assert level_for(HIGH) == pb.TELEMETRY_LEVEL_WARNING
    assert level_for(NORMAL) == pb.TELEMETRY_LEVEL_INFO


def test_event_carries_its_attributes_and_breaker() -> None:
    built = event(EventKind.BREAKER_OPENED, "inference", previous="closed", to="open")
    assert built.name == "breaker_opened"
    assert dict(built.attributes) == {"breaker": "inference", "previous": "closed", "to": "open"}
