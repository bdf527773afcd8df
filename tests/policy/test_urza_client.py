"""CachedCatalog: answers from cache, waits only as long as it is given, never queues a
second lookup behind a slow one, serves stale entries while refreshing."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

from tamiyo_bus.urza_client import BlueprintMetadata, CachedCatalog, StaticBlueprintCatalog

ENTRY = BlueprintMetadata("bp0", tier=1, parameter_count=10, risk=0.2, quarantined=False)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Scripted:
    """Counts lookups; each waits for ``gate`` (set by default)."""

    def __init__(self, entries: Sequence[BlueprintMetadata]) -> None:
        self.inner = StaticBlueprintCatalog(entries)
        self.calls: list[tuple[str, ...]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail = False

    def lookup(self, blueprint_ids: Sequence[str]) -> Mapping[str, BlueprintMetadata]:
        self.calls.append(tuple(blueprint_ids))
        self.gate.wait()
        if self.fail:
            raise OSError("urza unavailable")
        return self.inner.lookup(blueprint_ids)


def catalog(source: Scripted, clock: Clock) -> CachedCatalog:
    return CachedCatalog(source, deadline_ms=50.0, ttl_s=10.0, max_stale_s=60.0, clock=clock)


def test_a_miss_is_fetched_once_then_served_from_cache() -> None:
    source, clock = Scripted([ENTRY]), Clock()
    cached = catalog(source, clock)
    first = cached.resolve(["bp0", "unknown"], wait_s=5.0)
    assert not first.timed_out
    assert first.metadata == {"bp0": ENTRY}  # "unknown" is known to be unknown
    second = cached.resolve(["bp0", "unknown"], wait_s=5.0)
    assert second.metadata == {"bp0": ENTRY}
    assert source.calls == [("bp0", "unknown")]


def test_a_slow_lookup_is_abandoned_and_not_queued_behind() -> None:
    source, clock = Scripted([ENTRY]), Clock()
    source.gate.clear()
    cached = catalog(source, clock)
    result = cached.resolve(["bp0"], wait_s=0.001)
    assert result.timed_out and result.missing == ("bp0",)
    again = cached.resolve(["bp1"], wait_s=0.001)  # a different id, while bp0 is in flight
    assert again.timed_out
    assert source.calls == [("bp0",)]  # no second lookup started
    source.gate.set()
    assert cached.prefetch(["bp0"], timeout_s=5.0)  # the late answer filled the cache


def test_stale_entries_are_served_while_refreshed_and_expire() -> None:
    source, clock = Scripted([ENTRY]), Clock()
    cached = catalog(source, clock)
    assert cached.prefetch(["bp0"], timeout_s=5.0)
    clock.now = 15.0  # past the TTL: stale
    source.gate.clear()
    stale = cached.resolve(["bp0"], wait_s=0.0)
    assert stale.metadata == {"bp0": ENTRY} and not stale.timed_out
    clock.now = 100.0  # past TTL + max staleness: missing
    expired = cached.resolve(["bp0"], wait_s=0.0)
    assert expired.timed_out
    source.gate.set()


def test_a_failing_lookup_is_counted_and_leaves_ids_missing() -> None:
    source, clock = Scripted([ENTRY]), Clock()
    source.fail = True
    cached = catalog(source, clock)
    result = cached.resolve(["bp0"], wait_s=5.0)
    assert result.timed_out
    assert cached.stats.failures == 1
