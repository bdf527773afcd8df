"""The consumer side of Oona: consumer groups with at-least-once delivery, effect-once
application, bounded retries and a dead-letter stream.

One poll does, in order: retry this consumer's own failed entries whose backoff has
elapsed; claim entries a dead consumer left pending (XAUTOCLAIM) and process them;
read new entries, streams in priority order (the emergency stream is drained before
the normal one, with a starvation guard). On start the consumer first takes back its
own pending entries. An entry is acked only after its handler returned; an envelope id
is applied once per group (see oona.dedup).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from leyline_pb import leyline_pb2 as pb
from oona.backoff import Backoff, backoff_s
from oona.bus import Bus
from oona.dedup import DeliveryStatus, EnvelopeLedger, Progress, UnitState
from oona.envelope import EnvelopeRules, OpenedEntry, open_entry
from oona.errors import BusUnavailable, RejectedMessage
from oona.events import MESSAGE_REJECTED, EventSink, LogEventSink, make_event
from oona.keys import Keyring
from oona.replies import RawEntry, entries, stream_batches, text
from oona.retention import parse_id

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivery:
    """One verified envelope handed to a handler."""

    stream: str
    entry_id: str
    envelope: pb.BusEnvelope
    delivery_count: int


Handler = Callable[[Delivery], Awaitable[None]]


@dataclass(frozen=True)
class Subscription:
    """A group's view of some streams, listed highest priority first."""

    group: str
    consumer: str
    streams: tuple[str, ...]
    accepted_types: frozenset[pb.MessageType.ValueType]
    max_entry_bytes: int = 8 * 1024 * 1024
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


class Consumer:
    """Consumes a Subscription with `handler`; verification uses `keyring`."""

    def __init__(
        self,
        bus: Bus,
        subscription: Subscription,
        handler: Handler,
        keyring: Keyring,
        *,
        events: EventSink | None = None,
    ) -> None:
        self.bus = bus
        self.events: EventSink = events or LogEventSink()
        self.sub = subscription
        self.handler = handler
        self.keyring = keyring
        self.settings = bus.settings
        self.metrics = bus.metrics
        self.ledger = EnvelopeLedger(bus.redis, bus.settings, subscription.group)
        self.rules = {
            stream: EnvelopeRules(
                stream=stream,
                accepted_types=subscription.accepted_types,
                max_entry_bytes=subscription.max_entry_bytes,
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
        """Poll until `stop` is set; an outage is waited out with backoff."""
        s = self.settings
        backoff = Backoff(s.reconnect_backoff_base_ms / 1000.0, s.reconnect_backoff_max_ms / 1000.0)
        while not stop.is_set():
            try:
                if not self._started:
                    await self.start()
                await self.poll_once()
                backoff.reset()
            except BusUnavailable as exc:
                delay_s = backoff.next_s()
                log.warning("bus unavailable, retrying in %.2fs: %s", delay_s, exc)
                await asyncio.sleep(delay_s)

    async def poll_once(self, *, block: bool = True) -> int:
        """One round; returns the number of entries handled (acked, dead-lettered or
        left for retry)."""
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

    async def _own_pending(self, stream: str) -> list[tuple[str, int]]:
        async def read() -> list[tuple[str, int]]:
            try:
                rows: Any = await self.redis.xpending_range(
                    self.bus.key(stream), self.sub.group, "-", "+", 10_000,
                    consumername=self.sub.consumer,
                )  # fmt: skip
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    return []
                raise
            return [(text(r["message_id"]), int(r["times_delivered"])) for r in rows]

        return await self.bus.io.run(read)

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

            async def claim(key: str = key, ids: Sequence[str] = ids) -> list[RawEntry]:
                reply: Any = await self.redis.xclaim(
                    key, self.sub.group, self.sub.consumer, 0, list[Any](ids)
                )
                return entries(reply)

            claimed_entries = await self.bus.io.run(claim)
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

            async def autoclaim(key: str = key, start: str = start) -> Any:
                return await self.redis.xautoclaim(
                    key, self.sub.group, self.sub.consumer,
                    min_idle_time=self.settings.claim_idle_ms,
                    start_id=start, count=self.settings.read_batch_size,
                )  # fmt: skip

            reply = await self.bus.io.run(autoclaim)
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

        async def read() -> Any:
            return await self.redis.xpending_range(
                self.bus.key(stream), self.sub.group, lo, hi, len(ids) * 4 + 16,
                consumername=self.sub.consumer,
            )  # fmt: skip

        rows = await self.bus.io.run(read)
        return {text(r["message_id"]): int(r["times_delivered"]) for r in rows}

    async def _read_new(self, *, block: bool) -> int:
        """Read streams in priority order: a lower stream is read only when the higher
        ones are empty, or once every `emergency_burst_limit` busy rounds."""
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

        async def read() -> list[tuple[str, list[RawEntry]]]:
            try:
                reply: Any = await self.redis.xreadgroup(
                    self.sub.group, self.sub.consumer, keys,  # type: ignore[arg-type]
                    count=self.settings.read_batch_size, block=block_ms,
                )  # fmt: skip
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self.metrics.inc("groups_recreated")
                for stream in streams:
                    await self.ensure_group(stream)
                return []
            return [(by_key[key], batch) for key, batch in stream_batches(reply)]

        return await self.bus.io.run(read)

    # ------------------------------------------------------------ processing

    async def _process(self, stream: str, batch: Sequence[RawEntry], counts: dict[str, int]) -> int:
        """Verify, de-duplicate and hand entries to the handler; then ack, schedule a
        retry, or dead-letter each one."""
        if not batch:
            return 0
        now_ms = int(time.time() * 1000)
        self.metrics.inc("delivered", len(batch), stream=stream)
        opened = await self._open_all(stream, batch, counts)
        states = await self.bus.io.run(
            lambda: self.ledger.check(
                [(entry.unit_id, entry_id) for entry_id, _, entry, _ in opened], now_ms=now_ms
            )
        )
        progress: list[Progress] = []
        to_ack: list[str] = []
        for (entry_id, fields, entry, deliveries), state in zip(opened, states, strict=True):
            if state.status is DeliveryStatus.REPLAY:
                replay = _Failure("replay", f"{entry.unit_id} was carried by another entry")
                self._reject(stream, entry_id, replay)
                await self._dead_letter(stream, entry_id, fields, replay, deliveries)
                continue
            if state.status is DeliveryStatus.APPLIED:
                self.metrics.inc("duplicates", stream=stream)
                to_ack.append(entry_id)
                continue
            applied, failure = await self._apply(stream, entry_id, entry, deliveries, state)
            complete = failure is None
            if applied > state.applied or complete:
                progress.append(Progress(entry.unit_id, applied, complete))
            if complete:
                to_ack.append(entry_id)
            elif failure is not None and failure.final:
                self._reject(stream, entry_id, failure)
                await self._dead_letter(
                    stream, entry_id, fields, failure, deliveries, entry.unit_id
                )
            elif deliveries >= self.settings.max_deliveries:
                assert failure is not None
                await self._dead_letter(
                    stream, entry_id, fields, failure, deliveries, entry.unit_id
                )
            else:
                self._schedule_retry(stream, entry_id, deliveries)
        await self.bus.io.run(
            lambda: self.ledger.record_and_ack(self.bus.key(stream), progress, to_ack)
        )
        self.metrics.inc("acked", len(to_ack), stream=stream)
        return len(batch)

    async def _open_all(
        self, stream: str, batch: Sequence[RawEntry], counts: dict[str, int]
    ) -> list[tuple[str, dict[bytes, bytes], OpenedEntry, int]]:
        """Verify each entry; dead-letter those over the delivery bound or rejected."""
        opened = []
        for entry_id, fields in batch:
            deliveries = counts.get(entry_id, 1)
            if deliveries > self.settings.max_deliveries:
                failure = _Failure("max_deliveries", "delivery bound exceeded before handling")
                await self._dead_letter(stream, entry_id, fields, failure, deliveries)
                continue
            try:
                entry = open_entry(fields, self.rules[stream], parse_id(entry_id)[0], self.keyring)
            except RejectedMessage as rejection:
                failure = _Failure(rejection.reason, rejection.detail, final=True)
                self._reject(stream, entry_id, failure)
                await self._dead_letter(stream, entry_id, fields, failure, deliveries)
                continue
            opened.append((entry_id, fields, entry, deliveries))
        return opened

    async def _apply(
        self, stream: str, entry_id: str, entry: OpenedEntry, deliveries: int, state: UnitState
    ) -> tuple[int, _Failure | None]:
        """Run the handler on the envelopes not yet applied; returns how many are applied
        in total and the failure that stopped it, if any."""
        applied = state.applied
        now_ns = time.time_ns()
        for env in entry.envelopes[state.applied :]:
            try:
                await self.handler(Delivery(stream, entry_id, env, deliveries))
            except RejectedMessage as rejection:
                self.metrics.inc("handled", applied - state.applied, stream=stream)
                return applied, _Failure(rejection.reason, rejection.detail, final=True)
            except Exception as exc:
                detail = f"{type(exc).__name__}: {exc}"
                log.warning("handler failed on %s %s: %s", stream, entry_id, detail)
                self.metrics.inc("handled", applied - state.applied, stream=stream)
                return applied, _Failure("handler_failed", detail)
            applied += 1
            latency_s = max(now_ns - env.issued_at_ns, 0) / 1e9
            self.metrics.observe("delivery_latency_s", latency_s, stream=stream)
        self.metrics.inc("handled", applied - state.applied, stream=stream)
        return applied, None

    def _reject(self, stream: str, entry_id: str, failure: _Failure) -> None:
        """Count a rejection and emit it as an event (the entry is then dead-lettered)."""
        self.metrics.inc("rejected", stream=stream, reason=failure.reason)
        self.events.emit(
            make_event(
                MESSAGE_REJECTED, pb.MESSAGE_PRIORITY_HIGH, stream=stream, group=self.sub.group,
                entry_id=entry_id, reason=failure.reason, detail=failure.detail[:500],
            )
        )  # fmt: skip

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
        """Move an entry to its dead-letter stream with provenance and ack it, in one
        transaction, so it is neither lost nor left pending."""
        now_ms = int(time.time() * 1000)
        first_ms = await self.bus.io.run(lambda: self.ledger.first_delivery_ms(unit_id))
        record: dict[str | bytes, str | bytes | int] = {
            "source_stream": stream,
            "entry_id": entry_id,
            "group": self.sub.group,
            "consumer": self.sub.consumer,
            "reason": failure.reason,
            "detail": failure.detail[:2000],
            "attempts": deliveries,
            "published_ms": parse_id(entry_id)[0],
            "first_delivery_ms": first_ms or now_ms,
            "last_delivery_ms": now_ms,
            "dead_lettered_ms": now_ms,
        }
        for name, value in fields.items():
            record[b"orig_" + name] = value

        async def move() -> None:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xadd(self.bus.dead_letter_key(stream), record)  # type: ignore[arg-type]
                pipe.xack(self.bus.key(stream), self.sub.group, entry_id)
                await pipe.execute()

        await self.bus.io.run(move)
        self._retries.pop((stream, entry_id), None)
        self.metrics.inc("dead_lettered", stream=stream, reason=failure.reason)
