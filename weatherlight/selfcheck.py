"""End-to-end bus self-check.

It starts (or connects to) the server, publishes signed traffic, consumes it, SIGKILLs
a consumer that holds entries mid-batch and shows another claiming and processing
them exactly once, drives a poison message and a forged envelope to the dead-letter
stream, and prints what happened in plain words. Exit status 0 means every check held.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from leyline_pb import leyline_pb2 as pb
from oona.bus import Bus, Outgoing
from oona.connection import open_redis
from oona.consumer import Consumer, Delivery, Subscription
from oona.envelope import SINGLE_FIELD, make_envelope, seal
from oona.keys import UNRESTRICTED, Keyring, Signer
from oona.replies import entries
from oona.server import EmbeddedServer
from oona.settings import OonaSettings
from oona.streams import Stream
from weatherlight.hung_consumer import hold_then_kill
from weatherlight.settings import SystemSettings

ALL_TYPES = frozenset(pb.MessageType.values())


@dataclass
class Report:
    lines: list[tuple[bool, str]] = field(default_factory=list)

    def check(self, ok: bool, text: str) -> None:
        self.lines.append((ok, text))
        print(f"  [{'ok' if ok else 'FAIL'}] {text}", flush=True)

    @property
    def passed(self) -> bool:
        return all(ok for ok, _ in self.lines)


async def _drain_until(consumer: Consumer, done: object, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:  # type: ignore[operator]
        await consumer.poll_once()


async def _run(settings: OonaSettings, report: Report) -> None:
    signer = Signer.generate()
    keyring = Keyring.of(signer.public_key(), role=UNRESTRICTED)
    bus = Bus(open_redis(settings.redis_url, settings), settings, signer, source="selfcheck")
    try:
        await _publish_and_consume(bus, keyring, report)
        await _killed_consumer(bus, keyring, signer, report)
        await _dead_letters(bus, keyring, report)
        await _print_metrics(bus)
    finally:
        await bus.close()


async def _publish_and_consume(bus: Bus, keyring: Keyring, report: Report) -> None:
    print("\n1. publish and consume", flush=True)
    started = time.perf_counter()
    telemetry = [Outgoing(pb.MESSAGE_TYPE_TELEMETRY, b"t" * 200) for _ in range(5_000)]
    await bus.publish_many(telemetry, batch_size=64)
    urgent = [
        Outgoing(pb.MESSAGE_TYPE_EVENT, b"breaker open", priority=pb.MESSAGE_PRIORITY_CRITICAL)
        for _ in range(20)
    ]
    await bus.publish_many(urgent, batch_signed=False)
    publish_s = time.perf_counter() - started
    report.check(
        True, f"published 5,000 signed NORMAL and 20 CRITICAL messages in {publish_s:.2f}s"
    )

    order: list[str] = []

    async def record(delivery: Delivery) -> None:
        order.append(delivery.stream)

    sub = Subscription("selfcheck", "reader", (Stream.EMERGENCY, Stream.NORMAL), ALL_TYPES)
    consumer = Consumer(bus, sub, record, keyring)
    started = time.perf_counter()
    await _drain_until(consumer, lambda: len(order) >= 5_020)
    consume_s = time.perf_counter() - started
    report.check(len(order) == 5_020, f"consumed and acked {len(order):,} in {consume_s:.2f}s")
    first_normal = order.index(Stream.NORMAL) if Stream.NORMAL in order else -1
    report.check(first_normal == 20, "all 20 CRITICAL messages were handled before NORMAL ones")


async def _killed_consumer(bus: Bus, keyring: Keyring, signer: Signer, report: Report) -> None:
    print("\n2. a consumer SIGKILLed mid-batch", flush=True)
    stream = Stream.FIELD_REPORTS
    jobs = [Outgoing(pb.MESSAGE_TYPE_FIELD_REPORT, f"report-{i}".encode(), stream=stream)
            for i in range(50)]  # fmt: skip
    await bus.publish_many(jobs, batch_signed=False)
    pid, held = await hold_then_kill(
        bus.settings.redis_url,
        bus.settings.key_prefix,
        stream,
        signer.public_key(),
        bus.settings.claim_idle_ms,
    )
    report.check(held == 50, f"consumer pid {pid} held {held} entries, then was killed")

    seen: Counter[bytes] = Counter()

    async def process(delivery: Delivery) -> None:
        seen[delivery.envelope.payload] += 1

    sub = Subscription("g", "rescuer", (stream,), ALL_TYPES)
    rescuer = Consumer(bus, sub, process, keyring)
    started = time.perf_counter()
    await _drain_until(rescuer, lambda: len(seen) >= 50)
    claimed = int(bus.metrics.count("claimed", stream=stream))
    waited = time.perf_counter() - started
    report.check(
        claimed == 50 and set(seen.values()) == {1} and len(seen) == 50,
        f"another consumer claimed {claimed} idle entries after {waited:.2f}s "
        f"and processed each exactly once",
    )


async def _dead_letters(bus: Bus, keyring: Keyring, report: Report) -> None:
    print("\n3. poison and forged messages go to the dead-letter stream", flush=True)
    stream = "selfcheck.poison"
    await bus.publish(pb.MESSAGE_TYPE_EVENT, b"poison", stream=stream)
    forged = make_envelope(
        stream=stream, message_type=pb.MESSAGE_TYPE_EVENT, payload=b"forged", source="mallory"
    )
    await bus.redis.xadd(
        bus.key(stream),
        {SINGLE_FIELD: seal(forged, Signer.generate(), namespace=bus.settings.key_prefix)},
    )

    async def refuse_poison(delivery: Delivery) -> None:
        raise ValueError("cannot apply this message")

    sub = Subscription("poison-check", "worker", (stream,), ALL_TYPES)
    consumer = Consumer(bus, sub, refuse_poison, keyring)
    await _drain_until(consumer, lambda: bus.metrics.count("dead_lettered") >= 2)
    records = entries(await bus.redis.xrange(bus.dead_letter_key(stream)))
    for _, record in records[-2:]:
        print(
            "      dead letter: reason={reason} attempts={attempts} group={group} "
            "consumer={consumer} detail={detail}".format(
                **{k.decode(): v.decode(errors="replace") for k, v in record.items()
                   if not k.startswith(b"orig_")}
            ),
            flush=True,
        )  # fmt: skip
    reasons = sorted(record[b"reason"].decode() for _, record in records[-2:])
    report.check(
        reasons == ["handler_failed", "unknown_key"],
        f"poison message dead-lettered after {bus.settings.max_deliveries} attempts; "
        "forged envelope rejected (unknown_key) without being applied",
    )


async def _print_metrics(bus: Bus) -> None:
    print("\n4. bus metrics", flush=True)
    print("      (messages)")
    for name in ("published", "handled", "shed"):
        print(f"      {name:<14} {int(bus.metrics.count(name)):>8,}")
    print("      (stream entries; a signed batch of up to 64 messages is one entry)")
    for name in ("delivered", "acked", "retried", "claimed", "dead_lettered", "rejected"):
        print(f"      {name:<14} {int(bus.metrics.count(name)):>8,}")
    print(f"      {'io_failures':<14} {int(bus.metrics.count('io_failures')):>8,}")
    hist = bus.metrics.histogram("delivery_latency_s", stream=Stream.EMERGENCY)
    if hist is not None:
        print(f"      emergency delivery p99 <= {hist.quantile(0.99) * 1000:.1f} ms")


def run(args: argparse.Namespace) -> int:
    """Entry point of `tamiyo-bus selfcheck`."""
    system = SystemSettings.from_env()
    base = system.oona
    server: EmbeddedServer | None = None
    if not base.redis_url:
        data_dir = args.data_dir or system.data_dir
        server = EmbeddedServer(data_dir=data_dir / "redis", appendonly=True).start()
        base = base.with_overrides(redis_url=server.url)
        print(f"embedded server: {server.version()} (log: {server.log_path})")
    else:
        print(f"server: {base.redis_url}")
    settings = base.with_overrides(
        key_prefix=f"selfcheck-{int(time.time())}",
        claim_idle_ms=300,
        claim_interval_ms=100,
        retry_backoff_base_ms=20.0,
        retry_backoff_max_ms=200.0,
        max_deliveries=3,
    )
    report = Report()
    try:
        asyncio.run(_run(settings, report))
    finally:
        if server is not None:
            server.stop()
    verdict = "PASSED" if report.passed else "FAILED"
    print(f"\nbus self-check {verdict}: {sum(ok for ok, _ in report.lines)}/{len(report.lines)}")
    return 0 if report.passed else 1


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("selfcheck", help="end-to-end bus self-check")
    parser.add_argument(
        "--data-dir", type=Path, help="server data directory (default: $TAMIYO_DATA_DIR)"
    )
    parser.set_defaults(run=run)
