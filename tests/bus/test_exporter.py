"""The bus exporter reports stream length, group lag and dead letters from the server."""

from __future__ import annotations

from leyline_pb import leyline_pb2 as pb
from oona.bus import Bus
from oona.connection import open_sync_redis
from oona.consumer import Consumer
from oona.exporter import BusCollector
from oona.keys import Keyring
from oona.streams import Stream

from .helpers import Recorder, subscription


async def test_exporter_reports_lengths_lag_and_dead_letters(bus: Bus, keyring: Keyring) -> None:
    for _ in range(3):
        await bus.publish(pb.MESSAGE_TYPE_TELEMETRY, b"x", stream=Stream.NORMAL)
    bus.settings = bus.settings.with_overrides(max_deliveries=1)
    consumer = Consumer(bus, subscription(Stream.NORMAL), Recorder(fail=lambda d: True), keyring)
    await consumer.start()
    await bus.publish(pb.MESSAGE_TYPE_TELEMETRY, b"y", stream=Stream.NORMAL)
    await consumer.poll_once(block=False)  # all four fail once: dead-lettered
    await bus.publish(pb.MESSAGE_TYPE_TELEMETRY, b"z", stream=Stream.NORMAL)

    client = open_sync_redis(bus.settings.redis_url, bus.settings)
    families = {f.name: f for f in BusCollector(client, bus.settings.key_prefix).collect()}
    client.close()

    def value(name: str, **labels: str) -> float:
        for sample in families[name].samples:
            if sample.labels == labels:
                return sample.value
        raise AssertionError(f"no {name} sample for {labels}")

    assert value("oona_stream_entries", stream="normal") == 5
    assert value("oona_group_lag_entries", stream="normal", group="g") == 1
    assert value("oona_group_pending_entries", stream="normal", group="g") == 0
    assert value("oona_dead_letter_entries", stream="normal") == 4


async def test_exporter_counts_the_lag_the_server_cannot_tell_after_deletions(bus: Bus) -> None:
    for _ in range(4):
        await bus.publish(pb.MESSAGE_TYPE_TELEMETRY, b"x", stream=Stream.NORMAL)
    key = bus.key(Stream.NORMAL)
    await bus.redis.xgroup_create(key, "late", id="0")
    second = (await bus.redis.xrange(key))[1][0]
    await bus.redis.xdel(key, second)  # a tombstone ahead of the group: lag is nil
    (info,) = await bus.redis.xinfo_groups(key)
    assert info["lag"] is None

    client = open_sync_redis(bus.settings.redis_url, bus.settings)
    families = {f.name: f for f in BusCollector(client, bus.settings.key_prefix).collect()}
    client.close()
    (sample,) = [
        s for s in families["oona_group_lag_entries"].samples if s.labels["group"] == "late"
    ]
    assert sample.value == 3 == (await bus.group_lag(Stream.NORMAL))["late"]
