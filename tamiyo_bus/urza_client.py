"""Blueprint metadata from Urza, under a deadline and behind a cache.

The step path must never wait on the blueprint library for long: ``CachedCatalog``
answers from its cache at once, runs misses (and refreshes of stale entries) on its
own background worker (``start`` it), and waits for a miss at most the time it is
given. A lookup that outlives the wait is not cancelled (a library call cannot be), and
lookups do not pile up behind it: while one is in flight, ids it does not cover join the
one next lookup, which starts when it ends. A step that asks for such ids waits (as
long as it is given) on that next lookup, so it is not answered "missing" merely
because another step's lookup happened to be in flight.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from tamiyo_bus.worker import Worker


@dataclass(frozen=True, slots=True)
class BlueprintMetadata:
    """What Tamiyo needs to know about a blueprint to choose and gate it."""

    blueprint_id: str
    tier: int
    parameter_count: int
    risk: float  # 0 (safe) .. 1 (risky)
    quarantined: bool
    compatible_layer_kinds: tuple[str, ...] = ()  # empty: fits every layer kind

    def fits(self, layer_kind: str) -> bool:
        return not self.compatible_layer_kinds or layer_kind in self.compatible_layer_kinds


class BlueprintCatalog(Protocol):
    """The blueprint library: metadata of the requested ids that it knows."""

    def lookup(self, blueprint_ids: Sequence[str]) -> Mapping[str, BlueprintMetadata]: ...


@dataclass(frozen=True, slots=True)
class CatalogSettings:
    """How long blueprint metadata is trusted once fetched."""

    ttl_s: float = 30.0  # fresh this long
    max_stale_s: float = 300.0  # past its TTL, served (while refreshed) this long more


@dataclass(frozen=True, slots=True)
class CatalogResolution:
    """Metadata for a step: what was known in time, and whether anything was missing."""

    metadata: Mapping[str, BlueprintMetadata]
    timed_out: bool  # some id was neither cached nor fetched within the wait
    missing: tuple[str, ...] = ()


@dataclass(slots=True)
class CatalogStats:
    lookups: int = 0
    timeouts: int = 0  # lookups that outlived the Urza deadline
    failures: int = 0
    skipped_waits: int = 0  # resolutions that returned without some id


@dataclass(slots=True)
class _Entry:
    metadata: BlueprintMetadata | None  # None: Urza does not know this id
    fetched_at: float


@dataclass(slots=True)
class _Lookup:
    ids: tuple[str, ...]
    done: threading.Event = field(default_factory=threading.Event)


class CachedCatalog:
    """Deadline-bounded, cached access to a :class:`BlueprintCatalog`."""

    def __init__(
        self,
        catalog: BlueprintCatalog,
        *,
        deadline_ms: float,
        ttl_s: float,
        max_stale_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._catalog = catalog
        self._deadline_s = deadline_ms / 1000.0
        self._ttl_s = ttl_s
        self._max_stale_s = max_stale_s
        self._clock = clock
        self._cache: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._pending: _Lookup | None = None  # in flight
        self._next: _Lookup | None = None  # starts when the one in flight ends
        self._worker = Worker("tamiyo-urza", self._serve)
        self.stats = CatalogStats()

    def start(self) -> None:
        self._worker.start()

    def close(self) -> bool:
        return self._worker.close()

    def prefetch(self, blueprint_ids: Sequence[str], timeout_s: float) -> bool:
        """Warm the cache at start-up (off the step path, so not bound by the Urza
        deadline); True when every id resolved."""
        return not self._resolve(blueprint_ids, timeout_s).timed_out

    def resolve(self, blueprint_ids: Sequence[str], wait_s: float) -> CatalogResolution:
        """Cached metadata at once; wait at most ``wait_s`` (and the deadline) for misses.

        Stale entries are served while a refresh runs; entries older than
        ``max_stale_s`` count as missing.
        """
        return self._resolve(blueprint_ids, min(wait_s, self._deadline_s))

    def _resolve(self, blueprint_ids: Sequence[str], wait_s: float) -> CatalogResolution:
        now = self._clock()
        known, missing, stale = self._partition(blueprint_ids, now)
        if missing or stale:
            lookup = self._start((*missing, *stale))
            if missing:
                lookup.done.wait(max(wait_s, 0.0))
                known, missing, _ = self._partition(blueprint_ids, self._clock())
        if missing:
            self.stats.skipped_waits += 1
        return CatalogResolution(known, timed_out=bool(missing), missing=tuple(missing))

    def _partition(
        self, blueprint_ids: Sequence[str], now: float
    ) -> tuple[dict[str, BlueprintMetadata], list[str], list[str]]:
        known: dict[str, BlueprintMetadata] = {}
        missing: list[str] = []
        stale: list[str] = []
        with self._lock:
            for blueprint_id in blueprint_ids:
                entry = self._cache.get(blueprint_id)
                if entry is None or now - entry.fetched_at > self._ttl_s + self._max_stale_s:
                    missing.append(blueprint_id)
                    continue
                if now - entry.fetched_at > self._ttl_s:
                    stale.append(blueprint_id)
                if entry.metadata is not None:
                    known[blueprint_id] = entry.metadata
        return known, missing, stale

    def _start(self, blueprint_ids: tuple[str, ...]) -> _Lookup:
        """The lookup that will fetch ``blueprint_ids``: the one in flight if it covers
        them, else a new one (started now if none is in flight, else the next one, with
        these ids added)."""
        with self._lock:
            if self._pending is None:
                self._pending = _Lookup(blueprint_ids)
                self._worker.wake()
                return self._pending
            uncovered = [i for i in blueprint_ids if i not in self._pending.ids]
            if not uncovered:
                return self._pending
            if self._next is None:
                self._next = _Lookup(tuple(uncovered))
            else:
                self._next.ids = tuple(dict.fromkeys((*self._next.ids, *uncovered)))
            return self._next

    def _serve(self) -> None:
        """Run the lookup in flight, then each next one, until none is left."""
        while True:
            with self._lock:
                lookup = self._pending
            if lookup is None:
                return
            started = self._clock()
            try:
                found = self._catalog.lookup(lookup.ids)
            except Exception:
                found = None
                self.stats.failures += 1
            finished = self._clock()
            self.stats.lookups += 1
            if finished - started > self._deadline_s:
                self.stats.timeouts += 1
            with self._lock:
                if found is not None:
                    for blueprint_id in lookup.ids:
                        self._cache[blueprint_id] = _Entry(found.get(blueprint_id), finished)
                self._pending, self._next = self._next, None
            lookup.done.set()
