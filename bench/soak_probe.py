"""The soak's probes: numbered telemetry whose every copy is accounted for.

``produce LANE RATE``: publishes one numbered probe packet at a time on the ``telemetry``
lane (NORMAL) or the ``emergency`` lane (CRITICAL) at RATE a second, signed as Tolaria;
a probe whose publish failed is published again (a fresh envelope with the same number)
until the server acknowledges it. Every `FLUSH_S` it appends how far it got to its
JSON-lines file: every number below ``next`` was acknowledged.

``skewed SKEW_S``: once a second, a CRITICAL packet signed as Kasmina whose signed issue
time is SKEW_S ahead of the clock, as a producer whose clock drifted would send. Every
consumer refuses it (``future``); the soak expects the alert that follows.

``consume``: group ``soak-probe`` on both lanes; each unit carrying a probe is stored in
a SQLite journal with its number, how many times it was delivered and when first, so
the soak can tell lost probes, units delivered again, probes published twice (a publish
whose reply was lost, sent again) and the publish-to-apply latency.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sqlite3
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.telemetry import SOURCE_KASMINA, SOURCE_TOLARIA, add_metric
from oona.bus import Bus
from oona.consumer import Consumer, Delivery, Subscription
from oona.envelope import SINGLE_FIELD, make_envelope, seal
from oona.errors import OonaError
from oona.settings import OonaSettings
from oona.streams import Stream
from weatherlight.role_keys import RoleKeys

PROBE = "soak_probe"
LANES = {"telemetry": (Stream.TELEMETRY, pb.MESSAGE_PRIORITY_NORMAL),
         "emergency": (Stream.EMERGENCY, pb.MESSAGE_PRIORITY_CRITICAL)}  # fmt: skip
FLUSH_S = 0.25
GROUP = "soak-probe"


def probe_packet(lane: str, seq: int, priority: int) -> bytes:
    packet = pb.TelemetryPacket(source=SOURCE_TOLARIA, priority=priority)  # type: ignore[arg-type]
    add_metric(packet, PROBE, float(seq), lane=lane)
    return packet.SerializeToString()


def probe_of(payload: bytes) -> tuple[str, int] | None:
    """(lane, number) of a probe packet, None for any other packet."""
    packet = pb.TelemetryPacket.FromString(payload)
    for metric in packet.metrics:
        if metric.name == PROBE:
            return metric.labels["lane"], int(metric.value)
    return None


async def produce(bus: Bus, lane: str, rate: float, out: Path, stop: asyncio.Event) -> None:
    stream, priority = LANES[lane]
    seq = failed = 0
    next_flush = time.monotonic()
    started = time.monotonic()
    while not stop.is_set():
        try:
            await bus.publish(
                pb.MESSAGE_TYPE_TELEMETRY, probe_packet(lane, seq, priority),
                priority=priority, stream=stream,  # type: ignore[arg-type]
            )  # fmt: skip
            seq += 1
        except OonaError:
            failed += 1
        now = time.monotonic()
        if now >= next_flush:
            with out.open("ab") as handle:
                handle.write(orjson.dumps({"next": seq, "failed": failed, "time_s": time.time()}))
                handle.write(b"\n")
            next_flush = now + FLUSH_S
        delay = started + seq / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    with out.open("ab") as handle:
        handle.write(orjson.dumps({"next": seq, "failed": failed, "time_s": time.time()}) + b"\n")


async def skewed(bus: Bus, skew_s: float, stop: asyncio.Event) -> None:
    packet = pb.TelemetryPacket(source=SOURCE_KASMINA, priority=pb.MESSAGE_PRIORITY_CRITICAL)
    add_metric(packet, "skewed_clock", 1.0)
    while not stop.is_set():
        envelope = make_envelope(
            stream=Stream.EMERGENCY, message_type=pb.MESSAGE_TYPE_TELEMETRY,
            payload=packet.SerializeToString(), source=SOURCE_KASMINA,
            priority=pb.MESSAGE_PRIORITY_CRITICAL,
            issued_at_ns=time.time_ns() + int(skew_s * 1e9),
        )  # fmt: skip
        entry = {SINGLE_FIELD: seal(envelope, bus.signer, namespace=bus.settings.key_prefix)}
        key = bus.key(Stream.EMERGENCY)
        with contextlib.suppress(OonaError):
            await bus.io.run(lambda key=key, entry=entry: bus.redis.xadd(key, entry))  # type: ignore[misc]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)


def open_journal(path: Path) -> sqlite3.Connection:
    """One row per unit (the envelope that carried a probe): how often it was delivered."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS probes (lane TEXT, seq INTEGER, unit TEXT, "
        "deliveries INTEGER, issued_ns INTEGER, applied_ns INTEGER, PRIMARY KEY (unit))"
    )
    return db


async def consume(bus: Bus, keys: RoleKeys, journal: Path, stop: asyncio.Event) -> None:
    db = open_journal(journal)

    async def apply(delivery: Delivery) -> None:
        probe = probe_of(delivery.envelope.payload)
        if probe is None:
            return
        lane, seq = probe
        envelope = delivery.envelope
        db.execute(
            "INSERT INTO probes VALUES (?, ?, ?, 1, ?, ?) ON CONFLICT (unit) "
            "DO UPDATE SET deliveries = deliveries + 1",
            (lane, seq, envelope.message_id, envelope.issued_at_ns, time.time_ns()),
        )

    subscription = Subscription(
        GROUP, "probe", (Stream.EMERGENCY, Stream.TELEMETRY),
        frozenset({pb.MESSAGE_TYPE_TELEMETRY}),
    )  # fmt: skip
    await Consumer(bus, subscription, apply, keys.keyring).run(stop)
    db.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["produce", "skewed", "consume"])
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--keys", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--lane", choices=sorted(LANES), default="telemetry")
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--skew-s", type=float, default=120.0)
    parser.add_argument("--claim-idle-ms", type=int, default=3_000)
    args = parser.parse_args()
    keys = RoleKeys.load(args.keys)
    source = SOURCE_KASMINA if args.mode == "skewed" else SOURCE_TOLARIA
    settings = OonaSettings(
        redis_url=args.redis_url, claim_idle_ms=args.claim_idle_ms, io_timeout_ms=3_000.0
    )
    bus = Bus.connect(settings, keys.signer(source), source=source)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        if args.mode == "produce":
            await produce(bus, args.lane, args.rate, args.out, stop)
        elif args.mode == "skewed":
            await skewed(bus, args.skew_s, stop)
        else:
            await consume(bus, keys, args.out, stop)
    finally:
        await bus.close()


if __name__ == "__main__":
    asyncio.run(main())
