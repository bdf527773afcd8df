"""Shared helpers of the telemetry tests: packet builders and bounded waits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.telemetry import add_event, add_metric
from oona.bus import Bus
from oona.envelope import BATCH_FIELD, SINGLE_FIELD
from oona.streams import Stream


def seed_packet(
    run: str, seed: str, layer: str, alpha: float, apply_ms: float
) -> pb.TelemetryPacket:
    """What Kasmina sends each step for one seed (its own units and label names)."""
    packet = pb.TelemetryPacket(source="kasmina")
    add_metric(packet, "apply_latency", apply_ms, "ms", run=run, step="7")
    add_metric(packet, "seed_alpha", alpha, "1", run=run, seed_id=seed, layer_id=layer)
    add_metric(packet, "seed_stage", float(pb.SEED_STAGE_BLENDING), "1", run=run, seed=seed,
               layer=layer)  # fmt: skip
    return packet


def critical_packet(run: str, seed: str, reason: str = "isolation breached") -> pb.TelemetryPacket:
    packet = pb.TelemetryPacket(source="kasmina", priority=pb.MESSAGE_PRIORITY_CRITICAL)
    add_event(packet, "isolation_violation", priority=pb.MESSAGE_PRIORITY_CRITICAL,
              run=run, seed=seed, reason=reason)  # fmt: skip
    return packet


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]], timeout_s: float = 10.0
) -> None:
    """Re-check a condition on state another task or the server changes, with a short
    backoff, until it holds; fails the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    delay = 0.002
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


async def stream_len(bus: Bus, stream: str) -> int:
    return int(await bus.redis.xlen(bus.key(stream)))


async def read_aggregates(bus: Bus) -> list[pb.TelemetryAggregate]:
    """Every aggregate on telemetry.aggregated, in stream order (not verified: the
    consumers under test verify; this only reads what they forwarded)."""
    reply: Any = await bus.redis.xrange(bus.key(Stream.TELEMETRY_AGGREGATED))
    out: list[pb.TelemetryAggregate] = []
    for _, fields in reply:
        if SINGLE_FIELD in fields:
            envelopes = [pb.BusEnvelope.FromString(fields[SINGLE_FIELD])]
        else:
            envelopes = list(pb.EnvelopeBatch.FromString(fields[BATCH_FIELD]).envelopes)
        out.extend(pb.TelemetryAggregate.FromString(e.payload) for e in envelopes)
    return out
