"""Failure paths on the real server: retries, dead letters, a killed consumer,
rejections, and the breaker that only IO can open."""

from __future__ import annotations

from pathlib import Path

from leyline_pb import leyline_pb2 as pb
from oona.breaker import BreakerState
from oona.bus import Bus, Outgoing
from oona.consumer import Consumer, Delivery
from oona.envelope import SINGLE_FIELD, make_envelope, seal
from oona.errors import RejectedMessage
from oona.keys import Keyring, Signer
from oona.streams import Stream
from weatherlight.hung_consumer import hold_then_kill

from .helpers import Recorder, poll_until, subscription

TELEMETRY = pb.MESSAGE_TYPE_TELEMETRY
ROOT = Path(__file__).resolve().parents[2]


async def test_transient_failure_is_retried_with_backoff_then_acked(
    bus: Bus, keyring: Keyring
) -> None:
    attempts: list[int] = []

    def fail_twice(delivery: Delivery) -> bool:
        attempts.append(delivery.delivery_count)
        return len(attempts) < 3

    recorder = Recorder(fail=fail_twice)
    await bus.publish(TELEMETRY, b"flaky", stream=Stream.NORMAL)
    consumer = Consumer(bus, subscription(Stream.NORMAL), recorder, keyring)

    await poll_until(consumer, lambda: len(recorder.deliveries) == 1)

    assert attempts == [1, 2, 3]  # the server's delivery count, one per attempt
    assert (await bus.redis.xpending(bus.key(Stream.NORMAL), "g"))["pending"] == 0
    assert bus.metrics.count("retried") == 2
    assert bus.metrics.count("dead_lettered") == 0


async def test_poison_message_reaches_dead_letter_with_provenance(
    bus: Bus, keyring: Keyring
) -> None:
    bus.settings = bus.settings.with_overrides(max_deliveries=3)
    await bus.publish(TELEMETRY, b"poison", stream=Stream.NORMAL)
    await bus.publish(TELEMETRY, b"fine", stream=Stream.NORMAL)
    recorder = Recorder(fail=lambda d: d.envelope.payload == b"poison")
    consumer = Consumer(bus, subscription(Stream.NORMAL, consumer="worker-7"), recorder, keyring)

    await poll_until(consumer, lambda: bus.metrics.count("dead_lettered") == 1)

    assert recorder.payloads == [b"fine"]
    [(_, record)] = await bus.redis.xrange(bus.dead_letter_key(Stream.NORMAL))
    assert record[b"source_stream"] == b"normal"
    assert record[b"group"] == b"g"
    assert record[b"consumer"] == b"worker-7"
    assert record[b"reason"] == b"handler_failed"
    assert b"RuntimeError" in record[b"detail"]
    assert record[b"attempts"] == b"3"
    assert int(record[b"first_delivery_ms"]) <= int(record[b"last_delivery_ms"])
    assert pb.BusEnvelope.FromString(record[b"orig_e"]).payload == b"poison"
    assert (await bus.redis.xpending(bus.key(Stream.NORMAL), "g"))["pending"] == 0
    assert bus.metrics.count("dead_lettered", stream="normal", reason="handler_failed") == 1


async def test_killed_consumers_entries_are_claimed_and_processed_exactly_once(
    bus: Bus, keyring: Keyring, signer: Signer
) -> None:
    payloads = [f"job-{i}".encode() for i in range(40)]
    await bus.publish_many(
        [Outgoing(TELEMETRY, p, stream=Stream.NORMAL) for p in payloads], batch_signed=False
    )
    _, held = await hold_then_kill(
        bus.settings.redis_url,
        bus.settings.key_prefix,
        Stream.NORMAL,
        signer.public_key(),
        bus.settings.claim_idle_ms,
    )
    assert held == 40  # the victim holds every entry, pending, mid-batch

    processed: list[bytes] = []

    async def count(delivery: Delivery) -> None:
        await bus.redis.hincrby(bus.settings.key_prefix + ":done", delivery.envelope.payload)
        processed.append(delivery.envelope.payload)

    rescuer = Consumer(bus, subscription(Stream.NORMAL, consumer="rescuer"), count, keyring)
    await poll_until(rescuer, lambda: len(processed) >= 40)
    await rescuer.drain()

    counts = await bus.redis.hgetall(bus.settings.key_prefix + ":done")
    assert sorted(counts) == sorted(payloads)
    assert set(counts.values()) == {b"1"}
    assert bus.metrics.count("claimed") == 40
    assert (await bus.redis.xpending(bus.key(Stream.NORMAL), "g"))["pending"] == 0


async def test_consumer_restarted_under_the_same_name_drains_its_own_pending_first(
    bus: Bus, keyring: Keyring
) -> None:
    await bus.publish_many(
        [Outgoing(TELEMETRY, b"old", stream=Stream.NORMAL) for _ in range(3)], batch_signed=False
    )
    crashing = Consumer(bus, subscription(Stream.NORMAL), Recorder(fail=lambda d: True), keyring)
    await crashing.poll_once(block=False)  # three entries now pending for c1
    await bus.publish(TELEMETRY, b"new", stream=Stream.NORMAL)

    recorder = Recorder()
    restarted = Consumer(bus, subscription(Stream.NORMAL), recorder, keyring)
    await poll_until(restarted, lambda: len(recorder.deliveries) == 4)

    assert recorder.payloads == [b"old", b"old", b"old", b"new"]
    assert [d.delivery_count for d in recorder.deliveries] == [2, 2, 2, 1]


async def _raw_entry(bus: Bus, stream: str, fields: dict[bytes, bytes]) -> None:
    await bus.redis.xadd(bus.key(stream), fields)  # type: ignore[arg-type]


async def test_rejected_entries_go_to_dead_letter_with_reason_and_are_not_retried(
    bus: Bus, keyring: Keyring
) -> None:
    stranger = Signer.generate()
    env = make_envelope(stream=Stream.NORMAL, message_type=TELEMETRY, payload=b"x", source="t")
    await _raw_entry(
        bus, Stream.NORMAL, {SINGLE_FIELD: seal(env, stranger, namespace=bus.settings.key_prefix)}
    )
    tampered = make_envelope(stream=Stream.NORMAL, message_type=TELEMETRY, payload=b"y", source="t")
    sealed = pb.BusEnvelope.FromString(
        seal(tampered, bus.signer, namespace=bus.settings.key_prefix)
    )
    sealed.payload = b"z"
    await _raw_entry(bus, Stream.NORMAL, {SINGLE_FIELD: sealed.SerializeToString()})
    wrong_stream = make_envelope(
        stream=Stream.POLICY, message_type=TELEMETRY, payload=b"", source="t"
    )
    await _raw_entry(
        bus,
        Stream.NORMAL,
        {SINGLE_FIELD: seal(wrong_stream, bus.signer, namespace=bus.settings.key_prefix)},
    )
    await _raw_entry(bus, Stream.NORMAL, {SINGLE_FIELD: b"\xff\xff not a protobuf"})
    await _raw_entry(bus, Stream.NORMAL, {b"other": b"field"})
    stale = make_envelope(
        stream=Stream.NORMAL, message_type=TELEMETRY, payload=b"", source="t", issued_at_ns=1
    )
    await _raw_entry(
        bus,
        Stream.NORMAL,
        {SINGLE_FIELD: seal(stale, bus.signer, namespace=bus.settings.key_prefix)},
    )
    unsigned = make_envelope(stream=Stream.NORMAL, message_type=TELEMETRY, payload=b"", source="t")
    await _raw_entry(bus, Stream.NORMAL, {SINGLE_FIELD: unsigned.SerializeToString()})

    recorder = Recorder()
    consumer = Consumer(bus, subscription(Stream.NORMAL), recorder, keyring)
    await consumer.drain()

    assert recorder.deliveries == []
    dead = await bus.redis.xrange(bus.dead_letter_key(Stream.NORMAL))
    reasons = [record[b"reason"].decode() for _, record in dead]
    assert reasons == [
        "unknown_key", "invalid_signature", "wrong_stream", "malformed", "malformed", "stale",
        "missing_signature",
    ]  # fmt: skip
    assert all(record[b"attempts"] == b"1" for _, record in dead)
    assert bus.metrics.count("rejected", stream="normal", reason="malformed") == 2
    assert (await bus.redis.xpending(bus.key(Stream.NORMAL), "g"))["pending"] == 0


async def test_wrong_type_for_the_stream_is_rejected(bus: Bus, keyring: Keyring) -> None:
    await bus.publish(pb.MESSAGE_TYPE_POLICY_UPDATE, b"", stream=Stream.FIELD_REPORTS)
    sub = subscription(Stream.FIELD_REPORTS)
    only_reports = type(sub)(
        sub.group, sub.consumer, sub.streams, frozenset({pb.MESSAGE_TYPE_FIELD_REPORT})
    )
    consumer = Consumer(bus, only_reports, Recorder(), keyring)
    await consumer.drain()
    [(_, record)] = await bus.redis.xrange(bus.dead_letter_key(Stream.FIELD_REPORTS))
    assert record[b"reason"] == b"wrong_type"


async def test_handler_exceptions_never_open_the_io_breaker(bus: Bus, keyring: Keyring) -> None:
    bus.settings = bus.settings.with_overrides(max_deliveries=1)
    await bus.publish_many(
        [Outgoing(TELEMETRY, b"bad", stream=Stream.NORMAL) for _ in range(20)], batch_signed=False
    )
    consumer = Consumer(bus, subscription(Stream.NORMAL), Recorder(fail=lambda d: True), keyring)
    await consumer.drain()
    assert bus.metrics.count("dead_lettered") == 20
    assert bus.io.breaker.state is BreakerState.CLOSED
    await bus.publish(TELEMETRY, b"still publishing", stream=Stream.NORMAL)


async def test_deleted_group_is_recreated_and_applied_entries_are_not_reapplied(
    bus: Bus, keyring: Keyring
) -> None:
    await bus.publish(TELEMETRY, b"a", stream=Stream.NORMAL)
    recorder = Recorder()
    consumer = Consumer(bus, subscription(Stream.NORMAL), recorder, keyring)
    await consumer.drain()
    await bus.redis.xgroup_destroy(bus.key(Stream.NORMAL), "g")
    await bus.publish(TELEMETRY, b"b", stream=Stream.NORMAL)

    await poll_until(consumer, lambda: len(recorder.deliveries) == 2)
    await consumer.drain()

    assert recorder.payloads == [b"a", b"b"]
    assert bus.metrics.count("groups_recreated") >= 1
    assert bus.metrics.count("duplicates") == 1  # "a" came again from id 0, applied once


async def test_batch_entry_resumes_after_the_envelopes_already_applied(
    bus: Bus, keyring: Keyring
) -> None:
    await bus.publish_many(
        [Outgoing(TELEMETRY, str(i).encode(), stream=Stream.NORMAL) for i in range(5)]
    )
    failed_once: list[bytes] = []

    def fail_third_once(delivery: Delivery) -> bool:
        if delivery.envelope.payload == b"2" and not failed_once:
            failed_once.append(delivery.envelope.payload)
            return True
        return False

    recorder = Recorder(fail=fail_third_once)
    consumer = Consumer(bus, subscription(Stream.NORMAL), recorder, keyring)
    await poll_until(consumer, lambda: len(recorder.deliveries) == 5)

    assert recorder.payloads == [b"0", b"1", b"2", b"3", b"4"]  # 0 and 1 applied once
    assert [d.delivery_count for d in recorder.deliveries] == [1, 1, 2, 2, 2]
    assert (await bus.redis.xpending(bus.key(Stream.NORMAL), "g"))["pending"] == 0


async def test_handler_raising_a_rejection_dead_letters_at_once_without_retry(
    bus: Bus, keyring: Keyring
) -> None:
    async def refuse(delivery: Delivery) -> None:
        raise RejectedMessage("not_newer", "version 3 <= running 4")

    await bus.publish(TELEMETRY, b"old policy", stream=Stream.NORMAL)
    consumer = Consumer(bus, subscription(Stream.NORMAL), refuse, keyring)
    await consumer.drain()

    [(_, record)] = await bus.redis.xrange(bus.dead_letter_key(Stream.NORMAL))
    assert (record[b"reason"], record[b"attempts"]) == (b"not_newer", b"1")
    assert consumer.retries_scheduled == 0
    assert bus.metrics.count("rejected", stream="normal", reason="not_newer") == 1
