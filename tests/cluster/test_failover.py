"""A master killed with SIGKILL: every durable entry a publisher got acknowledged is on
the replica that takes over, and the same publisher and consumer carry on."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from leyline_pb import leyline_pb2 as pb
from oona.bus import Bus
from oona.cluster import LocalCluster
from oona.connection import open_redis
from oona.consumer import Consumer
from oona.keys import Keyring, Signer
from oona.settings import OonaSettings
from oona.streams import Stream

from ..bus.helpers import Recorder, poll_until, subscription

REPORT = pb.MESSAGE_TYPE_FIELD_REPORT
CONSUMED, UNREAD, AFTER = 20, 10, 10
BEFORE = CONSUMED + UNREAD


@pytest.mark.slow
async def test_acked_durable_entries_survive_a_killed_master_and_clients_carry_on(
    tmp_path: Path, signer: Signer, keyring: Keyring
) -> None:
    cluster = LocalCluster(base_dir=tmp_path).start()
    settings = OonaSettings(
        redis_url=cluster.url,
        redis_cluster=True,
        key_prefix=f"failover-{uuid.uuid4().hex[:8]}",
        read_block_ms=20,
        claim_idle_ms=200,
        claim_interval_ms=50,
        io_timeout_ms=20_000.0,  # outlasts the failover (node timeout plus election)
    )
    publisher = Bus(open_redis(cluster.url, settings), settings, signer, source="test")
    reading = Bus(open_redis(cluster.url, settings), settings, signer, source="test")
    recorder = Recorder()
    consumer = Consumer(reading, subscription(Stream.FIELD_REPORTS), recorder, keyring)
    try:
        for i in range(BEFORE):  # the last UNREAD acked by the server, not yet consumed
            if i == CONSUMED:
                await poll_until(consumer, lambda: len(recorder.deliveries) == CONSUMED)
            await publisher.publish(REPORT, f"before-{i}".encode(), stream=Stream.FIELD_REPORTS)

        master = cluster.master_of(publisher.key(Stream.FIELD_REPORTS))
        promoted = cluster.kill_and_fail_over(master)

        for i in range(AFTER):
            await publisher.publish(REPORT, f"after-{i}".encode(), stream=Stream.FIELD_REPORTS)
        await poll_until(consumer, lambda: len(recorder.deliveries) >= BEFORE + AFTER, 30.0)
        await consumer.drain()

        assert promoted is not master
        key = publisher.key(Stream.FIELD_REPORTS)
        # The first publish after the kill went to the dead master and was redirected
        # to the promoted one, where its waits did not cover it: it was sent again, and
        # its copy is refused as a replay, counted, and applied once.
        replays = reading.metrics.count("rejected", stream=Stream.FIELD_REPORTS, reason="replay")
        assert replays <= 1
        assert await publisher.redis.xlen(key) == BEFORE + AFTER + replays
        expected = [f"before-{i}".encode() for i in range(BEFORE)]
        expected += [f"after-{i}".encode() for i in range(AFTER)]
        assert sorted(recorder.payloads) == sorted(expected)
        assert len(recorder.payloads) == len(expected)  # each applied once
        assert (await publisher.redis.xpending(key, "g"))["pending"] == 0
    finally:
        await publisher.close()
        await reading.close()
        cluster.stop()
