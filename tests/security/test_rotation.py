"""Key rotation on the real server loses no valid message.

The procedure of docs/security.md: verifiers first trust the new key beside the old
(the overlap), then the producer signs with the new key, and only once everything the
old key signed has been consumed do verifiers drop the old key."""

from __future__ import annotations

from leyline_pb import leyline_pb2 as pb
from oona.bus import Bus, Outgoing
from oona.consumer import Consumer
from oona.keys import UNRESTRICTED, Keyring, Signer
from oona.streams import Stream
from tests.bus.helpers import Recorder, subscription

TELEMETRY = pb.MESSAGE_TYPE_TELEMETRY


async def _publish(bus: Bus, tag: str, count: int) -> list[bytes]:
    """Half signed one by one, half in one batch signature."""
    payloads = [f"{tag}-{i}".encode() for i in range(count)]
    half = count // 2
    for payload in payloads[:half]:
        await bus.publish(TELEMETRY, payload, stream=Stream.TELEMETRY)
    await bus.publish_many(
        [Outgoing(TELEMETRY, p, stream=Stream.TELEMETRY) for p in payloads[half:]]
    )
    return payloads


async def test_rotation_with_overlap_loses_no_valid_message(bus: Bus, signer: Signer) -> None:
    old_keyring = Keyring.of(signer.public_key(), role=UNRESTRICTED)
    new = Signer.generate()
    recorder = Recorder()
    sub = subscription(Stream.TELEMETRY, group="hub", consumer="hub-1")

    before = await _publish(bus, "old-consumed", 6)
    consumer = Consumer(bus, sub, recorder, old_keyring)
    await consumer.drain()
    in_flight = await _publish(bus, "old-in-flight", 6)  # signed with the old key, not yet read

    # Overlap: the verifier restarts trusting both keys, then the producer switches.
    overlap = Consumer(bus, sub, recorder, old_keyring.with_key(new.public_key(), UNRESTRICTED))
    rotated = Bus(bus.redis, bus.settings, new, source="test", metrics=bus.metrics)
    during = await _publish(rotated, "new-overlap", 6)
    await overlap.drain()
    assert await bus.group_lag(Stream.TELEMETRY) == {"hub": 0}

    # The old key is retired only once nothing it signed is left unconsumed.
    retired = Consumer(bus, sub, recorder, overlap.keyring.without_key(signer.key_id))
    after = await _publish(rotated, "new-only", 6)
    await retired.drain()

    assert recorder.payloads == before + in_flight + during + after
    assert bus.metrics.count("rejected") == 0
    assert bus.metrics.count("dead_lettered") == 0

    # Past the overlap the old key is really gone: what it signs now is refused.
    await bus.publish(TELEMETRY, b"late-old", stream=Stream.TELEMETRY)
    await retired.drain()
    assert bus.metrics.count("rejected", stream=Stream.TELEMETRY, reason="unknown_key") == 1
    assert recorder.payloads[-1] == b"new-only-5"
