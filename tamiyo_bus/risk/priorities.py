"""Risk-engine events, prioritised by the one mapping in oona.priorities."""

from __future__ import annotations

from leyline_pb import leyline_pb2 as pb
from oona.priorities import EventKind, level_for, priority_for


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
