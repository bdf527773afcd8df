"""Attack class 6 of issue 17: a poison envelope inside a signed batch dead-letters
alone and the rest of its entry is applied; every dead letter, whatever its reason,
is counted as a rejection and evented; a stream deleted under a consumer does not
break its claim path."""

from __future__ import annotations

from leyline_pb import leyline_pb2 as pb
from oona.bus import Bus, Outgoing
from oona.consumer import Consumer, Delivery
from oona.errors import RejectedMessage
from oona.events import MESSAGE_REJECTED, BufferedEventSink
from oona.keys import Keyring
from oona.settings import OonaSettings
from oona.streams import Stream
from tests.bus.helpers import Recorder, subscription

from .helpers import dead_letters

TELEMETRY = pb.MESSAGE_TYPE_TELEMETRY
BATCH = [b"one", b"poison", b"three", b"four"]


async def _publish_batch(bus: Bus) -> None:
    messages = [Outgoing(TELEMETRY, payload, stream=Stream.NORMAL) for payload in BATCH]
    await bus.publish_many(messages, batch_size=len(BATCH))


class _Poisoned(Recorder):
    """Applies everything but the poison envelope, which it refuses as `final` (a
    RejectedMessage: retrying cannot help) or fails on like a broken handler."""

    def __init__(self, *, final: bool) -> None:
        super().__init__()
        self.final = final
        self.attempts = 0

    async def __call__(self, delivery: Delivery) -> None:
        if delivery.envelope.payload == b"poison":
            self.attempts += 1
            if self.final:
                raise RejectedMessage("malformed_payload", "not a packet")
            raise RuntimeError("handler cannot take it")
        await super().__call__(delivery)


async def test_a_rejected_envelope_of_a_signed_batch_is_dead_lettered_alone(
    bus: Bus, keyring: Keyring
) -> None:
    await _publish_batch(bus)
    handler = _Poisoned(final=True)
    sink = BufferedEventSink()
    consumer = Consumer(bus, subscription(Stream.NORMAL), handler, keyring, events=sink)

    await consumer.drain()

    assert handler.payloads == [b"one", b"three", b"four"]
    [record] = await dead_letters(bus, Stream.NORMAL)
    assert record[b"reason"] == b"malformed_payload"
    assert record[b"envelope_index"] == b"1"
    assert pb.BusEnvelope.FromString(record[b"orig_envelope"]).payload == b"poison"
    assert [e.attributes["reason"] for e in sink.drain()] == ["malformed_payload"]
    assert (await bus.redis.xpending(bus.key(Stream.NORMAL), "g"))["pending"] == 0


async def test_an_envelope_that_keeps_failing_is_dead_lettered_alone_after_its_deliveries(
    bus: Bus, keyring: Keyring, settings: OonaSettings
) -> None:
    await _publish_batch(bus)
    handler = _Poisoned(final=False)
    sink = BufferedEventSink()
    consumer = Consumer(bus, subscription(Stream.NORMAL), handler, keyring, events=sink)

    for _ in range(200):
        await consumer.poll_once()
        if not consumer.retries_scheduled and len(handler.payloads) == 3:
            break

    assert handler.payloads == [b"one", b"three", b"four"]  # each applied once
    assert handler.attempts == settings.max_deliveries
    [record] = await dead_letters(bus, Stream.NORMAL)
    assert (record[b"reason"], record[b"envelope_index"]) == (b"handler_failed", b"1")
    assert bus.metrics.count("rejected", stream=Stream.NORMAL, reason="handler_failed") == 1
    assert [e.name for e in sink.drain()] == [MESSAGE_REJECTED]


async def test_an_entry_past_its_delivery_bound_is_counted_and_evented(
    bus: Bus, keyring: Keyring, settings: OonaSettings
) -> None:
    await bus.publish(TELEMETRY, b"never applied", stream=Stream.NORMAL)
    never = Consumer(bus, subscription(Stream.NORMAL, consumer="dies"), Recorder(), keyring)
    await never.start()
    key = bus.key(Stream.NORMAL)
    [[_, [(entry_id, _)]]] = await bus.redis.xreadgroup("g", "dies", {key: ">"})
    for _ in range(settings.max_deliveries):  # delivered and lost again and again
        await bus.redis.xclaim(key, "g", "dies", 0, [entry_id])
    sink = BufferedEventSink()
    rescuer = Consumer(
        bus, subscription(Stream.NORMAL, consumer="rescuer"), Recorder(), keyring, events=sink
    )

    for _ in range(100):
        await rescuer.poll_once()
        if await dead_letters(bus, Stream.NORMAL):
            break

    [record] = await dead_letters(bus, Stream.NORMAL)
    assert record[b"reason"] == b"max_deliveries"
    assert bus.metrics.count("rejected", stream=Stream.NORMAL, reason="max_deliveries") == 1
    assert [e.attributes["reason"] for e in sink.drain()] == ["max_deliveries"]


async def test_a_stream_deleted_under_the_consumer_does_not_break_the_claim_path(
    bus: Bus, keyring: Keyring
) -> None:
    consumer = Consumer(bus, subscription(Stream.NORMAL), Recorder(), keyring)
    await consumer.start()
    await bus.redis.delete(bus.key(Stream.NORMAL))

    await consumer.poll_once(block=False)  # claims first: XAUTOCLAIM on no group

    await bus.publish(TELEMETRY, b"after", stream=Stream.NORMAL)
    recorder = Recorder()
    consumer.handler = recorder
    await consumer.drain()
    assert recorder.payloads == [b"after"]
    assert bus.metrics.count("groups_recreated") >= 1
