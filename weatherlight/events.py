"""Weatherlight's services' events, forwarded as telemetry so that Nissa shows them.

Every supervised service emits into one `ServiceEvents` sink (its consumers' rejections
above all: a forged, replayed or malformed entry is worth a look at once). The sink logs
each event and holds it, bounded, for the ``events`` service, which publishes them as
Weatherlight's own telemetry (source ``weatherlight``): urgent ones at once on the
emergency lane, the rest in batches. The hub aggregates them like any other telemetry,
and Nissa counts the rejections among them (``nissa_rejections_total``).
"""

from __future__ import annotations

import asyncio
import contextlib
from contextlib import AbstractAsyncContextManager, nullcontext

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.roles import SOURCE_WEATHERLIGHT
from oona.bus import Bus
from oona.events import BufferedEventSink, LogEventSink
from producers.sinks import TelemetryEventSink
from producers.telemetry import TelemetryProducer

EVENTS = "events"
FORWARD_INTERVAL_S = 0.05
MAX_HELD_EVENTS = 10_000


class ServiceEvents:
    """The sink the supervisor hands every service: logs each event and holds it for
    the forwarder (at most `max_events`; beyond that the oldest are dropped and
    counted in `buffer.dropped`)."""

    def __init__(self, max_events: int = MAX_HELD_EVENTS) -> None:
        self._log = LogEventSink()
        self.buffer = BufferedEventSink(max_events)

    def emit(self, event: pb.TelemetryEvent) -> None:
        self._log.emit(event)
        self.buffer.emit(event)


class EventForwarder:
    """Publishes what `events` holds as telemetry until stopped (then once more)."""

    def __init__(self, bus: Bus, events: ServiceEvents) -> None:
        self.events = events
        self.producer = TelemetryProducer(bus, source=SOURCE_WEATHERLIGHT)
        self.sink = TelemetryEventSink(self.producer)

    def _forward(self) -> int:
        held = self.events.buffer.drain()
        for event in held:
            self.sink.emit(event)
        return len(held)

    async def run(self, stop: asyncio.Event) -> None:
        await self.producer.start()
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), FORWARD_INTERVAL_S)
                self._forward()
        finally:
            self._forward()
            await self.producer.stop()


def forwarder(bus: Bus, events: ServiceEvents) -> AbstractAsyncContextManager[EventForwarder]:
    """The component of the ``events`` service."""
    return nullcontext(EventForwarder(bus, events))
