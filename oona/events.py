"""Telemetry events from the security checks: the seam between a check and whatever
carries events to observability.

A check (a command verifier, the PolicyUpdate transaction, a consumer rejecting an
entry) emits a Leyline TelemetryEvent into an `EventSink`. The sink must not block:
the step path emits into it. `BufferedEventSink` holds events for a forwarder to drain
and publish; `LogEventSink` writes them to the log, which is the default so that no
event is silently discarded when nothing else is wired.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Protocol

from leyline_pb import leyline_pb2 as pb
from oona.priorities import EventKind, priority_for

log = logging.getLogger(__name__)

MESSAGE_REJECTED = EventKind.MESSAGE_REJECTED
COMMAND_REJECTED = EventKind.COMMAND_REJECTED
POLICY_UPDATE_REJECTED = EventKind.POLICY_UPDATE_REJECTED
POLICY_UPDATE_APPLIED = EventKind.POLICY_UPDATE_APPLIED
POLICY_ROLLED_BACK = EventKind.POLICY_ROLLED_BACK

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


def make_event(
    name: str, level: pb.TelemetryLevel.ValueType, **attributes: str | int
) -> pb.TelemetryEvent:
    """A TelemetryEvent with string attributes and the priority the one mapping
    (oona.priorities) gives its name."""
    return pb.TelemetryEvent(
        name=str(name),
        level=level,
        priority=priority_for(name),
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
