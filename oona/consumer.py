"""The consumer side of Oona: consumer groups with at-least-once delivery, effect-once
application, bounded retries and a dead-letter stream.

One poll does, in order: retry this consumer's own failed entries whose backoff has
elapsed; claim entries a dead consumer left pending (XAUTOCLAIM) and process them;
read new entries, streams in priority order (the emergency stream is drained before
the normal one, with a starvation guard). On start the consumer first takes back its
own pending entries. An entry is acked only after its handler returned; an envelope id
is applied once per group (see oona.dedup).

Nothing a writer without a key puts on a stream escapes a poll: every bad entry is a
counted, evented, dead-lettered rejection of that entry alone. Inside a signed batch
an envelope that cannot be applied is dead-lettered alone and the rest are applied.
The poll loop stops when its task is cancelled, even when the client library swallowed
the cancellation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from leyline_pb import leyline_pb2 as pb
from oona.backoff import Backoff, backoff_s
from oona.bus import Bus
from oona.connection import cluster_client
from oona.dead_letters import DeadLetterWriter
from oona.dedup import DeliveryStatus, EnvelopeLedger, Progress, UnitState
from oona.envelope import MAX_ENVELOPES_PER_BATCH, EnvelopeRules, OpenedEntry, open_entry
from oona.errors import BusUnavailable, RejectedMessage
from oona.events import EventSink, LogEventSink
from oona.freshness import Clock
from oona.keys import Keyring, Role
from oona.lease import UnitLeases, lease_ms_for
from oona.replies import RawEntry, entries, stream_batches, text
from oona.retention import parse_id

log = logging.getLogger(__name__)
_GROUP_MISSING = object()


@dataclass(frozen=True)
class Delivery:
    """One verified envelope handed to a handler; `role` is what its signer's key is
    trusted as (a handler checks what the payload claims against it)."""

    stream: str
    entry_id: str
    envelope: pb.BusEnvelope
    delivery_count: int
    role: Role


Handler = Callable[[Delivery], Awaitable[None]]


@dataclass(frozen=True)
class Subscription:
    """A group's view of some streams, listed highest priority first."""

    group: str
    consumer: str
    streams: tuple[str, ...]
    accepted_types: frozenset[pb.MessageType.ValueType]
    max_entry_bytes: int = 1024 * 1024
    max_envelopes_per_batch: int = MAX_ENVELOPES_PER_BATCH
    max_age_ms: float = 60_000.0
    max_future_ms: float = 5_000.0


@dataclass
class _Retry:
    stream: str
    entry_id: str
    deliveries: int
    due: float


@dataclass
class _Failure:
    reason: str
    detail: str
    final: bool = False  # a rejection: dead-letter at once, never retry
    priority: int | None = None  # a verified envelope's, when it was refused
    source: str = ""


_LEASE_LOST = _Failure("lease_lost", "another consumer took the unit over")


@dataclass
class _Unrecorded:
    """Progress and duplicate acks of one read not yet recorded in the ledger."""

    stream: str
    progress: list[Progress] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    since_s: float = field(default_factory=time.monotonic)

    def age_ms(self) -> float:
        return (time.monotonic() - self.since_s) * 1000.0

    def take(self) -> tuple[list[Progress], list[str]]:
        taken = self.progress, self.duplicates
        self.progress, self.duplicates, self.since_s = [], [], time.monotonic()
        return taken


class Consumer:
    """Consumes a Subscription with `handler`; verification uses `keyring`, freshness
    `clock_ns` (the receiver's clock)."""

    def __init__(
        self,
        bus: Bus,
        subscription: Subscription,
        handler: Handler,
        keyring: Keyring,
        *,
        events: EventSink | None = None,
        clock_ns: Clock = time.time_ns,
    ) -> None:
        window_ms = subscription.max_age_ms + subscription.max_future_ms
        if bus.settings.idempotency_ttl_s * 1000.0 <= window_ms:
            raise ValueError(
                f"idempotency_ttl_s ({bus.settings.idempotency_ttl_s}) must outlast the "
                f"freshness window ({window_ms:.0f} ms), or a replay could pass both checks"
            )
        self.bus = bus
        self.events: EventSink = events or LogEventSink()
        self.sub = subscription
        self.handler = handler
        self.keyring = keyring
        self.settings = bus.settings
        self.metrics = bus.metrics
        self._clock_ns = clock_ns
        self.ledger = EnvelopeLedger(
            bus.redis, bus.settings, subscription.group, subscription.consumer
        )
        self.lease_ms = lease_ms_for(bus.settings.claim_idle_ms)
        self.dead_letters = DeadLetterWriter(bus, self.ledger, subscription, self.events)
        self.rules = {
            stream: EnvelopeRules(
                stream=stream,
                namespace=bus.settings.key_prefix,
                accepted_types=subscription.accepted_types,
                max_entry_bytes=subscription.max_entry_bytes,
                max_envelopes_per_batch=subscription.max_envelopes_per_batch,
                max_age_ms=subscription.max_age_ms,
                max_future_ms=subscription.max_future_ms,
            )
            for stream in subscription.streams
        }
        self._retries: dict[tuple[str, str], _Retry] = {}
        self._next_claim = 0.0
        self._claim_cursor: dict[str, str] = {}
        self._urgent_rounds = 0
        self._started = False
        self._failures_seen = bus.io.failures
        self.waiting_for = ""

    @property
    def redis(self) -> aioredis.Redis:
        return self.bus.redis

    # ------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Create the groups (at id 0, so earlier messages are seen) and take back this
        consumer's own pending entries, which are processed before anything new."""
        for stream in self.sub.streams:
            await self.ensure_group(stream)
        for stream in self.sub.streams:
            for entry_id, deliveries in await self._own_pending(stream):
                self._retries[(stream, entry_id)] = _Retry(stream, entry_id, deliveries, 0.0)
        self._started = True

    async def ensure_group(self, stream: str) -> None:
        async def create() -> None:
            try:
                await self.redis.xgroup_create(
                    self.bus.key(stream), self.sub.group, id="0", mkstream=True
                )
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

        await self.bus.io.run(create)

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until `stop` is set or the task is cancelled; an outage, and a server
        error reply (a stream key of the wrong type, a server out of memory...), is
        waited out with backoff, and `waiting_for` says which.

        A cancellation that races a completed read can be swallowed inside the client
        library (``asyncio.wait_for`` then returns the result instead of raising), so
        the loop also asks its task whether a cancellation is pending: a task group
        cancelling a sibling lane always stops it.
        """
        s = self.settings
        backoff = Backoff(s.reconnect_backoff_base_ms / 1000.0, s.reconnect_backoff_max_ms / 1000.0)
        task = asyncio.current_task()
        while not stop.is_set():
            if task is not None and task.cancelling():
                raise asyncio.CancelledError("cancelled while a library call swallowed it")
            try:
                if not self._started:
                    await self.start()
                await self.poll_once()
                backoff.reset()
                self.waiting_for = ""
            except (BusUnavailable, RedisError) as exc:
                unavailable = isinstance(exc, BusUnavailable)
                self.waiting_for = (
                    f"the server: {exc}" if unavailable
                    else f"a server error to clear: {type(exc).__name__}: {exc}"
                )  # fmt: skip
                if not unavailable:
                    self.metrics.inc("consumer_errors", group=self.sub.group)
                # A read cut short leaves its entries pending on this consumer: take them
                # back (and the groups, which a restarted server may lack) at once,
                # rather than after claim_idle_ms.
                self._started = False
                delay_s = backoff.next_s()
                log.warning("%s %s; retrying in %.2fs: %s", self.sub.consumer,
                            "waits for the bus" if unavailable else "got a server error",
                            delay_s, exc)  # fmt: skip
                await asyncio.sleep(delay_s)

    async def poll_once(self, *, block: bool = True) -> int:
        """One round; returns the number of entries handled (acked, dead-lettered or
        left for retry).

        After a connection failure the consumer first takes back its own pending
        entries: a read whose reply was lost with the connection left entries pending
        here that no later read returns (they would wait for claim_idle_ms otherwise).
        """
        if self.bus.io.failures != self._failures_seen:
            self._failures_seen = self.bus.io.failures
            self._started = False
        if not self._started:
            await self.start()
        handled = await self._retry_due()
        if time.monotonic() >= self._next_claim:
            handled += await self._claim_abandoned()
            self._next_claim = time.monotonic() + self.settings.claim_interval_ms / 1000.0
        handled += await self._read_new(block=block and handled == 0)
        return handled

    async def drain(self, *, max_rounds: int = 1_000) -> int:
        """Poll without blocking until a round handles nothing (tests, shutdown)."""
        total = 0
        for _ in range(max_rounds):
            handled = await self.poll_once(block=False)
            total += handled
            if handled == 0:
                break
        return total

    @property
    def retries_scheduled(self) -> int:
        return len(self._retries)

    # ----------------------------------------------------------- the sources

    async def _group_call(self, streams: Sequence[str], call: Callable[[], Awaitable[Any]]) -> Any:
        """Run a group command through the IO guard; when the stream or its group was
        deleted under the consumer, or the server restarted without them (NOGROUP),
        recreate the groups and return None.

        The groups are recreated after the guarded call returned, never inside it: a
        guarded call nested in a half-open breaker's trial waits for a slot its own
        caller holds.
        """

        async def guarded() -> Any:
            try:
                return await call()
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                return _GROUP_MISSING

        reply = await self.bus.io.run(guarded)
        if reply is not _GROUP_MISSING:
            return reply
        for stream in streams:
            self.metrics.inc("groups_recreated", stream=stream)
            await self.ensure_group(stream)
        return None

    async def _own_pending(self, stream: str) -> list[tuple[str, int]]:
        rows: Any = await self._group_call(
            (stream,),
            lambda: self.redis.xpending_range(
                self.bus.key(stream), self.sub.group, "-", "+", 10_000,
                consumername=self.sub.consumer,
            ),
        )  # fmt: skip
        return [(text(r["message_id"]), int(r["times_delivered"])) for r in rows or []]

    async def _retry_due(self) -> int:
        now = time.monotonic()
        due = [r for r in self._retries.values() if r.due <= now]
        handled = 0
        for stream in self.sub.streams:
            batch = [r for r in due if r.stream == stream]
            if not batch:
                continue
            key = self.bus.key(stream)
            ids = [r.entry_id for r in batch]

            reply = await self._group_call(
                (stream,),
                lambda key=key, ids=ids: self.redis.xclaim(  # type: ignore[misc]
                    key, self.sub.group, self.sub.consumer, 0, list[Any](ids)
                ),
            )
            claimed_entries = entries(reply)
            claimed = {entry_id for entry_id, _ in claimed_entries}
            for r in batch:
                self._retries.pop((stream, r.entry_id), None)
                if r.entry_id not in claimed:
                    self.metrics.inc("vanished", stream=stream)
            counts = {r.entry_id: r.deliveries + 1 for r in batch}
            self.metrics.inc("retried", len(claimed_entries), stream=stream)
            handled += await self._process(stream, claimed_entries, counts)
        return handled

    async def _claim_abandoned(self) -> int:
        handled = 0
        for stream in self.sub.streams:
            key = self.bus.key(stream)
            start = self._claim_cursor.get(stream, "0-0")

            reply = await self._group_call(
                (stream,),
                lambda key=key, start=start: self.redis.xautoclaim(  # type: ignore[misc]
                    key, self.sub.group, self.sub.consumer,
                    min_idle_time=self.settings.claim_idle_ms,
                    start_id=start, count=self.settings.read_batch_size,
                ),
            )  # fmt: skip
            if reply is None:
                self._claim_cursor.pop(stream, None)
                continue
            self._claim_cursor[stream] = text(reply[0])
            deleted = reply[2] if len(reply) > 2 else []
            if deleted:
                self.metrics.inc("claimed_deleted", len(deleted), stream=stream)
            claimed = entries(reply[1])
            if not claimed:
                continue
            self.metrics.inc("claimed", len(claimed), stream=stream)
            counts = await self._delivery_counts(stream, [entry_id for entry_id, _ in claimed])
            handled += await self._process(stream, claimed, counts)
        return handled

    async def _delivery_counts(self, stream: str, ids: Sequence[str]) -> dict[str, int]:
        lo = min(ids, key=parse_id)
        hi = max(ids, key=parse_id)

        rows = await self._group_call(
            (stream,),
            lambda: self.redis.xpending_range(
                self.bus.key(stream), self.sub.group, lo, hi, len(ids) * 4 + 16,
                consumername=self.sub.consumer,
            ),
        )  # fmt: skip
        return {text(r["message_id"]): int(r["times_delivered"]) for r in rows or []}

    async def _read_new(self, *, block: bool) -> int:
        """Read streams in priority order: a lower stream is read only when the higher
        ones are empty, or once every `emergency_burst_limit` busy rounds. Each read
        names one stream, except the blocking read once all are empty, which on one
        server waits on them all."""
        streams = list(self.sub.streams)
        block_ms = self.settings.read_block_ms if block else None
        if len(streams) == 1:  # no priorities to honour: one (blocking) read
            handled = 0
            for s, batch in await self._xreadgroup({streams[0]: ">"}, block_ms=block_ms):
                handled += await self._process(s, batch, {})
            return handled
        for index, stream in enumerate(streams):
            lower_remaining = index < len(streams) - 1
            found = await self._xreadgroup({stream: ">"}, block_ms=None)
            if not found:
                continue
            handled = 0
            for s, batch in found:
                handled += await self._process(s, batch, {})
            if lower_remaining:
                self._urgent_rounds += 1
                if self._urgent_rounds >= self.settings.emergency_burst_limit:
                    self._urgent_rounds = 0
                    for s2 in streams[index + 1 :]:
                        for s3, batch in await self._xreadgroup({s2: ">"}, block_ms=None):
                            handled += await self._process(s3, batch, {})
            return handled
        self._urgent_rounds = 0
        if not block:
            return 0
        if cluster_client(self.redis) is not None:
            # One read cannot span slots on a cluster: block on the highest-priority
            # stream; the others are read at the next poll (within read_block_ms).
            streams = streams[:1]
        found = await self._xreadgroup(dict.fromkeys(streams, ">"), block_ms=block_ms)
        order = {s: i for i, s in enumerate(streams)}
        handled = 0
        for s, batch in sorted(found, key=lambda e: order[e[0]]):
            handled += await self._process(s, batch, {})
        return handled

    async def _xreadgroup(
        self, streams: dict[str, str], *, block_ms: int | None
    ) -> list[tuple[str, list[RawEntry]]]:
        keys = {self.bus.key(s): pos for s, pos in streams.items()}
        by_key = {self.bus.key(s): s for s in streams}
        reply = await self._group_call(
            list(streams),
            lambda: self.redis.xreadgroup(
                self.sub.group, self.sub.consumer, keys,  # type: ignore[arg-type]
                count=self.settings.read_batch_size, block=block_ms,
            ),
        )  # fmt: skip
        return [(by_key[key], batch) for key, batch in stream_batches(reply)]

    # ------------------------------------------------------------ processing

    async def _process(self, stream: str, batch: Sequence[RawEntry], counts: dict[str, int]) -> int:
        """Verify and de-duplicate entries and hand each to the handler under this
        consumer's lease on its unit; then schedule a retry or dead-letter what failed.

        Progress is recorded, and finished entries acked, every
        `progress_flush_interval_ms` and at the end of the read, so that a consumer
        paused or killed mid-read leaves at most that much applied work unrecorded (the
        next holder applies it again). An entry whose unit another consumer took over
        is left to that consumer."""
        if not batch:
            return 0
        self.metrics.inc("delivered", len(batch), stream=stream)
        opened = await self._open_all(stream, batch, counts)
        leases = UnitLeases(self.ledger, stream, self.lease_ms, self.bus.io)
        states = await leases.take([(entry.unit_id, entry_id) for entry_id, _, entry, _ in opened])
        pending = _Unrecorded(stream)
        for (entry_id, fields, entry, deliveries), state in zip(opened, states, strict=True):
            if state.status is DeliveryStatus.REPLAY:
                replay = _Failure("replay", f"{entry.unit_id} was carried by another entry")
                await self._dead_letter(stream, entry_id, fields, replay, deliveries)
                continue
            if state.status is DeliveryStatus.APPLIED:
                self.metrics.inc("duplicates", stream=stream)
                pending.duplicates.append(entry_id)
                continue
            if state.status is DeliveryStatus.BUSY:
                self.metrics.inc("leased_elsewhere", stream=stream)
                continue
            done, failure = await self._apply(stream, entry_id, entry, deliveries, state, leases)
            leases.done(entry.unit_id)
            if failure is _LEASE_LOST:
                self._lease_lost(stream, entry_id, entry.unit_id)
                continue
            if done > state.applied or failure is None:
                pending.progress.append(Progress(entry.unit_id, done, failure is None, entry_id))
            if failure is not None and (failure.final or self._last_delivery(deliveries)):
                await self._flush(pending)  # what was applied of it, before it leaves
                await self._dead_letter(
                    stream, entry_id, fields, failure, deliveries, entry.unit_id
                )
            elif failure is not None:
                self._schedule_retry(stream, entry_id, deliveries)
            if pending.age_ms() >= self.settings.progress_flush_interval_ms:
                await self._flush(pending)
        await self._flush(pending)
        return len(batch)

    async def _flush(self, pending: _Unrecorded) -> None:
        """Record what `pending` holds in one server-side script; a unit another
        consumer took over meanwhile is theirs (`lease_lost`)."""
        progress, duplicates = pending.take()
        if not progress and not duplicates:
            return
        stream = pending.stream
        recorded = await self.bus.io.run(
            lambda: self.ledger.record_and_ack(stream, progress, duplicates)
        )
        self.metrics.inc("acked", recorded.acked, stream=stream)
        for unit, fenced in zip(progress, recorded.fenced, strict=True):
            if fenced:
                self._lease_lost(stream, unit.entry_id, unit.unit_id)

    def _lease_lost(self, stream: str, entry_id: str, unit_id: str) -> None:
        """Another consumer took the unit over (this one was paused or slow past its
        lease): it is theirs to record and ack."""
        self.metrics.inc("lease_lost", stream=stream)
        self._retries.pop((stream, entry_id), None)
        log.warning("%s lost its lease on %s (%s %s): another consumer took it over",
                    self.sub.consumer, unit_id, stream, entry_id)  # fmt: skip

    def _last_delivery(self, deliveries: int) -> bool:
        return deliveries >= self.settings.max_deliveries

    async def _open_all(
        self, stream: str, batch: Sequence[RawEntry], counts: dict[str, int]
    ) -> list[tuple[str, dict[bytes, bytes], OpenedEntry, int]]:
        """Verify each entry; dead-letter those over the delivery bound or rejected.

        `open_entry` raises only RejectedMessage; anything else from it would be a bug
        in this process, and is still refused as that entry's own rejection rather
        than taking the rest of the read down with it.
        """
        opened = []
        for entry_id, fields in batch:
            deliveries = counts.get(entry_id, 1)
            if deliveries > self.settings.max_deliveries:
                failure = _Failure("max_deliveries", "delivery bound exceeded before handling")
                await self._dead_letter(stream, entry_id, fields, failure, deliveries)
                continue
            try:
                entry = open_entry(
                    fields, self.rules[stream], self.keyring, now_ns=self._clock_ns()
                )
            except RejectedMessage as rejection:
                failure = _Failure(
                    rejection.reason, rejection.detail, final=True,
                    priority=rejection.priority, source=rejection.source,
                )  # fmt: skip
                await self._dead_letter(stream, entry_id, fields, failure, deliveries)
                continue
            except Exception as exc:
                log.exception("opening %s %s failed", stream, entry_id)
                failure = _Failure("malformed", f"{type(exc).__name__}: {exc}", final=True)
                await self._dead_letter(stream, entry_id, fields, failure, deliveries)
                continue
            opened.append((entry_id, fields, entry, deliveries))
        return opened

    async def _apply(
        self,
        stream: str,
        entry_id: str,
        entry: OpenedEntry,
        deliveries: int,
        state: UnitState,
        leases: UnitLeases,
    ) -> tuple[int, _Failure | None]:
        """Run the handler on the envelopes not yet done, each only while this consumer
        holds the unit; returns how many are done (in order: applied, or dead-lettered
        alone) and the failure that stopped it, if any (`_LEASE_LOST` when another
        consumer took the unit over).

        In a batch, an envelope the handler refuses for good (RejectedMessage), or that
        failed on the entry's last delivery, is dead-lettered alone and the envelopes
        after it are still applied. A single envelope's failure is its entry's.
        """
        done = state.applied
        now_ns = time.time_ns()
        alone = len(entry.envelopes) > 1
        for index in range(state.applied, len(entry.envelopes)):
            if not await leases.hold(entry.unit_id):
                self.metrics.inc("handled", done - state.applied, stream=stream)
                return done, _LEASE_LOST
            env = entry.envelopes[index]
            failure = await self._handle(Delivery(stream, entry_id, env, deliveries, entry.role))
            if failure is not None:
                if not (alone and (failure.final or self._last_delivery(deliveries))):
                    self.metrics.inc("handled", done - state.applied, stream=stream)
                    return done, failure
                await self.dead_letters.envelope(
                    stream, entry_id, entry.unit_id, index, env,
                    failure.reason, failure.detail, deliveries,
                )  # fmt: skip
            else:
                latency_s = max(now_ns - env.issued_at_ns, 0) / 1e9
                self.metrics.observe("delivery_latency_s", latency_s, stream=stream)
            done += 1
        self.metrics.inc("handled", done - state.applied, stream=stream)
        return done, None

    async def _handle(self, delivery: Delivery) -> _Failure | None:
        try:
            await self.handler(delivery)
        except RejectedMessage as rejection:
            return _Failure(rejection.reason, rejection.detail, final=True)
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}"
            log.warning("handler failed on %s %s: %s", delivery.stream, delivery.entry_id, detail)
            return _Failure("handler_failed", detail)
        return None

    def _schedule_retry(self, stream: str, entry_id: str, deliveries: int) -> None:
        s = self.settings
        delay_s = backoff_s(
            deliveries,
            base_s=s.retry_backoff_base_ms / 1000.0,
            max_s=s.retry_backoff_max_ms / 1000.0,
        )
        self._retries[(stream, entry_id)] = _Retry(
            stream, entry_id, deliveries, time.monotonic() + delay_s
        )

    async def _dead_letter(
        self,
        stream: str,
        entry_id: str,
        fields: dict[bytes, bytes],
        failure: _Failure,
        deliveries: int,
        unit_id: str | None = None,
    ) -> None:
        await self.dead_letters.entry(
            stream, entry_id, fields, failure.reason, failure.detail, deliveries, unit_id,
            priority=failure.priority, source=failure.source,
        )  # fmt: skip
        self._retries.pop((stream, entry_id), None)
