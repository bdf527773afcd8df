"""Dead letters: what a record holds (where the entry came from, why it was refused,
and a bounded copy of what it carried), and the writer that moves refused entries and
envelopes there, each counted and emitted as a rejection.

A record must not carry whatever size a hostile writer chose: a value longer than
`copy_max_bytes` is kept as its first bytes with its length and SHA-256, and at most
`MAX_COPIED_FIELDS` of the entry's fields are copied. Nor may the stream grow without
end (one producer with a skewed clock at 2,000 messages/s would add gigabytes an
hour): each write trims the dead-letter stream to `dead_letter_max_entries` records
and drops those older than `dead_letter_max_age_ms`, and every record trimmed is
counted (``dead_letters_trimmed{stream,bound}``).

A rejection is an event at HIGH priority; a refused envelope whose signature verified
and which claimed CRITICAL priority (a producer whose clock drifted, say) is a CRITICAL
event, which Nissa turns into an alert at once. So that a flood cannot flood the
emergency lane in turn, at most one such event per stream, reason and source goes out
every `URGENT_EVENT_INTERVAL_S`; the others stay HIGH.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from redis.asyncio.client import Pipeline

from leyline_pb import leyline_pb2 as pb
from oona.bus import Bus
from oona.dedup import EnvelopeLedger
from oona.events import MESSAGE_REJECTED, EventSink, make_event
from oona.retention import parse_id

if TYPE_CHECKING:
    from oona.consumer import Subscription

MAX_COPIED_FIELDS = 8
URGENT_EVENT_INTERVAL_S = 1.0

Record = dict[str | bytes, str | bytes | int]


def bounded_copy(name: bytes, value: bytes, copy_max_bytes: int) -> Record:
    """``orig_<name>``: the value, or its prefix with ``_bytes`` and ``_sha256`` beside it."""
    key = b"orig_" + name
    if len(value) <= copy_max_bytes:
        return {key: value}
    return {
        key: value[:copy_max_bytes],
        key + b"_bytes": len(value),
        key + b"_sha256": hashlib.sha256(value).hexdigest(),
    }


def copied_fields(fields: Mapping[bytes, bytes], copy_max_bytes: int) -> Record:
    """Bounded copies of an entry's fields; how many were left out, when any."""
    record: Record = {}
    names = sorted(fields)
    for name in names[:MAX_COPIED_FIELDS]:
        record.update(bounded_copy(name[:64], fields[name], copy_max_bytes))
    if len(names) > MAX_COPIED_FIELDS:
        record["orig_fields_dropped"] = len(names) - MAX_COPIED_FIELDS
    return record


class DeadLetterWriter:
    """Writes one consumer group's dead letters; every record is counted as
    ``rejected{stream,reason}`` and ``dead_lettered{stream,reason}`` and emitted as a
    ``message_rejected`` event, whatever the reason (a signature, a handler's refusal,
    a handler that kept failing, the delivery bound)."""

    def __init__(
        self, bus: Bus, ledger: EnvelopeLedger, subscription: Subscription, events: EventSink
    ) -> None:
        self.bus = bus
        self.ledger = ledger
        self.group = subscription.group
        self.consumer = subscription.consumer
        self.events = events
        self.copy_max_bytes = bus.settings.dead_letter_copy_max_bytes
        self._urgent_sent: dict[tuple[str, str, str], float] = {}

    async def _provenance(
        self,
        stream: str,
        entry_id: str,
        reason: str,
        detail: str,
        deliveries: int,
        unit_id: str | None,
    ) -> Record:
        now_ms = int(time.time() * 1000)
        first_ms = await self.bus.io.run(lambda: self.ledger.first_delivery_ms(stream, unit_id))
        return {
            "source_stream": stream,
            "entry_id": entry_id,
            "group": self.group,
            "consumer": self.consumer,
            "reason": reason,
            "detail": detail[:2000],
            "attempts": deliveries,
            "published_ms": parse_id(entry_id)[0],
            "first_delivery_ms": first_ms or now_ms,
            "last_delivery_ms": now_ms,
            "dead_lettered_ms": now_ms,
        }

    def _rejected(
        self,
        stream: str,
        entry_id: str,
        reason: str,
        detail: str,
        priority: int | None = None,
        source: str = "",
        **where: str | int,
    ) -> None:
        metrics = self.bus.metrics
        metrics.inc("rejected", stream=stream, reason=reason)
        metrics.inc("dead_lettered", stream=stream, reason=reason)
        if source:
            where["source"] = source
        if priority is not None:
            where["priority"] = pb.MessagePriority.Name(priority)  # type: ignore[arg-type]
        urgent = self._escalate(stream, reason, priority, source)
        level = pb.MESSAGE_PRIORITY_CRITICAL if urgent else pb.MESSAGE_PRIORITY_HIGH
        self.events.emit(
            make_event(
                MESSAGE_REJECTED, level, stream=stream, group=self.group,
                entry_id=entry_id, reason=reason, detail=detail[:500], **where,
            )
        )  # fmt: skip

    def _escalate(self, stream: str, reason: str, priority: int | None, source: str) -> bool:
        """Whether this refusal of a verified CRITICAL envelope goes out as CRITICAL."""
        if priority != pb.MESSAGE_PRIORITY_CRITICAL:
            return False
        now = time.monotonic()
        key = (stream, reason, source)
        if now - self._urgent_sent.get(key, -URGENT_EVENT_INTERVAL_S) < URGENT_EVENT_INTERVAL_S:
            return False
        self._urgent_sent[key] = now
        return True

    def _trim(self, pipe: Pipeline, dead_key: str) -> None:
        """Queue the trims that keep a dead-letter stream within its bounds."""
        s = self.bus.settings
        oldest_ms = int(time.time() * 1000) - s.dead_letter_max_age_ms
        pipe.xtrim(dead_key, minid=f"{max(oldest_ms, 0)}-0", approximate=False)
        pipe.xtrim(dead_key, maxlen=s.dead_letter_max_entries, approximate=False)

    def _count_trims(self, stream: str, by_age: int, by_length: int) -> None:
        for bound, removed in (("age", by_age), ("length", by_length)):
            if removed:
                self.bus.metrics.inc("dead_letters_trimmed", removed, stream=stream, bound=bound)

    async def entry(
        self,
        stream: str,
        entry_id: str,
        fields: Mapping[bytes, bytes],
        reason: str,
        detail: str,
        deliveries: int,
        unit_id: str | None = None,
        *,
        priority: int | None = None,
        source: str = "",
    ) -> None:
        """Move an entry to its dead-letter stream with provenance and a bounded copy of
        its fields and ack it, in one transaction, so it is neither lost nor left
        pending; the stream is trimmed to its bounds in the same transaction."""
        record = await self._provenance(stream, entry_id, reason, detail, deliveries, unit_id)
        record.update(copied_fields(fields, self.copy_max_bytes))
        redis = self.bus.redis
        dead_key = self.bus.dead_letter_key(stream)

        async def move() -> list[Any]:
            async with redis.pipeline(transaction=True) as pipe:
                pipe.xadd(dead_key, record)  # type: ignore[arg-type]
                pipe.xack(self.bus.key(stream), self.group, entry_id)
                self._trim(pipe, dead_key)
                replies: list[Any] = await pipe.execute()
                return replies

        replies = await self.bus.io.run(move)
        self._count_trims(stream, int(replies[-2]), int(replies[-1]))
        self._rejected(stream, entry_id, reason, detail, priority, source)

    async def envelope(
        self,
        stream: str,
        entry_id: str,
        unit_id: str,
        index: int,
        envelope: pb.BusEnvelope,
        reason: str,
        detail: str,
        deliveries: int,
    ) -> None:
        """Record one envelope of a batch; its entry stays pending until the rest of the
        batch is done. The copy is the envelope alone (the batch signature covered it
        with the others, so it cannot be re-verified on its own)."""
        record = await self._provenance(stream, entry_id, reason, detail, deliveries, unit_id)
        record.update(
            {"unit_id": unit_id, "envelope_index": index, "message_id": envelope.message_id}
        )
        record.update(bounded_copy(b"envelope", envelope.SerializeToString(), self.copy_max_bytes))
        dead_key = self.bus.dead_letter_key(stream)

        async def add() -> list[Any]:
            async with self.bus.redis.pipeline(transaction=True) as pipe:
                pipe.xadd(dead_key, record)  # type: ignore[arg-type]
                self._trim(pipe, dead_key)
                replies: list[Any] = await pipe.execute()
                return replies

        replies = await self.bus.io.run(add)
        self._count_trims(stream, int(replies[-2]), int(replies[-1]))
        self._rejected(stream, entry_id, reason, detail, envelope_index=index)
