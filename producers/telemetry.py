"""The telemetry producer Tamiyo, Tolaria and Kasmina use.

Two lanes, decided per packet by its effective priority:

- NORMAL and LOW packets are buffered and published in batches on the `telemetry`
  stream, many envelopes under one signature, by a background task that flushes when
  `flush_at_packets` are waiting or every `flush_interval_ms`. The buffer is bounded:
  past `buffer_max_packets` the oldest packet is dropped and counted, so a stalled bus
  costs memory up to a known bound and never blocks the caller.
- HIGH and CRITICAL packets are never batched and never shed: each is published at once
  as its own signed entry on the `emergency` stream. `send` awaits that publish (and
  raises if the bus refuses it); `emit` hands it to the background task, which retries
  with backoff until it is written.

`emit` never blocks and may be called from any thread (the training step path);
`send` is for async callers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.telemetry import effective_priority
from oona.backoff import Backoff
from oona.bus import Bus, Outgoing
from oona.errors import BusUnavailable, StreamFull
from oona.ids import new_message_id
from oona.streams import Stream, is_urgent

log = logging.getLogger(__name__)

PUBLISH_ERRORS = (BusUnavailable, StreamFull)


@dataclass(frozen=True)
class ProducerSettings:
    """Batching and bounds of one producer; units in the names."""

    flush_interval_ms: float = 100.0
    flush_at_packets: int = 512
    buffer_max_packets: int = 20_000
    envelopes_per_signature: int = 64
    urgent_retry_base_ms: float = 20.0
    urgent_retry_max_ms: float = 2_000.0


@dataclass
class ProducerStats:
    """What happened to the packets handed to the producer (thread-safe updates)."""

    batched: int = 0
    urgent: int = 0
    dropped: int = 0
    publish_failures: int = 0


class TelemetryProducer:
    """Publishes TelemetryPackets for one `source` through `bus`."""

    def __init__(self, bus: Bus, *, source: str, settings: ProducerSettings | None = None) -> None:
        self.bus = bus
        self.source = source
        self.settings = settings or ProducerSettings()
        self.stats = ProducerStats()
        self._lock = threading.Lock()
        self._normal: deque[pb.TelemetryPacket] = deque()
        self._urgent: deque[pb.TelemetryPacket] = deque()
        # One urgent flush at a time (the background task and ``flush`` both drain the
        # queue): the head is published before it is removed, so that a failed publish
        # leaves it queued, and two flushes would publish it twice.
        self._urgent_flush = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    # ------------------------------------------------------------- sending

    def stamp(self, packet: pb.TelemetryPacket) -> pb.TelemetryPacket:
        """Give the packet its id, source, time and effective priority where unset."""
        if not packet.packet_id:
            packet.packet_id = new_message_id()
        if not packet.source:
            packet.source = self.source
        if not packet.timestamp_ns:
            packet.timestamp_ns = time.time_ns()
        packet.priority = effective_priority(packet)
        return packet

    async def send(self, packet: pb.TelemetryPacket) -> None:
        """Urgent packets: published before this returns (StreamFull or BusUnavailable
        propagate, nothing is dropped silently). Others: buffered for the next batch."""
        self.stamp(packet)
        if is_urgent(packet.priority):
            await self._publish_urgent(packet)
        else:
            self._buffer(packet)

    def emit(self, packet: pb.TelemetryPacket) -> None:
        """Hand over a packet without blocking, from any thread; urgent packets are
        published by the background task at once."""
        self.stamp(packet)
        if is_urgent(packet.priority):
            with self._lock:
                self._urgent.append(packet)
            self._signal()
        else:
            self._buffer(packet)

    def _buffer(self, packet: pb.TelemetryPacket) -> None:
        with self._lock:
            if len(self._normal) >= self.settings.buffer_max_packets:
                self._normal.popleft()
                self.stats.dropped += 1
            self._normal.append(packet)
            full = len(self._normal) >= self.settings.flush_at_packets
        if full:
            self._signal()

    def _signal(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            wake.set()
        else:
            loop.call_soon_threadsafe(wake.set)

    async def _publish_urgent(self, packet: pb.TelemetryPacket) -> None:
        await self.bus.publish(
            pb.MESSAGE_TYPE_TELEMETRY, packet.SerializeToString(), priority=packet.priority
        )
        with self._lock:
            self.stats.urgent += 1

    # ------------------------------------------------------------ flushing

    async def flush(self) -> int:
        """Publish everything buffered now, urgent packets first; returns how many were
        published. Packets the bus refused stay queued (urgent ones raise)."""
        published = await self._flush_urgent()
        while True:
            sent = await self._flush_normal()
            published += sent
            if sent == 0:
                return published

    async def _flush_normal(self) -> int:
        """One batch: what is buffered now (a refused batch goes back to the front)."""
        with self._lock:
            batch = list(self._normal)
            self._normal.clear()
        if not batch:
            return 0
        messages = [
            Outgoing(
                pb.MESSAGE_TYPE_TELEMETRY,
                p.SerializeToString(),
                priority=p.priority,
                stream=Stream.TELEMETRY,
            )
            for p in batch
        ]
        try:
            await self.bus.publish_many(
                messages, batch_signed=True, batch_size=self.settings.envelopes_per_signature
            )
        except PUBLISH_ERRORS as exc:
            self._requeue(batch, exc)
            return 0
        with self._lock:
            self.stats.batched += len(batch)
        return len(batch)

    def _requeue(self, batch: list[pb.TelemetryPacket], exc: Exception) -> None:
        log.warning("telemetry batch of %d not published, kept for retry: %s", len(batch), exc)
        with self._lock:
            self.stats.publish_failures += 1
            self._normal.extendleft(reversed(batch))
            while len(self._normal) > self.settings.buffer_max_packets:
                self._normal.popleft()
                self.stats.dropped += 1

    async def _flush_urgent(self) -> int:
        published = 0
        async with self._urgent_flush:
            while True:
                with self._lock:
                    if not self._urgent:
                        return published
                    packet = self._urgent[0]
                await self._publish_urgent(packet)
                with self._lock:
                    self._urgent.popleft()
                published += 1

    # ----------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start the background flusher on the running loop."""
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._closing = False
        self._task = asyncio.create_task(self._run(), name=f"telemetry-{self.source}")

    async def stop(self) -> None:
        """Publish what is buffered and stop the background task."""
        task, self._task = self._task, None
        if task is None:
            return
        self._closing = True
        assert self._wake is not None
        self._wake.set()
        await task
        self._loop = None

    async def _run(self) -> None:
        """Urgent packets as soon as they are signalled; the NORMAL buffer when it holds
        `flush_at_packets` or every `flush_interval_ms`; everything on stop."""
        assert self._wake is not None
        wake = self._wake
        loop = asyncio.get_running_loop()
        interval_s = self.settings.flush_interval_ms / 1000.0
        s = self.settings
        backoff = Backoff(s.urgent_retry_base_ms / 1000.0, s.urgent_retry_max_ms / 1000.0)
        next_normal = loop.time() + interval_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=max(next_normal - loop.time(), 0))
            wake.clear()
            try:
                await self._flush_urgent()
            except PUBLISH_ERRORS as exc:
                with self._lock:
                    self.stats.publish_failures += 1
                if self._closing:
                    log.error("urgent telemetry not published at shutdown: %s", exc)
                    await self._flush_normal()
                    return
                delay_s = backoff.next_s()
                log.warning("urgent telemetry not published, retrying in %.2fs: %s", delay_s, exc)
                await asyncio.sleep(delay_s)
                continue
            backoff.reset()
            if self._closing:
                while await self._flush_normal():
                    pass
                return
            with self._lock:
                full = len(self._normal) >= self.settings.flush_at_packets
            if full or loop.time() >= next_normal:
                await self._flush_normal()
                next_normal = loop.time() + interval_s
                with self._lock:
                    if len(self._normal) >= self.settings.flush_at_packets:
                        wake.set()
