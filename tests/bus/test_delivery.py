"""Publishing and consuming on the real server: groups, ordering, acks, routing."""

from __future__ import annotations

from leyline_pb import leyline_pb2 as pb
from oona.bus import Bus, Outgoing
from oona.consumer import Consumer
from oona.keys import Keyring
from oona.streams import Stream

from .helpers import Recorder, poll_until, subscription

TELEMETRY = pb.MESSAGE_TYPE_TELEMETRY


async def test_single_and_batch_signed_messages_are_all_delivered_and_acked(
    bus: Bus, keyring: Keyring
) -> None:
    await bus.publish(TELEMETRY, b"single", stream=Stream.NORMAL)
    batch = [Outgoing(TELEMETRY, f"m{i}".encode(), stream=Stream.NORMAL) for i in range(150)]
    await bus.publish_many(batch, batch_size=64)
    recorder = Recorder()
    consumer = Consumer(bus, subscription(Stream.NORMAL), recorder, keyring)

    await poll_until(consumer, lambda: len(recorder.deliveries) == 151)

    assert recorder.payloads == [b"single"] + [f"m{i}".encode() for i in range(150)]
    assert await bus.redis.xlen(bus.key(Stream.NORMAL)) == 1 + 3  # 150 in 3 signed batches
    pending = await bus.redis.xpending(bus.key(Stream.NORMAL), "g")
    assert pending["pending"] == 0
    assert bus.metrics.count("acked") == 4
    assert bus.metrics.count("published") == 151


async def test_group_created_after_publishing_receives_earlier_messages(
    bus: Bus, keyring: Keyring
) -> None:
    for i in range(5):
        await bus.publish(TELEMETRY, str(i).encode(), stream=Stream.NORMAL)
    late = Recorder()
    consumer = Consumer(bus, subscription(Stream.NORMAL, group="late"), late, keyring)

    await poll_until(consumer, lambda: len(late.deliveries) == 5)

    assert late.payloads == [b"0", b"1", b"2", b"3", b"4"]


async def test_routing_follows_each_messages_own_priority(bus: Bus) -> None:
    await bus.publish(TELEMETRY, b"urgent", priority=pb.MESSAGE_PRIORITY_CRITICAL)
    await bus.publish(TELEMETRY, b"routine", priority=pb.MESSAGE_PRIORITY_NORMAL)
    await bus.publish(TELEMETRY, b"high", priority=pb.MESSAGE_PRIORITY_HIGH)
    await bus.publish(TELEMETRY, b"routine-after", priority=pb.MESSAGE_PRIORITY_NORMAL)

    assert await bus.redis.xlen(bus.key(Stream.EMERGENCY)) == 2
    assert await bus.redis.xlen(bus.key(Stream.NORMAL)) == 2


async def test_explicit_stream_is_kept_whatever_the_priority(bus: Bus) -> None:
    await bus.publish(
        pb.MESSAGE_TYPE_FIELD_REPORT, b"r", priority=pb.MESSAGE_PRIORITY_CRITICAL,
        stream=Stream.FIELD_REPORTS,
    )  # fmt: skip
    assert await bus.redis.xlen(bus.key(Stream.FIELD_REPORTS)) == 1
    assert await bus.redis.exists(bus.key(Stream.EMERGENCY)) == 0


async def test_emergency_entries_are_handled_before_normal_ones(bus: Bus, keyring: Keyring) -> None:
    await bus.publish_many(
        [Outgoing(TELEMETRY, b"n", stream=Stream.NORMAL) for _ in range(40)], batch_signed=False
    )
    await bus.publish_many(
        [Outgoing(TELEMETRY, b"e", stream=Stream.EMERGENCY) for _ in range(40)],
        batch_signed=False,
    )
    recorder = Recorder()
    consumer = Consumer(bus, subscription(Stream.EMERGENCY, Stream.NORMAL), recorder, keyring)

    await poll_until(consumer, lambda: len(recorder.deliveries) == 80)

    assert recorder.payloads == [b"e"] * 40 + [b"n"] * 40


async def test_starvation_guard_lets_normal_entries_through_a_long_emergency_burst(
    bus: Bus, keyring: Keyring
) -> None:
    settings = bus.settings.with_overrides(read_batch_size=5, emergency_burst_limit=2)
    bus.settings = settings
    await bus.publish_many(
        [Outgoing(TELEMETRY, b"n", stream=Stream.NORMAL) for _ in range(5)], batch_signed=False
    )
    await bus.publish_many(
        [Outgoing(TELEMETRY, b"e", stream=Stream.EMERGENCY) for _ in range(50)],
        batch_signed=False,
    )
    recorder = Recorder()
    consumer = Consumer(bus, subscription(Stream.EMERGENCY, Stream.NORMAL), recorder, keyring)

    await poll_until(consumer, lambda: len(recorder.deliveries) == 55)

    first_normal = recorder.payloads.index(b"n")
    assert first_normal == 10  # after two emergency rounds of five, one normal round
    assert recorder.payloads[-1] == b"e"


async def test_duplicate_envelope_is_applied_once_and_the_copy_dead_lettered(
    bus: Bus, keyring: Keyring
) -> None:
    await bus.publish(TELEMETRY, b"once", stream=Stream.NORMAL, message_id="fixed-id-1")
    await bus.publish(TELEMETRY, b"once", stream=Stream.NORMAL, message_id="fixed-id-1")
    recorder = Recorder()
    consumer = Consumer(bus, subscription(Stream.NORMAL), recorder, keyring)

    await poll_until(consumer, lambda: bus.metrics.count("dead_lettered") == 1)
    await consumer.drain()

    assert recorder.payloads == [b"once"]
    dead = await bus.redis.xrange(bus.dead_letter_key(Stream.NORMAL))
    assert dead[0][1][b"reason"] == b"replay"
    assert bus.metrics.count("rejected", stream=Stream.NORMAL, reason="replay") == 1


async def test_metrics_snapshot_and_group_lag(bus: Bus, keyring: Keyring) -> None:
    for i in range(7):
        await bus.publish(TELEMETRY, str(i).encode(), stream=Stream.NORMAL)
    consumer = Consumer(bus, subscription(Stream.NORMAL), Recorder(), keyring)
    await consumer.start()
    assert await bus.group_lag(Stream.NORMAL) == {"g": 7}

    await consumer.drain()

    assert await bus.group_lag(Stream.NORMAL) == {"g": 0}
    snapshot = bus.metrics.snapshot()
    counters = snapshot["counters"]
    assert isinstance(counters, dict)
    assert {"published", "delivered", "acked"} <= set(counters)
    histograms = snapshot["histograms"]
    assert isinstance(histograms, dict)
    assert histograms["delivery_latency_s"][0]["count"] == 7
