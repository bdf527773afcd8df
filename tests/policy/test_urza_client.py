"""CachedCatalog: answers from cache, waits only as long as it is given, lets no more
than one lookup wait behind a slow one, serves stale entries while refreshing."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping, Sequence

from tamiyo_bus.urza_client import (
    BlueprintMetadata,
    CachedCatalog,
    CatalogResolution,
)
from tests.states import StaticBlueprintCatalog

ENTRY = BlueprintMetadata("bp0", tier=1, parameter_count=10, risk=0.2, quarantined=False)
ENTRY_1 = dataclasses.replace(ENTRY, blueprint_id="bp1")
ENTRY_2 = dataclasses.replace(ENTRY, blueprint_id="bp2")


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
    cached = CachedCatalog(source, deadline_ms=50.0, ttl_s=10.0, max_stale_s=60.0, clock=clock)
    cached.start()
    return cached


def test_a_miss_is_fetched_once_then_served_from_cache() -> None:
    source, clock = Scripted([ENTRY]), Clock()
    cached = catalog(source, clock)
    first = cached.resolve(["bp0", "unknown"], wait_s=5.0)
    assert not first.timed_out
    assert first.metadata == {"bp0": ENTRY}  # "unknown" is known to be unknown
    second = cached.resolve(["bp0", "unknown"], wait_s=5.0)
    assert second.metadata == {"bp0": ENTRY}
    assert source.calls == [("bp0", "unknown")]


def test_a_slow_lookup_is_abandoned_and_one_next_lookup_waits_behind_it() -> None:
    source, clock = Scripted([ENTRY, ENTRY_1, ENTRY_2]), Clock()
    source.gate.clear()
    cached = catalog(source, clock)
    result = cached.resolve(["bp0"], wait_s=0.001)
    assert result.timed_out and result.missing == ("bp0",)
    # Other ids while bp0 is in flight: they join one next lookup, started later.
    assert cached.resolve(["bp0", "bp1"], wait_s=0.001).missing == ("bp0", "bp1")
    assert cached.resolve(["bp2", "bp1"], wait_s=0.001).timed_out
    assert source.calls == [("bp0",)]  # nothing else started while bp0 is in flight
    source.gate.set()
    assert cached.prefetch(["bp0", "bp1", "bp2"], timeout_s=5.0)
    assert source.calls == [("bp0",), ("bp1", "bp2")]


def test_a_step_waits_for_ids_the_lookup_in_flight_does_not_cover() -> None:
    """Its ids are fetched right after the lookup in flight, within its wait: it is not
    answered "missing" only because another step's lookup was in flight."""
    source, clock = Scripted([ENTRY, ENTRY_1]), Clock()
    source.gate.clear()
    cached = catalog(source, clock)
    assert cached.resolve(["bp0"], wait_s=0.0).timed_out  # bp0 is now in flight
    results: list[CatalogResolution] = []
    waiter = threading.Thread(target=lambda: results.append(cached.resolve(["bp1"], 5.0)))
    waiter.start()
    source.gate.set()
    waiter.join(10.0)
    assert results and not results[0].timed_out
    assert results[0].metadata == {"bp1": ENTRY_1}


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
