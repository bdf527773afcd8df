"""Retention and back-pressure: trimming keeps unacked entries; full streams push back."""

from __future__ import annotations

import time

import pytest

from leyline_pb import leyline_pb2 as pb
from oona.bus import Bus, Outgoing
from oona.consumer import Consumer
from oona.errors import StreamFull
from oona.keys import Keyring
from oona.retention import GroupPosition, safe_min_id
from oona.streams import Stream

from .helpers import Recorder, subscription

TELEMETRY = pb.MESSAGE_TYPE_TELEMETRY


def test_safe_min_id_is_the_lowest_id_any_group_still_owes() -> None:
    groups = [
        GroupPosition("fast", last_delivered=(100, 0), lowest_pending=None),
        GroupPosition("slow", last_delivered=(90, 3), lowest_pending=(50, 1)),
    ]
    assert safe_min_id(groups, now_ms=10**6, retain_acked_ms=0) == (50, 1)
    assert safe_min_id(groups[:1], now_ms=10**6, retain_acked_ms=0) == (100, 1)
    assert safe_min_id(groups[:1], now_ms=1000, retain_acked_ms=950) == (50, 0)
    assert safe_min_id([], now_ms=10**6, retain_acked_ms=0) is None


async def test_trim_removes_only_entries_every_group_has_acked(bus: Bus, keyring: Keyring) -> None:
    await bus.publish_many(
        [Outgoing(TELEMETRY, str(i).encode(), stream=Stream.NORMAL) for i in range(10)],
        batch_signed=False,
    )
    fast = Consumer(bus, subscription(Stream.NORMAL, group="fast"), Recorder(), keyring)
    slow_handler = Recorder(fail=lambda d: int(d.envelope.payload) >= 4)
    slow = Consumer(bus, subscription(Stream.NORMAL, group="slow"), slow_handler, keyring)
    await fast.drain()
    await slow.poll_once(block=False)  # acks 0-3, leaves 4-9 pending

    removed = await bus.trim(Stream.NORMAL)

    assert removed == 4
    remaining = await bus.redis.xrange(bus.key(Stream.NORMAL))
    assert len(remaining) == 6
    assert await bus.trim(Stream.NORMAL) == 0


async def test_stream_without_groups_is_never_trimmed(bus: Bus) -> None:
    await bus.publish(TELEMETRY, b"x", stream=Stream.NORMAL)
    assert await bus.trim(Stream.NORMAL) == 0
    assert await bus.redis.xlen(bus.key(Stream.NORMAL)) == 1


async def test_full_stream_pushes_back_with_a_clear_error_and_writes_nothing_silently(
    bus: Bus, keyring: Keyring
) -> None:
    bus.settings = bus.settings.with_overrides(stream_caps={Stream.NORMAL: 5})
    consumer = Consumer(bus, subscription(Stream.NORMAL), Recorder(), keyring)
    await consumer.start()
    for i in range(5):
        await bus.publish(TELEMETRY, str(i).encode(), stream=Stream.NORMAL)

    started = time.monotonic()
    with pytest.raises(StreamFull, match="'normal' is full") as full:
        await bus.publish(TELEMETRY, b"overflow", stream=Stream.NORMAL)
    assert time.monotonic() - started >= bus.settings.pushback_wait_ms / 1000.0 * 0.9
    assert full.value.unwritten == 1
    assert await bus.redis.xlen(bus.key(Stream.NORMAL)) == 5
    assert bus.metrics.count("pushback") > 0

    await consumer.drain()  # the group acks everything; the producer can trim and write
    await bus.publish(TELEMETRY, b"after", stream=Stream.NORMAL)
    assert await bus.redis.xlen(bus.key(Stream.NORMAL)) == 1


async def test_sheddable_stream_sheds_and_counts_each_shed_message(bus: Bus) -> None:
    bus.settings = bus.settings.with_overrides(stream_caps={Stream.TELEMETRY: 3})
    messages = [Outgoing(TELEMETRY, b"t", stream=Stream.TELEMETRY) for _ in range(5)]
    await bus.publish_many(messages, batch_signed=False)
    assert await bus.redis.xlen(bus.key(Stream.TELEMETRY)) == 3
    assert bus.metrics.count("shed", stream=Stream.TELEMETRY) == 2
