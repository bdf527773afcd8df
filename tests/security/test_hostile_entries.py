"""Attack classes 1 and 2 of issue 17: a writer on the server with no key puts bytes
in an entry. Nothing it writes may raise out of the consumer; each bad entry is a
counted, evented, dead-lettered rejection of that entry alone, and the bounds are
checked before any per-envelope work."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from leyline_pb import leyline_pb2 as pb
from oona.bus import Bus, Outgoing
from oona.consumer import Consumer, Subscription
from oona.envelope import BATCH_FIELD, SINGLE_FIELD, make_envelope, seal, seal_batch
from oona.events import MESSAGE_REJECTED, BufferedEventSink
from oona.keys import Keyring, Signer
from oona.streams import Stream
from tests.bus.helpers import Recorder

from .helpers import dead_letters

TELEMETRY = pb.MESSAGE_TYPE_TELEMETRY
ENVELOPES_PER_BATCH_LIMIT = 64


def _telemetry_subscription(**limits: int) -> Subscription:
    return Subscription("g", "c1", (Stream.TELEMETRY,), frozenset({TELEMETRY}), **limits)


async def _xadd(bus: Bus, stream: str, field: bytes, raw: bytes) -> None:
    await bus.redis.xadd(bus.key(stream), {field: raw})


async def test_unsigned_bytes_that_break_signing_are_rejected_alone_and_the_read_goes_on(
    bus: Bus, keyring: Keyring
) -> None:
    """Negative proto3 enums (message_type, priority) once made signing_bytes raise
    struct.error out of poll_once, and every good entry of the same read was lost."""
    await bus.publish(TELEMETRY, b"before", stream=Stream.TELEMETRY)
    poison = [
        pb.BusEnvelope(message_type=-1, signature=b"x" * 64),  # type: ignore[arg-type]
        pb.BusEnvelope(priority=-7, message_id="m", signature=b"x" * 64),  # type: ignore[arg-type]
        pb.BusEnvelope(message_type=2**31 - 1, signature=b"x" * 64),  # type: ignore[arg-type]
    ]
    for envelope in poison:
        await _xadd(bus, Stream.TELEMETRY, SINGLE_FIELD, envelope.SerializeToString())
    batch = pb.EnvelopeBatch(batch_id="b", key_id="k", signature=b"x" * 64)
    batch.envelopes.add(message_type=-5, key_id="k")  # type: ignore[arg-type]
    await _xadd(bus, Stream.TELEMETRY, BATCH_FIELD, batch.SerializeToString())
    await bus.publish(TELEMETRY, b"after", stream=Stream.TELEMETRY)
    sink = BufferedEventSink()
    recorder = Recorder()
    consumer = Consumer(bus, _telemetry_subscription(), recorder, keyring, events=sink)

    await consumer.drain()

    assert recorder.payloads == [b"before", b"after"]
    assert bus.metrics.count("rejected") == 4
    assert bus.metrics.count("dead_lettered") == 4
    assert [e.name for e in sink.drain()] == [MESSAGE_REJECTED] * 4
    assert (await bus.redis.xpending(bus.key(Stream.TELEMETRY), "g"))["pending"] == 0


async def test_a_signed_envelope_of_an_unknown_message_type_is_a_wrong_type_rejection(
    bus: Bus, signer: Signer, keyring: Keyring
) -> None:
    """A newer schema's message type once raised ValueError while naming it."""
    newer = make_envelope(stream=Stream.TELEMETRY, message_type=TELEMETRY, payload=b"", source="t")
    newer.message_type = 4242  # type: ignore[assignment]
    await bus.redis.xadd(
        bus.key(Stream.TELEMETRY),
        {SINGLE_FIELD: seal(newer, signer, namespace=bus.settings.key_prefix)},
    )
    await bus.publish(TELEMETRY, b"after", stream=Stream.TELEMETRY)
    recorder = Recorder()
    consumer = Consumer(bus, _telemetry_subscription(), recorder, keyring)

    await consumer.drain()

    assert recorder.payloads == [b"after"]
    assert bus.metrics.count("rejected", stream=Stream.TELEMETRY, reason="wrong_type") == 1


async def test_a_batch_over_the_documented_envelope_limit_is_rejected_even_when_signed(
    bus: Bus, signer: Signer, keyring: Keyring
) -> None:
    envelopes = [
        make_envelope(stream=Stream.TELEMETRY, message_type=TELEMETRY, payload=b"", source="t")
        for _ in range(ENVELOPES_PER_BATCH_LIMIT + 1)
    ]
    raw = seal_batch(envelopes, signer, namespace=bus.settings.key_prefix)
    await _xadd(bus, Stream.TELEMETRY, BATCH_FIELD, raw)
    at_limit = [Outgoing(TELEMETRY, b"ok", stream=Stream.TELEMETRY)] * ENVELOPES_PER_BATCH_LIMIT
    await bus.publish_many(at_limit, batch_size=ENVELOPES_PER_BATCH_LIMIT)
    recorder = Recorder()
    consumer = Consumer(bus, _telemetry_subscription(), recorder, keyring)

    await consumer.drain()

    assert len(recorder.deliveries) == ENVELOPES_PER_BATCH_LIMIT
    assert bus.metrics.count("rejected") == 1
    assert bus.metrics.count("rejected", stream=Stream.TELEMETRY, reason="too_many_envelopes") == 1


async def test_a_million_empty_envelopes_are_refused_before_any_is_parsed(
    bus: Bus, keyring: Keyring
) -> None:
    """2 MB of empty envelopes once took seconds and ~500 MB before `unknown_key`, on a
    lane that takes entries of that size."""
    raw = b"\x12\x00" * 1_000_000  # field 2 (envelopes), length 0, a million times
    await _xadd(bus, Stream.TELEMETRY, BATCH_FIELD, raw)
    subscription = _telemetry_subscription(max_entry_bytes=8 * 1024 * 1024)
    consumer = Consumer(bus, subscription, Recorder(), keyring)

    await consumer.drain()

    assert bus.metrics.count("rejected") == 1
    assert bus.metrics.count("rejected", stream=Stream.TELEMETRY, reason="too_many_envelopes") == 1


def test_refusing_a_million_envelope_batch_costs_no_memory() -> None:
    """In a fresh interpreter, so the peak resident size measures this call alone."""
    script = textwrap.dedent(
        """
        import json, resource
        from leyline_pb import leyline_pb2 as pb
        from oona.envelope import BATCH_FIELD, EnvelopeRules, open_entry
        from oona.errors import RejectedMessage
        from oona.keys import Keyring, Signer, UNRESTRICTED
        keyring = Keyring.of(Signer.generate().public_key(), role=UNRESTRICTED)
        rules = EnvelopeRules(stream="telemetry", namespace="t", max_entry_bytes=8 << 20,
                              accepted_types=frozenset({pb.MESSAGE_TYPE_TELEMETRY}))
        raw = b"\\x12\\x00" * 1_000_000
        before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            open_entry({BATCH_FIELD: raw}, rules, keyring, now_ns=0)
            reason = "accepted"
        except RejectedMessage as rejection:
            reason = rejection.reason
        after_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"reason": reason, "grown_kib": after_kib - before_kib}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["reason"] == "too_many_envelopes"
    assert result["grown_kib"] < 32 * 1024


async def test_entry_size_is_bounded_per_stream_and_dead_letters_keep_a_bounded_copy(
    bus: Bus, keyring: Keyring
) -> None:
    """The telemetry lane takes 1 MiB entries, not the policy lane's 64 MiB; the
    dead-letter record of an oversized entry keeps its digest and a prefix, not the
    whole payload in a stream that is never trimmed."""
    raw = b"\x0a" + b"\xff" * (2 * 1024 * 1024)
    await _xadd(bus, Stream.TELEMETRY, SINGLE_FIELD, raw)
    consumer = Consumer(bus, _telemetry_subscription(), Recorder(), keyring)

    await consumer.drain()

    assert bus.metrics.count("rejected", stream=Stream.TELEMETRY, reason="oversized") == 1
    [record] = await dead_letters(bus, Stream.TELEMETRY)
    assert record[b"reason"] == b"oversized"
    assert int(record[b"orig_e_bytes"]) == len(raw)
    assert len(record[b"orig_e"]) <= 64 * 1024
    assert len(record[b"orig_e_sha256"]) == 64
