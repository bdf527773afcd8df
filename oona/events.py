"""Telemetry events: the seam between whatever raises one and whatever carries it to
observability, and the one rule that gives an event its level.

A component (a consumer rejecting an entry, a command verifier, the risk engine)
emits a Leyline TelemetryEvent into an `EventSink`. The sink must not block: the step
path emits into it. `BufferedEventSink` holds events for a forwarder to drain and
publish; `LogEventSink` writes them to the log, which is the default so that no event
is silently discarded when nothing else is wired.

An event's level always follows its priority (`level_for`), so the two never
disagree; which priority each named event travels at is the vocabulary's business
(leyline_vocab.events), except for Oona's own rejection event, named here.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Protocol, TypeAlias

from leyline_pb import leyline_pb2 as pb

log = logging.getLogger(__name__)

Priority: TypeAlias = pb.MessagePriority.ValueType
Level: TypeAlias = pb.TelemetryLevel.ValueType

MESSAGE_REJECTED = "message_rejected"
"""A consumer refused an entry (bad signature, replay, malformed...): HIGH priority."""

_LEVELS: dict[Priority, Level] = {
    pb.MESSAGE_PRIORITY_CRITICAL: pb.TELEMETRY_LEVEL_CRITICAL,
    pb.MESSAGE_PRIORITY_HIGH: pb.TELEMETRY_LEVEL_WARNING,
    pb.MESSAGE_PRIORITY_NORMAL: pb.TELEMETRY_LEVEL_INFO,
    pb.MESSAGE_PRIORITY_LOW: pb.TELEMETRY_LEVEL_DEBUG,
}

_LOG_LEVELS = {
    pb.TELEMETRY_LEVEL_DEBUG: logging.DEBUG,
    pb.TELEMETRY_LEVEL_INFO: logging.INFO,
    pb.TELEMETRY_LEVEL_WARNING: logging.WARNING,
    pb.TELEMETRY_LEVEL_ERROR: logging.ERROR,
    pb.TELEMETRY_LEVEL_CRITICAL: logging.CRITICAL,
}


class EventSink(Protocol):
    """Receives telemetry events; `emit` returns at once and never raises."""

    def emit(self, event: pb.TelemetryEvent) -> None: ...


def level_for(priority: Priority) -> Level:
    """The telemetry level that goes with a priority."""
    return _LEVELS.get(priority, pb.TELEMETRY_LEVEL_INFO)


def make_event(
    name: str, priority: Priority, /, **attributes: str | int | float
) -> pb.TelemetryEvent:
    """A TelemetryEvent with string attributes, at ``priority`` and the level it implies."""
    return pb.TelemetryEvent(
        name=name,
        level=level_for(priority),
        priority=priority,
        attributes={k: str(v) for k, v in attributes.items()},
    )


class LogEventSink:
    """Writes each event to the log at its level."""

    def emit(self, event: pb.TelemetryEvent) -> None:
        attributes = " ".join(f"{k}={v}" for k, v in sorted(event.attributes.items()))
        log.log(_LOG_LEVELS.get(event.level, logging.INFO), "%s %s", event.name, attributes)


class BufferedEventSink:
    """Holds up to `max_events` events until `drain` takes them.

    Bounded so a forwarder that stopped draining cannot exhaust memory; when full the
    oldest event is dropped and counted in `dropped`, so the loss is visible.
    """

    def __init__(self, max_events: int = 10_000) -> None:
        self._events: deque[pb.TelemetryEvent] = deque(maxlen=max_events)
        self._lock = threading.Lock()
        self.dropped = 0

    def emit(self, event: pb.TelemetryEvent) -> None:
        with self._lock:
            if len(self._events) == self._events.maxlen:
                self.dropped += 1
            self._events.append(event)

    def drain(self) -> list[pb.TelemetryEvent]:
        """Every held event, oldest first; the buffer is left empty."""
        with self._lock:
            events = list(self._events)
            self._events.clear()
        return events
