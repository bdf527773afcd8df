"""Attack class 4 of issue 17, freshness: judged by the envelope's signed issue time
against the receiver's clock, never by the stream entry id (which whoever writes to
the server may choose), and an envelope verifies only in the deployment (key prefix)
it was signed for."""

from __future__ import annotations

import time
import uuid

from leyline_pb import leyline_pb2 as pb
from oona.bus import Bus
from oona.connection import open_redis
from oona.consumer import Consumer
from oona.envelope import SINGLE_FIELD, make_envelope, seal
from oona.keys import Keyring, Signer
from oona.settings import OonaSettings
from oona.streams import Stream
from tamiyo_bus.security.policy_update import PolicyUpdateListener, PolicyUpdateTransaction
from tests.bus.helpers import Recorder, subscription

from .helpers import ARCHITECTURE, REGISTRY, dead_letters, make_holder, small_policy

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


def _old_update_entry(bus: Bus, signer: Signer, issued_ms: int) -> bytes:
    """A signed PolicyUpdate envelope as it was published two hours ago (what the
    dead-letter stream or a capture of the stream keeps)."""
    from tamiyo_bus.security.policy_update import build_policy_update

    update = build_policy_update(
        small_policy(1).state_dict(), policy_id="policy-a", version=2,
        architecture_id=ARCHITECTURE, registry_digest=REGISTRY, signer=signer,
        clock_ns=lambda: issued_ms * 1_000_000,
    )  # fmt: skip
    envelope = make_envelope(
        stream=Stream.POLICY, message_type=pb.MESSAGE_TYPE_POLICY_UPDATE,
        payload=update.SerializeToString(), source="simic",
        issued_at_ns=issued_ms * 1_000_000,
    )  # fmt: skip
    return seal(envelope, signer, namespace=bus.settings.key_prefix)


async def test_an_old_update_re_added_under_a_chosen_entry_id_is_stale(
    bus: Bus, signer: Signer, keyring: Keyring
) -> None:
    """The replayer picks an entry id next to the update's own issue time, so the entry
    looked as old as the update: fresh by the entry id, two hours old by its signature."""
    issued_ms = int(time.time() * 1000) - 2 * HOUR_MS
    raw = _old_update_entry(bus, signer, issued_ms)
    await bus.redis.xadd(bus.key(Stream.POLICY), {SINGLE_FIELD: raw}, id=f"{issued_ms + 1}-0")
    holder = make_holder(version=1)
    listener = PolicyUpdateListener(bus, PolicyUpdateTransaction(holder, keyring), keyring)

    await listener.consumer.drain()

    assert holder.current().version == 1
    assert bus.metrics.count("rejected", stream=Stream.POLICY, reason="stale") == 1


async def test_a_planted_future_entry_id_does_not_make_genuine_traffic_stale(
    bus: Bus, keyring: Keyring
) -> None:
    """XADD assigns ids after the highest one in the stream, so one entry planted a day
    ahead pushes every genuine entry after it a day ahead too."""
    ahead_ms = int(time.time() * 1000) + DAY_MS
    await bus.redis.xadd(bus.key(Stream.NORMAL), {b"junk": b""}, id=f"{ahead_ms}-0")
    await bus.publish(pb.MESSAGE_TYPE_TELEMETRY, b"genuine", stream=Stream.NORMAL)
    recorder = Recorder()
    consumer = Consumer(bus, subscription(Stream.NORMAL), recorder, keyring)

    await consumer.drain()

    assert recorder.payloads == [b"genuine"]
    [planted] = await dead_letters(bus, Stream.NORMAL)
    assert planted[b"reason"] == b"malformed"


async def test_an_envelope_copied_into_another_deployment_does_not_verify_there(
    bus: Bus, settings: OonaSettings, signer: Signer, keyring: Keyring
) -> None:
    other = settings.with_overrides(key_prefix=f"other-{uuid.uuid4().hex[:8]}")
    neighbour = Bus(open_redis(other.redis_url, other), other, signer, source="test")
    await bus.publish(pb.MESSAGE_TYPE_TELEMETRY, b"for this deployment", stream=Stream.NORMAL)
    [(_, fields)] = await bus.redis.xrange(bus.key(Stream.NORMAL))
    await neighbour.redis.xadd(neighbour.key(Stream.NORMAL), fields)
    recorder = Recorder()
    consumer = Consumer(neighbour, subscription(Stream.NORMAL), recorder, keyring)

    await consumer.drain()

    assert recorder.payloads == []
    assert (
        neighbour.metrics.count("rejected", stream=Stream.NORMAL, reason="invalid_signature") == 1
    )
    await neighbour.close()
