"""Every kind of bad entry on the real server: counted with its reason, emitted as a
telemetry event, dead-lettered once with the reason, never retried, and the consumer
goes on with the next good entry."""

from __future__ import annotations

import time

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.events import EventKind, event
from oona.bus import Bus
from oona.consumer import Consumer, Subscription
from oona.envelope import SINGLE_FIELD, make_envelope, seal
from oona.events import MESSAGE_REJECTED, BufferedEventSink
from oona.keys import Keyring, Signer
from oona.settings import OonaSettings
from oona.streams import Stream
from tests.bus.helpers import Recorder

from .helpers import dead_letters

TELEMETRY = pb.MESSAGE_TYPE_TELEMETRY
MAX_ENTRY_BYTES = 4_096


def _envelope(**overrides: object) -> pb.BusEnvelope:
    fields: dict[str, object] = {
        "stream": Stream.TELEMETRY, "message_type": TELEMETRY, "payload": b"ok", "source": "t",
    }  # fmt: skip
    fields.update(overrides)
    return make_envelope(**fields)  # type: ignore[arg-type]


async def test_every_rejection_reason_is_counted_emitted_and_dead_lettered_once(
    settings: OonaSettings, signer: Signer, keyring: Keyring, bus: Bus
) -> None:
    sink = BufferedEventSink()
    observed = bus
    now_ns = time.time_ns()
    ns = bus.settings.key_prefix
    tampered = pb.BusEnvelope.FromString(seal(_envelope(), signer, namespace=ns))
    tampered.payload = b"forged"
    entries = {
        "missing_signature": _envelope().SerializeToString(),
        "invalid_signature": tampered.SerializeToString(),
        "unknown_key": seal(_envelope(), Signer.generate(), namespace=ns),
        "stale": seal(_envelope(issued_at_ns=now_ns - 61_000_000_000), signer, namespace=ns),
        "future": seal(_envelope(issued_at_ns=now_ns + 6_000_000_000), signer, namespace=ns),
        "wrong_type": seal(
            _envelope(message_type=pb.MESSAGE_TYPE_POLICY_UPDATE), signer, namespace=ns
        ),
        "wrong_stream": seal(_envelope(stream=Stream.POLICY), signer, namespace=ns),
        "oversized": seal(_envelope(payload=b"x" * MAX_ENTRY_BYTES), signer, namespace=ns),
        "malformed": b"\x0a\xff\xff not a protobuf",
    }
    key = observed.key(Stream.TELEMETRY)
    for raw in entries.values():
        await observed.redis.xadd(key, {SINGLE_FIELD: raw})
    await observed.publish(TELEMETRY, b"first", stream=Stream.TELEMETRY, message_id="fixed-1")
    await observed.publish(TELEMETRY, b"first", stream=Stream.TELEMETRY, message_id="fixed-1")
    await observed.publish(TELEMETRY, b"good", stream=Stream.TELEMETRY)
    sub = Subscription(
        "hub", "hub-1", (Stream.TELEMETRY,), frozenset({TELEMETRY}),
        max_entry_bytes=MAX_ENTRY_BYTES,
    )  # fmt: skip
    recorder = Recorder()
    consumer = Consumer(observed, sub, recorder, keyring, events=sink)

    await consumer.drain()

    reasons = [*entries, "replay"]
    assert recorder.payloads == [b"first", b"good"]
    metrics = observed.metrics
    for reason in reasons:
        assert metrics.count("rejected", stream=Stream.TELEMETRY, reason=reason) == 1, reason
        assert metrics.count("dead_lettered", stream=Stream.TELEMETRY, reason=reason) == 1
    events = sink.drain()
    assert {e.name for e in events} == {MESSAGE_REJECTED}
    assert sorted(e.attributes["reason"] for e in events) == sorted(reasons)
    dead = await dead_letters(observed, Stream.TELEMETRY)
    assert sorted(record[b"reason"].decode() for record in dead) == sorted(reasons)
    assert all(record[b"attempts"] == b"1" for record in dead)
    assert consumer.retries_scheduled == 0
    assert (await observed.redis.xpending(key, "hub"))["pending"] == 0
    assert metrics.count("retried") == 0


def test_security_events_carry_the_priority_of_the_one_mapping() -> None:
    rejected = event(EventKind.COMMAND_REJECTED, reason="stale")
    applied = event(EventKind.POLICY_UPDATE_APPLIED)
    assert rejected.priority == pb.MESSAGE_PRIORITY_HIGH
    assert applied.priority == pb.MESSAGE_PRIORITY_NORMAL
