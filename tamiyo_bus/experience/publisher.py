"""Trajectory segments onto the trajectories stream.

``submit`` is called from the recorder's thread and never blocks: segments wait in a
bounded queue (past ``publish_queue_max_segments`` the oldest is dropped and counted,
so an outage costs a known amount of memory). ``run`` publishes them in order, one
signed entry each; a publish the bus refuses is retried after a backoff, with the
segment kept at the head of the queue. Experience is not a field report: a lost
segment costs the learner some samples, never the run a decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from dataclasses import dataclass

from leyline_pb import leyline_pb2 as pb
from oona.backoff import Backoff
from oona.bus import Bus
from oona.errors import BusUnavailable, StreamFull
from oona.streams import Stream
from tamiyo_bus.experience.segments import ExperienceSettings

log = logging.getLogger(__name__)


@dataclass(slots=True)
class PublisherStats:
    submitted: int = 0
    published: int = 0
    dropped: int = 0  # evicted by a full queue
    failures: int = 0  # publishes the bus refused (each retried)


class TrajectoryPublisher:
    def __init__(self, bus: Bus, settings: ExperienceSettings | None = None) -> None:
        self.bus = bus
        self.settings = s = settings or ExperienceSettings()
        self.stats = PublisherStats()
        self._queue: deque[pb.Trajectory] = deque()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._retry_in_s = 0.0
        self._backoff = Backoff(
            base_s=s.publish_retry_base_ms / 1000.0, max_s=s.publish_retry_max_ms / 1000.0
        )

    def submit(self, segment: pb.Trajectory) -> None:
        """Queue ``segment`` (any thread)."""
        with self._lock:
            self.stats.submitted += 1
            if len(self._queue) >= self.settings.publish_queue_max_segments:
                self._queue.popleft()
                self.stats.dropped += 1
            self._queue.append(segment)
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(self._wake.set)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until ``stop`` is set, then once more what is queued (bounded by one
        attempt each, so a dead bus does not hold the shutdown)."""
        self._loop = asyncio.get_running_loop()
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                self._wake.clear()
                if await self._publish_head():
                    continue
                waker = asyncio.create_task(self._wake.wait())
                await asyncio.wait(
                    {waker, stopping},
                    timeout=self._retry_in_s if self._backoff.failures else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                waker.cancel()
            while self.pending and await self._publish_head():
                pass
        finally:
            stopping.cancel()
            self._loop = None

    async def flush(self, timeout_s: float) -> bool:
        """Publish what is queued now (tests and shutdown); False if some is left."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self.pending and asyncio.get_running_loop().time() < deadline:
            if not await self._publish_head():
                await asyncio.sleep(self._retry_in_s)
        return not self.pending

    async def _publish_head(self) -> bool:
        """Publish the oldest segment; True when one was published."""
        with self._lock:
            if not self._queue:
                return False
            segment = self._queue[0]
        try:
            await self.bus.publish(
                pb.MESSAGE_TYPE_TRAJECTORY,
                segment.SerializeToString(),
                stream=Stream.TRAJECTORIES,
            )
        except (BusUnavailable, StreamFull) as error:
            self.stats.failures += 1
            self._retry_in_s = self._backoff.next_s()
            log.warning("trajectory segment not published (%s); retrying", error)
            return False
        self._backoff.reset()
        with self._lock:
            if self._queue and self._queue[0] is segment:
                self._queue.popleft()
            self.stats.published += 1
        return True
