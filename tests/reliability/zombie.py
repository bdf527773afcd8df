"""A consumer process that applies entries slowly, to be SIGSTOPped mid-batch.

``python -m tests.reliability.zombie URL PREFIX STREAM PUBLIC_KEY_HEX CLAIM_IDLE_MS``
reads every entry of STREAM in group ``g`` as consumer ``zombie`` and applies each by
counting its payload in the hash ``PREFIX:applied`` (one count per application), taking
a few milliseconds of work per entry. It prints ``applying`` after its first application
and, once its poll is over, one JSON line: how many envelopes it applied and how many
leases it found taken over.
"""

from __future__ import annotations

import asyncio
import sys

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from leyline_pb import leyline_pb2 as pb
from oona.bus import Bus
from oona.connection import open_redis
from oona.consumer import Consumer, Delivery, Subscription
from oona.keys import UNRESTRICTED, Keyring, Signer
from oona.settings import OonaSettings

WORK_S = 0.005


async def main(url: str, prefix: str, stream: str, public_key_hex: str, claim_idle_ms: str) -> None:
    settings = OonaSettings(
        redis_url=url, key_prefix=prefix, read_batch_size=1_000,
        claim_idle_ms=int(claim_idle_ms), progress_flush_interval_ms=0.0,
    )  # fmt: skip
    keyring = Keyring.of(
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex)), role=UNRESTRICTED
    )
    bus = Bus(open_redis(url, settings), settings, Signer.generate(), source="zombie")
    applied = 0

    async def handler(delivery: Delivery) -> None:
        nonlocal applied
        await bus.redis.hincrby(f"{prefix}:applied", delivery.envelope.payload.decode())
        applied += 1
        if applied == 1:
            print("applying", flush=True)
        await asyncio.sleep(WORK_S)

    sub = Subscription("g", "zombie", (stream,), frozenset(pb.MessageType.values()))
    await Consumer(bus, sub, handler, keyring).poll_once()
    lost = bus.metrics.count("lease_lost")
    print(orjson.dumps({"applied": applied, "lease_lost": lost}).decode(), flush=True)
    await bus.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
