"""Bus throughput and latency, all against the same server in one run.

(a) raw redis-py pipelined XADD throughput (the reference),
(b) Oona batch publish throughput, envelope encoding and Ed25519 signing included
    (64 messages under one signature per entry), and per-entry-signed publish,
(c) Oona consume + ack throughput (verification, de-duplication ledger, ack),
(d) publish-to-handler latency p50/p99 at a fixed offered rate (default 2,000 msg/s),
    producer in its own process, one signed entry per message.

Prints a table; with --json, one final JSON line with the figures, the ratio (b)/(a),
the server and the machine. With --cluster, all of it runs against a local Redis
Cluster (3 masters, 3 replicas: oona.cluster) instead of one server.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import bus_cluster, bus_server, machine, percentile
from leyline_pb import leyline_pb2 as pb
from oona.bus import Bus, Outgoing
from oona.connection import open_redis
from oona.consumer import Consumer, Delivery, Subscription
from oona.keys import UNRESTRICTED, Keyring, Signer
from oona.settings import OonaSettings

PAYLOAD = b"x" * 200
TYPES = frozenset({pb.MESSAGE_TYPE_TELEMETRY})


async def raw_xadd(settings: OonaSettings, count: int, chunk: int) -> float:
    redis = open_redis(settings.redis_url, settings)
    key = f"{settings.key_prefix}:raw"
    started = time.perf_counter()
    for offset in range(0, count, chunk):
        pipe = redis.pipeline(transaction=False)
        for _ in range(min(chunk, count - offset)):
            pipe.xadd(key, {b"e": PAYLOAD})
        await pipe.execute()
    elapsed = time.perf_counter() - started
    await redis.delete(key)
    await redis.aclose()
    return count / elapsed


async def oona_publish(bus: Bus, stream: str, count: int, chunk: int, batched: bool) -> float:
    started = time.perf_counter()
    for offset in range(0, count, chunk):
        n = min(chunk, count - offset)
        messages = [Outgoing(pb.MESSAGE_TYPE_TELEMETRY, PAYLOAD, stream=stream)] * n
        await bus.publish_many(messages, batch_signed=batched)
    return count / (time.perf_counter() - started)


async def oona_consume(bus: Bus, keyring: Keyring, stream: str, count: int) -> float:
    handled = 0

    async def handler(delivery: Delivery) -> None:
        nonlocal handled
        handled += 1

    sub = Subscription("bench", "c1", (stream,), TYPES)
    consumer = Consumer(bus, sub, handler, keyring)
    await consumer.start()
    started = time.perf_counter()
    while handled < count:
        await consumer.poll_once(block=False)
    return count / (time.perf_counter() - started)


def _producer(
    url: str, cluster: bool, prefix: str, stream: str, key: bytes, rate: float, total: int
) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    async def main() -> None:
        settings = OonaSettings(redis_url=url, redis_cluster=cluster, key_prefix=prefix)
        signer = Signer.from_private_key(Ed25519PrivateKey.from_private_bytes(key))
        bus = Bus(open_redis(url, settings), settings, signer, source="bench")
        interval = 1.0 / rate
        start = time.perf_counter()
        for i in range(total):
            delay = start + i * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await bus.publish(pb.MESSAGE_TYPE_TELEMETRY, PAYLOAD, stream=stream)
        await bus.close()

    asyncio.run(main())


async def fixed_rate_latency(
    bus: Bus, keyring: Keyring, signer_bytes: bytes, rate: float, seconds: float
) -> list[float]:
    stream = "bench.latency"
    total = int(rate * seconds)
    latencies: list[float] = []

    async def handler(delivery: Delivery) -> None:
        latencies.append((time.time_ns() - delivery.envelope.issued_at_ns) / 1e6)

    sub = Subscription("bench", "lat", (stream,), TYPES)
    consumer = Consumer(bus, sub, handler, keyring)
    await consumer.start()
    ctx = mp.get_context("spawn")
    producer = ctx.Process(
        target=_producer,
        args=(bus.settings.redis_url, bus.settings.redis_cluster, bus.settings.key_prefix,
              stream, signer_bytes, rate, total),
    )  # fmt: skip
    producer.start()
    deadline = time.monotonic() + seconds * 3 + 30
    while len(latencies) < total and time.monotonic() < deadline:
        await consumer.poll_once()
    producer.join()
    return latencies


async def main_async(args: argparse.Namespace, url: str, server_name: str) -> dict[str, object]:
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
    )

    settings = OonaSettings(
        redis_url=url, redis_cluster=args.cluster, key_prefix=f"bench-{uuid.uuid4().hex[:8]}"
    )
    signer = Signer.generate()
    keyring = Keyring.of(signer.public_key(), role=UNRESTRICTED)
    bus = Bus(open_redis(url, settings), settings, signer, source="bench")
    n = args.messages
    raw = await raw_xadd(settings, n, args.chunk)
    batched = await oona_publish(bus, "bench.batched", n, args.chunk, batched=True)
    single = await oona_publish(bus, "bench.single", n // 5, args.chunk, batched=False)
    consume = await oona_consume(bus, keyring, "bench.batched", n)
    key_bytes = signer.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    latencies = await fixed_rate_latency(bus, keyring, key_bytes, args.rate, args.seconds)
    await bus.close()
    return {
        "bench": "bus",
        "raw_xadd_msgs_per_s": round(raw),
        "oona_batch_publish_msgs_per_s": round(batched),
        "oona_single_signed_publish_msgs_per_s": round(single),
        "publish_ratio_b_over_a": round(batched / raw, 3),
        "oona_consume_ack_msgs_per_s": round(consume),
        "latency_offered_rate_msgs_per_s": args.rate,
        "latency_samples": len(latencies),
        "latency_p50_ms": round(statistics.median(latencies), 3) if latencies else None,
        "latency_p99_ms": round(percentile(latencies, 0.99), 3) if latencies else None,
        "sizes": {
            "messages": n,
            "payload_bytes": len(PAYLOAD),
            "pipeline_chunk": args.chunk,
            "batch_signed_envelopes_per_entry": 64,
        },
        "server": server_name,
        "machine": machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one final JSON line")
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--chunk", type=int, default=1_000)
    parser.add_argument("--rate", type=float, default=2_000.0, help="offered rate for (d)")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of (d)")
    parser.add_argument("--cluster", action="store_true", help="run on a local Redis Cluster")
    args = parser.parse_args()
    if args.cluster:
        with bus_cluster() as (url, server_name):
            result = asyncio.run(main_async(args, url, server_name))
    else:
        with bus_server() as (url, server_name, _):
            result = asyncio.run(main_async(args, url, server_name))
    rows = [
        ("(a) raw redis-py pipelined XADD", f"{result['raw_xadd_msgs_per_s']:,} msg/s"),
        ("(b) Oona batch-signed publish", f"{result['oona_batch_publish_msgs_per_s']:,} msg/s"),
        ("    Oona per-entry-signed publish",
         f"{result['oona_single_signed_publish_msgs_per_s']:,} msg/s"),
        ("    ratio (b)/(a)", f"{result['publish_ratio_b_over_a']}"),
        ("(c) Oona consume + ack", f"{result['oona_consume_ack_msgs_per_s']:,} msg/s"),
        (f"(d) latency at {args.rate:,.0f} msg/s p50 / p99",
         f"{result['latency_p50_ms']} / {result['latency_p99_ms']} ms"),
    ]  # fmt: skip
    print(f"server: {server_name}; machine: {os.cpu_count()} cores")
    for label, value in rows:
        print(f"  {label:<44} {value}")
    if args.json:
        print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
