"""Every multi-key operation of Oona touches one slot: run on a cluster, which refuses
a command, script or transaction whose keys span slots (CROSSSLOT)."""

from __future__ import annotations

import pytest
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, ResponseError

from leyline_pb import leyline_pb2 as pb
from oona.bus import Bus, Outgoing
from oona.consumer import Consumer, Delivery
from oona.dead_letters import DeadLetterWriter
from oona.dedup import DeliveryStatus, EnvelopeLedger, Progress
from oona.errors import RejectedMessage
from oona.events import LogEventSink
from oona.keys import Keyring
from oona.streams import Stream, dead_letter_key, ledger_key, stream_key

from ..bus.helpers import poll_until, subscription

TELEMETRY = pb.MESSAGE_TYPE_TELEMETRY


@pytest.mark.parametrize("stream", list(Stream))
def test_every_key_of_a_stream_hashes_to_its_slot(stream: Stream) -> None:
    slots = {
        key_slot(key.encode())
        for key in (
            stream_key("tamiyo", stream),
            dead_letter_key("tamiyo", stream),
            ledger_key("tamiyo", stream, "weatherlight", "unit-1"),
            ledger_key("other", stream, "simic", "unit-2"),
        )
    }
    assert len(slots) == 1


def test_streams_spread_over_slots() -> None:
    assert len({key_slot(stream_key("tamiyo", s).encode()) for s in Stream}) == len(Stream)


async def test_the_cluster_refuses_a_script_across_slots(bus: Bus) -> None:
    """What the tests below rely on: a cross-slot script is refused on a cluster."""
    if not bus.settings.redis_cluster:
        pytest.skip("one server accepts keys of any slots")
    ledger = EnvelopeLedger(bus.redis, bus.settings, "g", "c1")
    keys = [ledger.key(Stream.NORMAL, "a"), ledger.key(Stream.EMERGENCY, "b")]
    with pytest.raises((ResponseError, RedisClusterException), match=r"(?i)slot"):
        await ledger._check(keys=keys, args=[60, 1_000, "c1", "1-0", "2-0"])


async def test_ledger_scripts_run_in_the_streams_slot(bus: Bus) -> None:
    """check (many units), renew and record-and-ack (stream + ledger keys, XACK)."""
    ids = await bus.publish_many(
        [Outgoing(TELEMETRY, f"m{i}".encode(), stream=Stream.NORMAL) for i in range(3)],
        batch_signed=False,
    )
    await bus.redis.xgroup_create(bus.key(Stream.NORMAL), "g", id="0")
    read = await bus.redis.xreadgroup("g", "c1", {bus.key(Stream.NORMAL): ">"})
    entry_ids = [entry_id.decode() for entry_id, _ in read[0][1]]
    ledger = EnvelopeLedger(bus.redis, bus.settings, "g", "c1")
    pairs = list(zip(ids, entry_ids, strict=True))

    states = await ledger.check(Stream.NORMAL, pairs, lease_ms=60_000)
    held = await ledger.renew(Stream.NORMAL, ids, lease_ms=60_000)
    progress = [Progress(unit, 1, True, entry) for unit, entry in pairs]
    recorded = await ledger.record_and_ack(Stream.NORMAL, progress)
    again = await ledger.check(Stream.NORMAL, pairs, lease_ms=60_000)

    assert [s.status for s in states] == [DeliveryStatus.NEW] * 3
    assert held == [True] * 3
    assert (recorded.acked, recorded.fenced) == (3, (False,) * 3)
    assert [s.status for s in again] == [DeliveryStatus.APPLIED] * 3


async def test_dead_letter_transactions_run_in_the_streams_slot(bus: Bus, keyring: Keyring) -> None:
    """Moving an entry (XADD dead + XACK + trims, one MULTI/EXEC) and recording one
    envelope of a batch."""
    await bus.publish(TELEMETRY, b"poison", stream=Stream.NORMAL)

    async def refuse(delivery: Delivery) -> None:
        raise RejectedMessage("malformed_payload", "refused by the test")

    consumer = Consumer(bus, subscription(Stream.NORMAL), refuse, keyring)
    await poll_until(consumer, lambda: bus.metrics.count("dead_lettered") == 1)
    writer = DeadLetterWriter(bus, consumer.ledger, consumer.sub, LogEventSink())
    await writer.envelope(
        Stream.NORMAL, "1-0", "unit", 0, pb.BusEnvelope(message_id="m"), "malformed", "", 1
    )

    assert await bus.redis.xlen(bus.dead_letter_key(Stream.NORMAL)) == 2
    assert (await bus.redis.xpending(bus.key(Stream.NORMAL), "g"))["pending"] == 0


async def test_durable_publish_and_counts_across_streams(bus: Bus) -> None:
    """The durable add (script, then WAITAOF on its master and replica) and the
    non-transactional pipeline that reads several dead-letter streams."""
    await bus.publish(pb.MESSAGE_TYPE_FIELD_REPORT, b"r", stream=Stream.FIELD_REPORTS)
    for stream in (Stream.NORMAL, Stream.EMERGENCY):
        await bus.redis.xadd(bus.dead_letter_key(stream), {"reason": "test"})

    added = await bus.dead_letters_added([Stream.NORMAL, Stream.EMERGENCY, Stream.POLICY])

    assert await bus.redis.xlen(bus.key(Stream.FIELD_REPORTS)) == 1
    assert added == {Stream.NORMAL: 1, Stream.EMERGENCY: 1}
