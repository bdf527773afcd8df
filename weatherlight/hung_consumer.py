"""A consumer process that takes a batch of entries and then hangs in its handler.

Used by the bus self-check and the tests to show that entries held by a consumer that
is SIGKILLed mid-batch are claimed and processed by another. It prints how many
entries the group holds pending once it is holding them. It runs with the group's
`claim_idle_ms`, which bounds the leases it takes on what it holds."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from leyline_pb import leyline_pb2 as pb
from oona.bus import Bus
from oona.connection import open_redis
from oona.consumer import Consumer, Delivery, Subscription
from oona.keys import UNRESTRICTED, Keyring, Signer
from oona.settings import OonaSettings

ROOT = Path(__file__).resolve().parents[1]


async def main(url: str, prefix: str, stream: str, public_key_hex: str, claim_idle_ms: str) -> None:
    settings = OonaSettings(
        redis_url=url, key_prefix=prefix, read_batch_size=1_000, claim_idle_ms=int(claim_idle_ms)
    )
    keyring = Keyring.of(
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex)), role=UNRESTRICTED
    )
    bus = Bus(open_redis(url, settings), settings, Signer.generate(), source="victim")
    hang = asyncio.Event()

    async def handler(delivery: Delivery) -> None:
        held = await bus.redis.xpending(bus.key(stream), "g")
        print(held["pending"], flush=True)
        await hang.wait()

    sub = Subscription("g", "victim", (stream,), frozenset(pb.MessageType.values()))
    await Consumer(bus, sub, handler, keyring).poll_once()


async def hold_then_kill(
    url: str, prefix: str, stream: str, public_key: Ed25519PublicKey, claim_idle_ms: int
) -> tuple[int, int]:
    """Run this consumer in a child process until it holds entries mid-batch, SIGKILL
    it, and return its pid and the number of entries it held pending."""
    public_hex = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    victim = subprocess.Popen(
        [sys.executable, "-m", "weatherlight.hung_consumer", url, prefix, stream, public_hex,
         str(claim_idle_ms)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert victim.stdout is not None
    held = (await asyncio.to_thread(victim.stdout.readline)).strip()
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    victim.stdout.close()
    return victim.pid, int(held or 0)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
