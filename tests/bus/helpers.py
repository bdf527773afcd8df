"""Small helpers for bus tests: a recording handler and bounded waits on real events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from leyline_pb import leyline_pb2 as pb
from oona.consumer import Consumer, Delivery, Subscription

ALL_TYPES = frozenset(pb.MessageType.values())


def subscription(*streams: str, group: str = "g", consumer: str = "c1") -> Subscription:
    return Subscription(group=group, consumer=consumer, streams=streams, accepted_types=ALL_TYPES)


class Recorder:
    """A handler that records every delivery (and can be told to fail)."""

    def __init__(self, fail: Callable[[Delivery], bool] | None = None) -> None:
        self.deliveries: list[Delivery] = []
        self.fail = fail

    async def __call__(self, delivery: Delivery) -> None:
        if self.fail is not None and self.fail(delivery):
            raise RuntimeError(f"refusing {delivery.envelope.message_id}")
        self.deliveries.append(delivery)

    @property
    def payloads(self) -> list[bytes]:
        return [d.envelope.payload for d in self.deliveries]


async def poll_until(
    consumer: Consumer, condition: Callable[[], bool | Awaitable[bool]], timeout_s: float = 10.0
) -> None:
    """Poll the consumer until `condition` holds; each poll blocks briefly on the server."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await consumer.poll_once()


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    """Wait for a server-side condition, re-checking with a short backoff."""
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)
