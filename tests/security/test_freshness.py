"""Freshness and replay: the bounded in-memory cache of the step path, and the bus,
where a replay inside the window is caught by the Redis ledger and one outside it is
stale by its signed issue time."""

from __future__ import annotations

import time

import pytest

from leyline_pb import leyline_pb2 as pb
from oona.bus import Bus
from oona.consumer import Consumer
from oona.envelope import SINGLE_FIELD, make_envelope, seal
from oona.errors import RejectedMessage
from oona.freshness import FreshnessWindow, ReplayCache
from oona.keys import Keyring
from oona.streams import Stream
from tests.bus.helpers import Recorder, subscription

from .helpers import dead_letters

SECOND_NS = 1_000_000_000
T0_NS = 1_800_000_000 * SECOND_NS


class Clock:
    def __init__(self, now_ns: int = T0_NS) -> None:
        self.now_ns = now_ns

    def __call__(self) -> int:
        return self.now_ns


def test_window_bounds_are_inclusive_and_named() -> None:
    window = FreshnessWindow(max_age_ms=60_000.0, max_future_ms=5_000.0)
    window.check(T0_NS - 60 * SECOND_NS, T0_NS)
    window.check(T0_NS + 5 * SECOND_NS, T0_NS)
    with pytest.raises(RejectedMessage, match="stale"):
        window.check(T0_NS - 60 * SECOND_NS - 1_000_000, T0_NS)
    with pytest.raises(RejectedMessage, match="future"):
        window.check(T0_NS + 5 * SECOND_NS + 1_000_000, T0_NS)


def test_cache_keeps_an_id_for_the_whole_window_then_forgets_it() -> None:
    clock = Clock()
    cache = ReplayCache(FreshnessWindow(max_age_ms=60_000.0), clock_ns=clock)
    cache.check_and_add("a", T0_NS)

    clock.now_ns += 60 * SECOND_NS
    with pytest.raises(RejectedMessage, match="replay"):
        cache.check_and_add("a", T0_NS)
    assert len(cache) == 1
    clock.now_ns += 1
    assert len(cache) == 0


def test_an_id_from_the_future_is_kept_until_it_is_stale_by_its_own_time() -> None:
    clock = Clock()
    cache = ReplayCache(FreshnessWindow(max_age_ms=60_000.0), clock_ns=clock)
    cache.check_and_add("ahead", T0_NS + 5 * SECOND_NS)
    clock.now_ns += 64 * SECOND_NS  # 59 s after its issue time: still fresh
    with pytest.raises(RejectedMessage, match="replay"):
        cache.check_and_add("ahead", T0_NS + 5 * SECOND_NS)


def test_full_cache_fails_closed_for_messages_it_can_no_longer_vouch_for() -> None:
    clock = Clock()
    cache = ReplayCache(FreshnessWindow(max_age_ms=60_000.0), max_entries=3, clock_ns=clock)
    for i in range(3):
        cache.check_and_add(f"m{i}", T0_NS + i)
    cache.check_and_add("m3", T0_NS + 3)  # forgets m0, the earliest

    assert len(cache) == 3
    assert cache.forced_evictions == 1
    with pytest.raises(RejectedMessage) as rejected:
        cache.check_and_add("m0", T0_NS)  # would otherwise be a replay that slips through
    assert rejected.value.reason == "replay_horizon"
    cache.check_and_add("m4", T0_NS + 4)  # newer messages are still accepted
    clock.now_ns += 30 * SECOND_NS  # the forgotten id replayed later, still fresh
    with pytest.raises(RejectedMessage, match="replay_horizon"):
        cache.check_and_add("m0", T0_NS)


async def test_bus_replay_inside_the_window_is_replay_and_outside_it_is_stale(
    bus: Bus, keyring: Keyring
) -> None:
    """The consumer's clock places the original, a replay 30 s later and a replay 70 s
    later without waiting; the entry ids play no part."""
    clock = Clock(time.time_ns())
    key = bus.key(Stream.NORMAL)
    env = make_envelope(
        stream=Stream.NORMAL, message_type=pb.MESSAGE_TYPE_TELEMETRY, payload=b"once",
        source="tolaria", issued_at_ns=clock.now_ns,
    )  # fmt: skip
    raw = seal(env, bus.signer, namespace=bus.settings.key_prefix)
    recorder = Recorder()
    consumer = Consumer(bus, subscription(Stream.NORMAL), recorder, keyring, clock_ns=clock)
    await bus.redis.xadd(key, {SINGLE_FIELD: raw})
    await consumer.drain()
    clock.now_ns += 30 * SECOND_NS
    inside = await bus.redis.xadd(key, {SINGLE_FIELD: raw})
    await consumer.drain()
    clock.now_ns += 40 * SECOND_NS
    outside = await bus.redis.xadd(key, {SINGLE_FIELD: raw})
    await consumer.drain()

    assert recorder.payloads == [b"once"]
    dead = await dead_letters(bus, Stream.NORMAL)
    reasons = {record[b"entry_id"]: record[b"reason"] for record in dead}
    assert reasons == {inside: b"replay", outside: b"stale"}
    assert bus.metrics.count("rejected", stream=Stream.NORMAL, reason="replay") == 1
    assert bus.metrics.count("rejected", stream=Stream.NORMAL, reason="stale") == 1
