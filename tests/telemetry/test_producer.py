"""The telemetry producer on the real server: batching, the emergency lane, bounds."""

from __future__ import annotations

import asyncio
from typing import Any

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.telemetry import add_metric
from oona.bus import Bus
from oona.connection import open_redis
from oona.envelope import BATCH_FIELD, SINGLE_FIELD
from oona.keys import Signer
from oona.settings import OonaSettings
from oona.streams import Stream
from producers.sinks import DecisionTelemetrySink, TelemetryEventSink, TelemetryMetricsSink
from producers.telemetry import ProducerSettings, TelemetryProducer

from .helpers import critical_packet, seed_packet, stream_len, wait_until


def normal(i: int) -> pb.TelemetryPacket:
    packet = pb.TelemetryPacket()
    add_metric(packet, "loss", float(i), run="r")
    return packet


async def entries(bus: Bus, stream: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    reply: Any = await bus.redis.xrange(bus.key(stream))
    return list(reply)


async def test_normal_packets_are_batched_under_one_signature_per_64(bus: Bus) -> None:
    producer = TelemetryProducer(bus, source="tolaria")
    for i in range(200):
        producer.emit(normal(i))
    assert await producer.flush() == 200
    rows = await entries(bus, Stream.TELEMETRY)
    assert len(rows) == 4 and all(BATCH_FIELD in fields for _, fields in rows)
    assert await stream_len(bus, Stream.EMERGENCY) == 0
    batch = pb.EnvelopeBatch.FromString(rows[0][1][BATCH_FIELD])
    packet = pb.TelemetryPacket.FromString(batch.envelopes[0].payload)
    assert packet.source == "tolaria" and packet.packet_id and packet.timestamp_ns > 0
    assert producer.stats.batched == 200


async def test_the_background_task_flushes_by_size_and_by_interval(bus: Bus) -> None:
    by_size = TelemetryProducer(
        bus, source="kasmina", settings=ProducerSettings(flush_at_packets=50, flush_interval_ms=6e4)
    )
    await by_size.start()
    for i in range(49):
        by_size.emit(normal(i))
    by_size.emit(normal(49))  # the 50th wakes the flusher long before the interval
    await wait_until(lambda: by_size.stats.batched == 50)
    await by_size.stop()
    by_interval = TelemetryProducer(
        bus, source="kasmina", settings=ProducerSettings(flush_interval_ms=10)
    )
    await by_interval.start()
    by_interval.emit(normal(1))
    await wait_until(lambda: by_interval.stats.batched == 1)
    await by_interval.stop()
    assert await stream_len(bus, Stream.TELEMETRY) == 2


async def test_critical_and_high_go_at_once_on_the_emergency_lane_one_entry_each(
    bus: Bus,
) -> None:
    producer = TelemetryProducer(bus, source="kasmina", settings=ProducerSettings(
        flush_interval_ms=60_000))  # fmt: skip
    await producer.start()
    producer.emit(normal(0))  # waits for its batch
    await producer.send(critical_packet("r", "s1"))
    assert await stream_len(bus, Stream.EMERGENCY) == 1
    high = pb.TelemetryPacket(priority=pb.MESSAGE_PRIORITY_HIGH)
    # from the step path's thread: the background task publishes it at once
    await asyncio.to_thread(producer.emit, high)
    await wait_until(lambda: producer.stats.urgent == 2)
    rows = await entries(bus, Stream.EMERGENCY)
    assert [SINGLE_FIELD in fields for _, fields in rows] == [True, True]
    assert await stream_len(bus, Stream.TELEMETRY) == 0
    await producer.stop()  # flushes the NORMAL packet on the way out
    assert await stream_len(bus, Stream.TELEMETRY) == 1


async def test_concurrent_flushes_publish_each_urgent_packet_once(bus: Bus) -> None:
    """The background task and an explicit flush drain the emergency lane together."""
    producer = TelemetryProducer(bus, source="kasmina")
    await producer.start()
    try:
        for i in range(20):
            producer.emit(critical_packet("r1", f"s{i}"))
        flushed = await asyncio.gather(producer.flush(), producer.flush(), producer.flush())
    finally:
        await producer.stop()
    assert sum(flushed) <= 20
    assert producer.stats.urgent == 20
    assert await stream_len(bus, Stream.EMERGENCY) == 20


async def test_the_buffer_is_bounded_and_drops_the_oldest_counted(bus: Bus) -> None:
    producer = TelemetryProducer(bus, source="tolaria", settings=ProducerSettings(
        buffer_max_packets=10, flush_at_packets=1_000))  # fmt: skip
    for i in range(15):
        producer.emit(normal(i))
    assert producer.stats.dropped == 5
    await producer.flush()
    rows = await entries(bus, Stream.TELEMETRY)
    batch = pb.EnvelopeBatch.FromString(rows[0][1][BATCH_FIELD])
    values = [pb.TelemetryPacket.FromString(e.payload).metrics[0].value for e in batch.envelopes]
    assert values == [float(i) for i in range(5, 15)]


async def test_a_full_telemetry_stream_sheds_normal_counted_but_never_critical(
    settings: OonaSettings, signer: Signer
) -> None:
    capped = settings.with_overrides(stream_caps={Stream.TELEMETRY: 2, Stream.EMERGENCY: 1_000})
    bus = Bus(open_redis(capped.redis_url, capped), capped, signer, source="kasmina")
    try:
        producer = TelemetryProducer(bus, source="kasmina")
        for i in range(64 * 5):
            producer.emit(seed_packet("r", f"s{i % 4}", "L1", 0.5, 1.0))
        for _ in range(20):
            producer.emit(critical_packet("r", "s1"))
        await producer.flush()
        assert bus.metrics.count("shed", stream=Stream.TELEMETRY) == 64 * 3
        assert await stream_len(bus, Stream.TELEMETRY) == 2
        assert await stream_len(bus, Stream.EMERGENCY) == 20
        assert bus.metrics.count("shed", stream=Stream.EMERGENCY) == 0
    finally:
        await bus.close()


class _Record:
    command_id = "c1"
    training_run_id = "run-1"
    global_step = 42
    decision_step = 41
    cadence_steps = 4
    policy_version = 3
    command_type = pb.COMMAND_TYPE_SEED
    action = "COMMAND_TYPE_SEED/SEED_OP_GERMINATE"
    reason = "plateau"
    total_ms = 2.5
    inference_ms = 1.5
    expected_risk_severity = 0.25


async def test_sinks_turn_events_metrics_and_decisions_into_packets(bus: Bus) -> None:
    producer = TelemetryProducer(bus, source="tamiyo")
    event = pb.TelemetryEvent(name="breaker_opened", level=pb.TELEMETRY_LEVEL_CRITICAL,
                              priority=pb.MESSAGE_PRIORITY_CRITICAL,
                              attributes={"breaker": "inference"})  # fmt: skip
    TelemetryEventSink(producer, run="run-1").emit(event)
    metrics = TelemetryMetricsSink(producer, run="run-1")
    metrics.inc("risk_decisions", category="GREEN")
    metrics.set_gauge("risk_conservative_mode", 1.0)
    DecisionTelemetrySink(producer).publish(_Record())
    await producer.flush()
    [(_, urgent)] = await entries(bus, Stream.EMERGENCY)
    sent = pb.TelemetryPacket.FromString(pb.BusEnvelope.FromString(urgent[SINGLE_FIELD]).payload)
    assert sent.priority == pb.MESSAGE_PRIORITY_CRITICAL
    assert dict(sent.events[0].attributes) == {"breaker": "inference", "run": "run-1"}
    [(_, fields)] = await entries(bus, Stream.TELEMETRY)
    batch = pb.EnvelopeBatch.FromString(fields[BATCH_FIELD])
    packets = [pb.TelemetryPacket.FromString(e.payload) for e in batch.envelopes]
    counter, gauge, decision = packets
    assert counter.metrics[0].kind == pb.METRIC_KIND_COUNTER
    assert dict(counter.metrics[0].labels) == {"category": "GREEN", "run": "run-1"}
    assert gauge.metrics[0].kind == pb.METRIC_KIND_GAUGE
    assert decision.events[0].attributes["reason"] == "plateau"
    assert decision.events[0].attributes["command_type"] == "COMMAND_TYPE_SEED"
    assert (
        decision.events[0].attributes["decision_step"],
        decision.events[0].attributes["step"],
    ) == ("41", "42")
    assert {m.name for m in decision.metrics} == {
        "decisions_total",
        "decision_latency",
        "decision_cadence_steps",
        "inference_latency",
        "expected_risk_severity",
    }
