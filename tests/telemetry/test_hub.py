"""The aggregation hub on the real server: fast path, windows, dedup, shedding."""

from __future__ import annotations

import asyncio
import time

from consumers.hub.overload import OverloadPolicy
from consumers.hub.service import HubSettings, TelemetryHub
from leyline_pb import leyline_pb2 as pb
from leyline_vocab.telemetry import add_event
from oona.bus import Bus
from oona.keys import Keyring
from oona.streams import Stream
from producers.telemetry import TelemetryProducer

from .helpers import critical_packet, read_aggregates, seed_packet, wait_until

SLOW_WINDOW = HubSettings(window_ms=60_000)


def series_by(aggregate: pb.TelemetryAggregate) -> dict[tuple[str, str], pb.AggregatedSeries]:
    return {(s.name, s.labels.get("seed", "")): s for s in aggregate.series}


async def test_critical_is_forwarded_at_once_and_normal_in_a_window_batch(
    bus: Bus, keyring: Keyring
) -> None:
    producer = TelemetryProducer(bus, source="kasmina")
    for i in range(90):
        producer.emit(seed_packet("r1", f"s{i % 3}", "L2", alpha=i / 100, apply_ms=1.5))
    await producer.flush()
    await producer.send(critical_packet("r1", "s1"))  # published after the NORMAL ones
    hub = TelemetryHub(bus, keyring, SLOW_WINDOW, consumer_name="hub-a")

    await hub.drain()

    [fast] = await read_aggregates(bus)  # no window has closed yet
    assert fast.priority == pb.MESSAGE_PRIORITY_CRITICAL
    [event] = fast.events
    assert event.event.name == "kasmina.isolation_violation"
    assert dict(event.labels) == {"run": "r1", "seed": "s1"}
    assert (await bus.redis.xpending(bus.key(Stream.EMERGENCY), "telemetry-hub"))["pending"] == 0

    await hub.flush()
    _, batch = await read_aggregates(bus)
    series = series_by(batch)
    alphas = {seed: series[("kasmina.seed_alpha", seed)] for seed in ("s0", "s1", "s2")}
    assert {s.count for s in alphas.values()} == {30}  # one series per seed, never merged
    assert alphas["s2"].last == 0.89 and alphas["s0"].min == 0.0
    assert dict(alphas["s0"].labels) == {"run": "r1", "seed": "s0", "layer": "L2"}
    latency = series[("kasmina.apply_latency", "")]
    assert latency.unit == "seconds" and latency.kind == pb.METRIC_KIND_HISTOGRAM
    assert abs(latency.max - 0.0015) < 1e-12 and sum(latency.bucket_counts) == 90
    assert dict(latency.labels) == {"run": "r1"}  # the per-step label was dropped
    assert batch.hub_counters["packets_received"] == 91  # the CRITICAL one included
    assert batch.hub_counters["labels_dropped"] == 90
    assert [s.source for s in batch.sources] == ["kasmina"]


async def test_the_same_packet_id_is_counted_once(bus: Bus, keyring: Keyring) -> None:
    producer = TelemetryProducer(bus, source="kasmina")
    packet = producer.stamp(seed_packet("r1", "s1", "L1", 0.5, 1.0))
    for _ in range(3):  # three envelopes (a producer retry), same packet id
        await bus.publish(pb.MESSAGE_TYPE_TELEMETRY, packet.SerializeToString(),
                          stream=Stream.TELEMETRY)  # fmt: skip
    hub = TelemetryHub(bus, keyring, SLOW_WINDOW, consumer_name="hub-b")
    await hub.drain()
    await hub.flush()
    [batch] = await read_aggregates(bus)
    assert series_by(batch)[("kasmina.seed_alpha", "s1")].count == 1
    assert batch.hub_counters["packets_duplicate"] == 2
    assert batch.hub_counters["packets_received"] == 3


async def test_under_overload_normal_is_shed_and_counted_but_urgent_never(
    bus: Bus, keyring: Keyring
) -> None:
    producer = TelemetryProducer(bus, source="kasmina")
    for i in range(300):
        producer.emit(seed_packet("r1", f"s{i % 5}", "L1", 0.5, 1.0))
    await producer.flush()
    for i in range(5):
        await producer.send(critical_packet("r1", f"s{i}"))
        high = pb.TelemetryPacket(priority=pb.MESSAGE_PRIORITY_HIGH)
        add_event(high, "loss_spike", priority=pb.MESSAGE_PRIORITY_HIGH, run="r1", n=i)
        await producer.send(high)
    # The hub reads every entry 10 s after it was written: it is far behind.
    late = HubSettings(window_ms=60_000, overload=OverloadPolicy(shed_after_ms=2_000))
    hub = TelemetryHub(bus, keyring, late, consumer_name="hub-c",
                       clock_ns=lambda: time.time_ns() + 10_000_000_000)  # fmt: skip
    await hub.drain()
    await hub.flush()
    aggregates = await read_aggregates(bus)
    critical = [a for a in aggregates if a.priority == pb.MESSAGE_PRIORITY_CRITICAL]
    [batch] = [a for a in aggregates if a.priority == pb.MESSAGE_PRIORITY_NORMAL]
    assert len(critical) == 5
    assert batch.hub_counters["packets_shed"] == 300
    assert not batch.series
    assert [e.event.name for e in batch.events] == ["kasmina.loss_spike"] * 5


async def test_other_message_types_on_the_emergency_stream_are_acked_and_counted(
    bus: Bus, keyring: Keyring
) -> None:
    await bus.publish(pb.MESSAGE_TYPE_EVENT, b"breaker open", priority=pb.MESSAGE_PRIORITY_CRITICAL)
    await bus.publish(pb.MESSAGE_TYPE_TELEMETRY, b"\xff\xff not protobuf", stream=Stream.TELEMETRY)
    hub = TelemetryHub(bus, keyring, SLOW_WINDOW, consumer_name="hub-d")
    await hub.drain()
    await hub.flush()
    [batch] = await read_aggregates(bus)
    assert batch.hub_counters["messages_ignored"] == 1
    assert batch.hub_counters["packets_malformed"] == 1
    assert await bus.redis.xlen(bus.dead_letter_key(Stream.EMERGENCY)) == 0


async def test_run_flushes_every_window_and_once_more_on_stop(bus: Bus, keyring: Keyring) -> None:
    hub = TelemetryHub(bus, keyring, HubSettings(window_ms=50), consumer_name="hub-e")
    stop = asyncio.Event()
    task = asyncio.create_task(hub.run(stop))
    producer = TelemetryProducer(bus, source="tolaria")
    producer.emit(seed_packet("r1", "s1", "L1", 0.5, 1.0))
    await producer.flush()

    async def forwarded() -> bool:
        return any(a.series for a in await read_aggregates(bus))

    await wait_until(forwarded)
    stop.set()
    await task
    heartbeats = await read_aggregates(bus)
    assert len(heartbeats) >= 2  # windows are forwarded even when empty
