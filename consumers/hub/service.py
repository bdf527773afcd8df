"""The telemetry aggregation hub: raw telemetry in, normalised aggregates out to Nissa.

It consumes the `emergency` and `telemetry` streams in one consumer group, one lane
(an Oona consumer) per stream, both in the hub's task group. The emergency lane blocks
on its own stream and runs as soon as an entry lands: the telemetry lane yields the
loop every `yield_every_packets` packets, so an urgent packet waits for at most that
much telemetry work, never for a whole telemetry read (one consumer reading both
streams in priority order would make it wait for the read in progress). Neither lane
can starve the other: the loop alternates between them. Per packet: de-duplicate by
packet id, normalise (leyline_vocab.schema), then

- CRITICAL: forward at once, as its own aggregate, on `telemetry.aggregated` with
  CRITICAL priority; the entry is acked only after that publish returned;
- HIGH: aggregate into the current window, never shed;
- NORMAL/LOW: shed (counted) when the entry is older than the overload threshold,
  else aggregate into the current window.

A packet is taken only from a key whose role may claim the packet's source (before
normalisation, which could fold "Tamiyo" into tamiyo): a producer cannot report as
another. Overload shedding measures a packet's
age from its envelope's signed issue time, not from the stream entry id, which
whoever writes to the server may choose.

Every `window_ms` the window is published in batches (batch-signed), even when empty,
so Nissa can tell a silent hub from an idle system. NORMAL entries are acked when
aggregated: a hub killed without warning loses at most one window of NORMAL
aggregates (NORMAL telemetry is sheddable by design); on shutdown or a crash the
window is flushed first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from consumers.hub.dedup import PacketIdCache
from consumers.hub.overload import OverloadPolicy
from consumers.hub.window import Window
from leyline_pb import leyline_pb2 as pb
from leyline_vocab.schema import Normaliser, SchemaSettings
from leyline_vocab.telemetry import (
    HUB_DUPLICATES,
    HUB_IGNORED,
    HUB_LABELS_DROPPED,
    HUB_MALFORMED,
    HUB_RECEIVED,
    HUB_SHED_PACKETS,
    effective_priority,
)
from oona.bus import Bus, Outgoing
from oona.consumer import Consumer, Delivery, Subscription
from oona.errors import BusUnavailable, RejectedMessage, StreamFull
from oona.events import EventSink
from oona.keys import Keyring
from oona.metrics import LATENCY_BUCKETS_S
from oona.streams import URGENT_PRIORITIES, Stream

log = logging.getLogger(__name__)

HUB_GROUP = "telemetry-hub"
AGGREGATE_TYPE = pb.MESSAGE_TYPE_TELEMETRY_AGGREGATE
AGGREGATES_SHED = "aggregates_shed_backlog"


@dataclass(frozen=True)
class HubSettings:
    """The hub's windows and bounds; units in the names."""

    group: str = HUB_GROUP
    window_ms: float = 1_000.0
    overload: OverloadPolicy = field(default_factory=OverloadPolicy)
    dedup_capacity: int = 200_000
    dedup_ttl_s: float = 120.0
    max_series_per_window: int = 50_000
    max_events_per_window: int = 2_000
    series_per_message: int = 512
    max_unsent_aggregates: int = 600
    read_batch_entries: int = 16
    yield_every_packets: int = 32
    histogram_bounds_s: tuple[float, ...] = LATENCY_BUCKETS_S
    schema: SchemaSettings = field(default_factory=SchemaSettings)


class TelemetryHub:
    """One hub instance; `consumer_name` must be stable across restarts so that the
    entries a crashed instance held are taken back first."""

    def __init__(
        self,
        bus: Bus,
        keyring: Keyring,
        settings: HubSettings | None = None,
        *,
        consumer_name: str = "hub-1",
        clock_ns: Callable[[], int] = time.time_ns,
        events: EventSink | None = None,
    ) -> None:
        self.settings = settings or HubSettings()
        self.bus = bus
        self.clock_ns = clock_ns
        self.name = consumer_name
        self.normaliser = Normaliser(self.settings.schema)
        self.dedup = PacketIdCache(self.settings.dedup_capacity, self.settings.dedup_ttl_s)
        self.window = self._new_window(clock_ns())
        self.totals: dict[str, int] = {}
        self._unsent: deque[pb.TelemetryAggregate] = deque()
        self._since_yield = 0

        def lane(stream: str) -> Subscription:
            # Anyone may put any type on the emergency stream; what is not telemetry is
            # Weatherlight's (its own group), so the hub acks and counts it, never
            # dead-letters it.
            return Subscription(
                group=self.settings.group,
                consumer=consumer_name,
                streams=(stream,),
                accepted_types=frozenset(pb.MessageType.values()),
            )

        # Telemetry reads are bounded to a few entries so acks stay frequent; the bus
        # connection and metrics are shared.
        routine_bus = Bus(
            bus.redis,
            bus.settings.with_overrides(read_batch_size=self.settings.read_batch_entries),
            bus.signer,
            source=bus.source,
            metrics=bus.metrics,
        )
        self.urgent = Consumer(bus, lane(Stream.EMERGENCY), self._handle, keyring, events=events)
        self.routine = Consumer(
            routine_bus, lane(Stream.TELEMETRY), self._handle_routine, keyring, events=events
        )

    def _new_window(self, start_ns: int) -> Window:
        s = self.settings
        return Window(
            start_ns=start_ns,
            max_series=s.max_series_per_window,
            max_events=s.max_events_per_window,
            bounds=s.histogram_bounds_s,
        )

    # ------------------------------------------------------------ consuming

    async def drain(self) -> int:
        """Consume without blocking, emergency first, until both lanes are empty (tests,
        benchmarks); returns the entries handled."""
        total = 0
        while True:
            handled = await self.urgent.drain()
            handled += await self.routine.drain()
            total += handled
            if handled == 0:
                return total

    async def _handle_routine(self, delivery: Delivery) -> None:
        """A telemetry-stream packet; every `yield_every_packets` the loop is yielded so
        the emergency lane (and Nissa, in the same process) never waits for a whole
        telemetry read to be processed."""
        await self._handle(delivery)
        self._since_yield += 1
        if self._since_yield >= self.settings.yield_every_packets:
            self._since_yield = 0
            await asyncio.sleep(0)

    async def _handle(self, delivery: Delivery) -> None:
        envelope = delivery.envelope
        window = self.window
        if envelope.message_type != pb.MESSAGE_TYPE_TELEMETRY:
            window.counters[HUB_IGNORED] += 1
            return
        try:
            packet = pb.TelemetryPacket.FromString(envelope.payload)
        except DecodeError as exc:
            # Counted and skipped, not dead-lettered: dead-lettering would take the
            # other packets signed in the same batch with it.
            window.counters[HUB_MALFORMED] += 1
            log.warning("malformed telemetry %s from %s: %s", envelope.message_id,
                        envelope.source, exc)  # fmt: skip
            return
        claimed = packet.source or envelope.source
        if not delivery.role.may_claim(claimed):
            raise RejectedMessage(
                "unauthorised_signer",
                f"role {delivery.role.name} may not report as {claimed[:80]!r}",
            )
        source = self.normaliser.source(claimed)
        window.counters[HUB_RECEIVED] += 1
        packet_id = packet.packet_id
        if packet_id and packet_id in self.dedup:
            window.counters[HUB_DUPLICATES] += 1
            return
        now_ns = self.clock_ns()
        priority = effective_priority(packet)
        timestamp_ns = packet.timestamp_ns or envelope.issued_at_ns
        if priority == pb.MESSAGE_PRIORITY_CRITICAL:
            await self._forward_critical(packet, source, timestamp_ns)
        else:
            age_ms = (now_ns - envelope.issued_at_ns) / 1e6
            if self.settings.overload.sheds(priority, age_ms):
                window.counters[HUB_SHED_PACKETS] += 1
                return
            self._aggregate(window, packet, source, timestamp_ns, priority)
        if packet_id:
            self.dedup.add(packet_id, now_ns / 1e9)

    def _aggregate(
        self,
        window: Window,
        packet: pb.TelemetryPacket,
        source: str,
        timestamp_ns: int,
        priority: pb.MessagePriority.ValueType,
    ) -> None:
        normaliser = self.normaliser
        for point in packet.metrics:
            normalised, value, dropped = normaliser.take_point(source, point)
            if dropped:
                window.counters[HUB_LABELS_DROPPED] += dropped
            window.add_point(normalised, value, timestamp_ns, source)
        urgent = priority in URGENT_PRIORITIES
        for event in packet.events:
            forwarded = pb.ForwardedEvent(
                packet_id=packet.packet_id,
                source=source,
                timestamp_ns=timestamp_ns,
                priority=priority,
                labels=dict(normaliser.event_labels(event.attributes)),
            )
            forwarded.event.CopyFrom(event)
            forwarded.event.name = normaliser.event_name(source, event.name)
            window.add_event(forwarded, urgent=urgent)
        health = packet.health if packet.HasField("health") else None
        window.saw_source(source, timestamp_ns, health)

    async def _forward_critical(
        self, packet: pb.TelemetryPacket, source: str, timestamp_ns: int
    ) -> None:
        """The fast path: this packet alone, published before its entry is acked."""
        single = self._new_window(timestamp_ns)
        self._aggregate(single, packet, source, timestamp_ns, pb.MESSAGE_PRIORITY_CRITICAL)
        aggregates = single.to_aggregates(
            hub=self.name, end_ns=timestamp_ns, priority=pb.MESSAGE_PRIORITY_CRITICAL
        )
        await self.bus.publish_many(
            [self._outgoing(a, pb.MESSAGE_PRIORITY_CRITICAL) for a in aggregates],
            batch_signed=False,
        )
        self.window.counters.update(single.counters)

    @staticmethod
    def _outgoing(
        aggregate: pb.TelemetryAggregate, priority: pb.MessagePriority.ValueType
    ) -> Outgoing:
        return Outgoing(
            AGGREGATE_TYPE,
            aggregate.SerializeToString(),
            priority=priority,
            stream=Stream.TELEMETRY_AGGREGATED,
        )

    # ----------------------------------------------------------- forwarding

    async def flush(self) -> int:
        """Close the current window and publish it with anything left unsent; returns
        the number of aggregates published."""
        now_ns = self.clock_ns()
        window, self.window = self.window, self._new_window(now_ns)
        for name, value in window.counters.items():
            self.totals[name] = self.totals.get(name, 0) + value
        self._unsent.extend(
            window.to_aggregates(
                hub=self.name, end_ns=now_ns, series_per_message=self.settings.series_per_message
            )
        )
        overflow = len(self._unsent) - self.settings.max_unsent_aggregates
        for _ in range(max(overflow, 0)):
            self._unsent.popleft()
            self.window.counters[AGGREGATES_SHED] += 1
        if not self._unsent:
            return 0
        batch = list(self._unsent)
        try:
            await self.bus.publish_many(
                [self._outgoing(a, pb.MESSAGE_PRIORITY_NORMAL) for a in batch]
            )
        except (BusUnavailable, StreamFull) as exc:
            log.warning("hub could not forward %d aggregates, keeping them: %s", len(batch), exc)
            return 0
        for _ in batch:
            self._unsent.popleft()
        return len(batch)

    async def _flush_every_window(self, done: asyncio.Event) -> None:
        period_s = self.settings.window_ms / 1000.0
        while not done.is_set():
            remaining_s = (self.window.start_ns / 1e9 + period_s) - self.clock_ns() / 1e9
            if remaining_s > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), timeout=remaining_s)
                if done.is_set():
                    return
            await self.flush()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume and forward until `stop` is set; the last window is flushed on the way
        out, also when the consumer crashed."""
        done = asyncio.Event()

        async def consume() -> None:
            try:
                async with asyncio.TaskGroup() as lanes:
                    lanes.create_task(self.urgent.run(stop), name="hub-emergency")
                    lanes.create_task(self.routine.run(stop), name="hub-telemetry")
            finally:
                done.set()

        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(consume(), name="hub-consume")
                tasks.create_task(self._flush_every_window(done), name="hub-flush")
        finally:
            await self.flush()
