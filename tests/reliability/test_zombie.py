"""Issue 18, finding 6: a consumer paused while holding entries does not apply them
again once another consumer has claimed and applied them.

Each unit is leased to the consumer applying it (for less than `claim_idle_ms`, so the
lease has run out before anyone may claim the entry); a consumer renews its lease
before applying further and stops when it was taken over. The paused consumer here
records its progress after every entry (`progress_flush_interval_ms` 0), so what is
left is the one entry whose handler was running when the pause began."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from leyline_pb import leyline_pb2 as pb
from oona.bus import Bus, Outgoing
from oona.consumer import Consumer, Delivery
from oona.dedup import DeliveryStatus, EnvelopeLedger, Progress
from oona.keys import Keyring, Signer
from oona.streams import Stream
from tests.bus.helpers import poll_until, subscription

ROOT = Path(__file__).resolve().parents[2]
ENTRIES = 200
pytestmark = pytest.mark.slow


async def test_a_consumer_resumed_after_a_pause_does_not_reapply_what_was_claimed(
    bus: Bus, keyring: Keyring, signer: Signer
) -> None:
    payloads = [f"unit-{i:03d}" for i in range(ENTRIES)]
    await bus.publish_many(
        [Outgoing(pb.MESSAGE_TYPE_TELEMETRY, p.encode(), stream=Stream.NORMAL) for p in payloads],
        batch_signed=False,
    )
    public_hex = signer.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    s = bus.settings
    zombie = subprocess.Popen(
        [sys.executable, "-m", "tests.reliability.zombie", s.redis_url, s.key_prefix,
         Stream.NORMAL, public_hex, str(s.claim_idle_ms)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert zombie.stdout is not None
    try:
        assert (await asyncio.to_thread(zombie.stdout.readline)).strip() == "applying"
        zombie.send_signal(signal.SIGSTOP)
        applied_key = f"{s.key_prefix}:applied"

        async def rescue(delivery: Delivery) -> None:
            await bus.redis.hincrby(applied_key, delivery.envelope.payload.decode())

        rescuer = Consumer(bus, subscription(Stream.NORMAL, consumer="rescuer"), rescue, keyring)

        async def all_applied() -> bool:
            return len(await bus.redis.hkeys(applied_key)) == ENTRIES

        await poll_until(rescuer, all_applied, timeout_s=20)
        await rescuer.drain()
    finally:
        zombie.send_signal(signal.SIGCONT)
    out, _ = await asyncio.to_thread(zombie.communicate, timeout=30)
    report = orjson.loads(out.splitlines()[-1])

    counts = {k.decode(): int(v) for k, v in (await bus.redis.hgetall(applied_key)).items()}
    twice = sorted(p for p, n in counts.items() if n > 1)
    assert sorted(counts) == payloads
    assert max(counts.values()) <= 2
    assert len(twice) <= 1, f"{len(twice)} units applied twice: {twice[:5]}"
    assert report["lease_lost"] >= 1  # it noticed, rather than acking silently
    assert sum(counts.values()) == ENTRIES + len(twice)
    assert (await bus.redis.xpending(bus.key(Stream.NORMAL), "g"))["pending"] == 0


async def test_a_unit_leased_to_a_live_consumer_is_left_to_it(bus: Bus, keyring: Keyring) -> None:
    """Another consumer that reads (or claims) an entry whose unit is leased and not
    yet run out leaves it: the holder records and acks it."""
    message_id = await bus.publish(pb.MESSAGE_TYPE_TELEMETRY, b"held", stream=Stream.NORMAL)
    [(entry_id, _)] = await bus.redis.xrange(bus.key(Stream.NORMAL))
    holder = EnvelopeLedger(bus.redis, bus.settings, "g", "holder")
    [taken] = await holder.check(Stream.NORMAL, [(message_id, entry_id.decode())], lease_ms=60_000)
    assert taken.status is DeliveryStatus.NEW

    applied: list[bytes] = []

    async def apply(delivery: Delivery) -> None:
        applied.append(delivery.envelope.payload)

    other = Consumer(bus, subscription(Stream.NORMAL, consumer="other"), apply, keyring)
    await other.drain()
    assert applied == []
    assert bus.metrics.count("leased_elsewhere", stream=Stream.NORMAL) == 1

    done = Progress(message_id, 1, True, entry_id.decode())
    recorded = await holder.record_and_ack(Stream.NORMAL, [done])
    assert (recorded.acked, recorded.fenced) == (1, (False,))
    late = await other.ledger.record_and_ack(Stream.NORMAL, [done])
    assert late.fenced == (True,)  # finished by the holder: the other is fenced out
