"""The producer side of Oona: signed envelopes onto capped streams, routed per message.

Writes go through one server-side script per stream and batch that appends only while
the stream is under its cap, so a full stream is noticed atomically: the producer
then trims what every group has acked, waits a bounded time, and finally raises
StreamFull (or, on a sheddable stream, counts the entries it sheds). Nothing is
dropped silently.

A publish to one of `durable_streams` (where data is at stake: field reports, policy
updates) returns only once the server has the entries in its append-only
file: with `appendfsync everysec` a server answers before it writes, and holds writes
back while a slow fsync runs, so a `kill -9` of it could lose what it acknowledged.
On a cluster it also waits (at most `replica_ack_timeout_ms`) for a replica of the
stream's master, where it has one, to have received them: a master lost with its
machine then loses none of them when that replica takes over. Telemetry does
not wait.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from leyline_pb import leyline_pb2 as pb
from oona.connection import IoGuard, cluster_client, open_redis, resolve_url
from oona.envelope import (
    BATCH_FIELD,
    MAX_ENVELOPES_PER_BATCH,
    SINGLE_FIELD,
    make_envelope,
    seal,
    seal_batch,
)
from oona.errors import BusUnavailable, StreamFull
from oona.keys import Signer
from oona.metrics import BusMetrics
from oona.replies import group_lag, text, undelivered_after
from oona.retention import GroupPosition, format_id, parse_id, safe_min_id
from oona.settings import OonaSettings
from oona.streams import dead_letter_key, lane_for, stream_key

# KEYS[1] stream; ARGV[1] cap; ARGV[2] field name; ARGV[3..] entry values.
# Appends as many values as fit under the cap; returns {length, id1, id2, ...}.
log = logging.getLogger(__name__)

_CAPPED_ADD = """
local room = tonumber(ARGV[1]) - redis.call('XLEN', KEYS[1])
local out = {0}
local n = #ARGV - 2
if room < n then n = math.max(room, 0) end
for i = 1, n do
  out[i + 1] = redis.call('XADD', KEYS[1], '*', ARGV[2], ARGV[i + 2])
end
out[1] = redis.call('XLEN', KEYS[1])
return out
"""


class UnconfirmedPublish(ConnectionError):
    """The reply that would confirm a durable publish is as good as lost: the IO guard
    retries the publish, as after a connection lost before its reply."""


@dataclass(frozen=True)
class Outgoing:
    """One message to publish: its stream (None: routed by priority) and content."""

    message_type: pb.MessageType.ValueType
    payload: bytes
    priority: pb.MessagePriority.ValueType = pb.MESSAGE_PRIORITY_NORMAL
    stream: str | None = None
    message_id: str | None = None


class Bus:
    """An async client of the bus for one component (`source`), signing with `signer`."""

    def __init__(
        self,
        redis: aioredis.Redis,
        settings: OonaSettings,
        signer: Signer,
        *,
        source: str,
        metrics: BusMetrics | None = None,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.signer = signer
        self.source = source
        self.metrics = metrics or BusMetrics()
        self.io = IoGuard(settings, self.metrics)
        self._capped_add = redis.register_script(_CAPPED_ADD)
        self._waits_for_disk = True

    @classmethod
    def connect(
        cls,
        settings: OonaSettings,
        signer: Signer,
        *,
        source: str,
        metrics: BusMetrics | None = None,
    ) -> Bus:
        """Connect to the configured server, or to the embedded one started on demand."""
        return cls(
            open_redis(resolve_url(settings), settings), settings, signer,
            source=source, metrics=metrics,
        )  # fmt: skip

    async def close(self) -> None:
        await self.redis.aclose()

    def key(self, stream: str) -> str:
        return stream_key(self.settings.key_prefix, stream)

    def dead_letter_key(self, stream: str) -> str:
        return dead_letter_key(self.settings.key_prefix, stream)

    # ------------------------------------------------------------ publishing

    async def publish(
        self,
        message_type: pb.MessageType.ValueType,
        payload: bytes,
        *,
        priority: pb.MessagePriority.ValueType = pb.MESSAGE_PRIORITY_NORMAL,
        stream: str | None = None,
        message_id: str | None = None,
    ) -> str:
        """Publish one signed envelope; returns its message id.

        With `stream` None the message takes the lane its own priority selects.
        """
        out = Outgoing(message_type, payload, priority, stream, message_id)
        ids = await self.publish_many([out], batch_signed=False)
        return ids[0]

    async def publish_many(
        self,
        messages: Sequence[Outgoing],
        *,
        batch_signed: bool = True,
        batch_size: int = MAX_ENVELOPES_PER_BATCH,
    ) -> list[str]:
        """Publish many messages in one round trip per stream; returns their message ids.

        `batch_signed` puts up to `batch_size` envelopes of a stream under one signature
        in one entry (the consumer verifies it once); otherwise each envelope is its
        own signed entry. Consumers refuse a batch of more than
        MAX_ENVELOPES_PER_BATCH envelopes.
        """
        if not 1 <= batch_size <= MAX_ENVELOPES_PER_BATCH:
            raise ValueError(f"batch_size must be 1..{MAX_ENVELOPES_PER_BATCH}")
        by_stream: dict[str, list[pb.BusEnvelope]] = defaultdict(list)
        ids: list[str] = []
        for msg in messages:
            stream = str(msg.stream or lane_for(msg.priority))
            env = make_envelope(
                stream=stream,
                message_type=msg.message_type,
                payload=msg.payload,
                source=self.source,
                priority=msg.priority,
                message_id=msg.message_id,
            )
            by_stream[stream].append(env)
            ids.append(env.message_id)
        started = time.perf_counter()
        for stream, envelopes in by_stream.items():
            if batch_signed:
                step = batch_size
                chunks = [envelopes[i : i + step] for i in range(0, len(envelopes), step)]
                namespace = self.settings.key_prefix
                values = [seal_batch(chunk, self.signer, namespace=namespace) for chunk in chunks]
                counts = [len(chunk) for chunk in chunks]
                await self._append(stream, BATCH_FIELD, values, counts)
            else:
                values = [
                    seal(env, self.signer, namespace=self.settings.key_prefix) for env in envelopes
                ]
                await self._append(stream, SINGLE_FIELD, values, [1] * len(values))
        elapsed = time.perf_counter() - started
        self.metrics.observe("publish_latency_s", elapsed / max(len(by_stream), 1))
        return ids

    async def _append(
        self, stream: str, field: bytes, values: list[bytes], messages_per_value: list[int]
    ) -> None:
        key = self.key(stream)
        cap = self.settings.cap_for(stream)
        deadline = time.monotonic() + self.settings.pushback_wait_ms / 1000.0
        delay = 0.005
        pending_values, pending_counts = values, messages_per_value
        while True:
            args: list[bytes | int] = [cap, field, *pending_values]
            reply: list[Any] = await self.io.run(
                lambda args=args: self._add(stream, key, args)  # type: ignore[misc]
            )
            written = len(reply) - 1
            self.metrics.inc("published", sum(pending_counts[:written]), stream=stream)
            pending_values = pending_values[written:]
            pending_counts = pending_counts[written:]
            if not pending_values:
                return
            if stream in self.settings.sheddable_streams:
                self.metrics.inc("shed", sum(pending_counts), stream=stream)
                return
            self.metrics.inc("pushback", stream=stream)
            if await self.trim(stream) > 0:
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StreamFull(stream, int(reply[0]), cap, sum(pending_counts))
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.1)

    async def _add(self, stream: str, key: str, args: list[bytes | int]) -> list[Any]:
        """The capped add; on a durable stream followed, in the same round trip, by
        WAITAOF, so that the call returns only once the server has the entries in its
        append-only file (a `kill -9` of the server cannot lose them then)."""
        if not self._waits_for_disk or stream not in self.settings.durable_streams:
            reply: list[Any] = await self._capped_add(keys=[key], args=args)
            return reply
        timeout_ms = int(self.settings.io_timeout_ms)
        cluster = cluster_client(self.redis)
        if cluster is not None:
            return await self._add_on_cluster(cluster, stream, key, args)
        async with self.redis.pipeline(transaction=False) as pipe:
            await self._capped_add(keys=[key], args=args, client=pipe)
            pipe.execute_command("WAITAOF", 1, 0, timeout_ms)
            added, synced = await pipe.execute(raise_on_error=False)
        if isinstance(added, BaseException):
            raise added
        return self._confirmed_on_disk(stream, added, synced)

    async def _add_on_cluster(
        self, cluster: RedisCluster, stream: str, key: str, args: list[bytes | int]
    ) -> list[Any]:
        """The durable add on a cluster: the script, WAITAOF on the master, and WAIT for
        one replica where the master has one (a replica promoted after the master's loss
        serves what it received), pipelined on one connection to the stream's master
        (a wait covers the writes of its own connection only).

        The script goes as EVAL: a replica promoted after a failover has no cached
        scripts, and a pipeline does not load them. If the slot moved meanwhile (the
        add was redirected or retried on the replica that took over), the waits covered
        another connection: the publish is retried as after a lost reply, and a
        consumer refuses the second copy as a replay.
        """
        if not cluster.nodes_manager.slots_cache:
            await cluster.initialize()
        master = cluster.get_node_from_key(key)
        replicas = 0 if cluster.get_node_from_key(key, replica=True) is None else 1
        async with cluster.pipeline(transaction=False) as pipe:
            pipe.eval(_CAPPED_ADD, 1, key, *args)
            pipe.execute_command(
                "WAITAOF", 1, 0, int(self.settings.io_timeout_ms), target_nodes=master
            )
            if replicas:
                timeout_ms = int(self.settings.replica_ack_timeout_ms)
                pipe.execute_command("WAIT", replicas, timeout_ms, target_nodes=master)
            added, synced, *replicated = await pipe.execute(raise_on_error=False)
        if isinstance(added, BaseException):
            raise added
        if cluster.get_node_from_key(key) is not master:
            raise UnconfirmedPublish(f"{stream} moved to another master while it was published")
        confirmed = self._confirmed_on_disk(stream, added, synced)
        for reply in replicated if self._waits_for_disk else []:
            if isinstance(reply, BaseException):
                raise reply
            if int(reply) < replicas:
                raise BusUnavailable(
                    f"no replica of {stream}'s master confirmed it within "
                    f"{self.settings.replica_ack_timeout_ms:.0f} ms"
                )
        return confirmed

    def _confirmed_on_disk(self, stream: str, added: Any, synced: Any) -> list[Any]:
        """The script's reply once WAITAOF's reply `synced` says the master has it on
        disk; a server that cannot say (no append-only file) is warned about once and
        no longer asked."""
        timeout_ms = int(self.settings.io_timeout_ms)
        if isinstance(synced, ResponseError):  # no append-only file, or an older server
            self._waits_for_disk = False
            log.warning("the server cannot confirm writes on disk (%s): publishes to %s are "
                        "acknowledged before they are durable", synced, stream)  # fmt: skip
        elif isinstance(synced, BaseException):
            raise synced
        elif int(synced[0]) < 1:
            raise BusUnavailable(f"the server did not write {stream} to disk in {timeout_ms} ms")
        return list(added)

    # ------------------------------------------------------------- retention

    async def group_positions(self, stream: str) -> list[GroupPosition]:
        key = self.key(stream)

        async def read() -> list[GroupPosition]:
            try:
                groups = await self.redis.xinfo_groups(key)
            except aioredis.ResponseError:
                return []
            positions = []
            for group in groups:
                name = group["name"]
                lowest = None
                if int(group["pending"]) > 0:
                    summary = await self.redis.xpending(key, name)
                    if summary["min"] is not None:  # acked since XINFO GROUPS answered
                        lowest = parse_id(summary["min"])
                positions.append(
                    GroupPosition(
                        name=text(name),
                        last_delivered=parse_id(group["last-delivered-id"]),
                        lowest_pending=lowest,
                    )
                )
            return positions

        return await self.io.run(read)

    async def trim(self, stream: str) -> int:
        """Trim entries every group has acked (and past retention); returns how many."""
        positions = await self.group_positions(stream)
        bound = safe_min_id(
            positions,
            now_ms=int(time.time() * 1000),
            retain_acked_ms=self.settings.retain_acked_ms,
        )
        if bound is None:
            return 0
        key = self.key(stream)
        removed = await self.io.run(
            lambda: self.redis.xtrim(key, minid=format_id(bound), approximate=False)
        )
        self.metrics.inc("trimmed", int(removed), stream=stream)
        return int(removed)

    async def dead_letters_added(self, streams: Sequence[str]) -> dict[str, int]:
        """Records ever added to each stream's dead-letter stream (the server's count,
        which trimming never lowers); streams without one are left out."""

        async def read() -> dict[str, int]:
            async with self.redis.pipeline(transaction=False) as pipe:
                for stream in streams:
                    pipe.xinfo_stream(self.dead_letter_key(stream))
                replies: list[Any] = await pipe.execute(raise_on_error=False)
            return {
                stream: int(reply["entries-added"])
                for stream, reply in zip(streams, replies, strict=True)
                if isinstance(reply, dict)
            }

        return await self.io.run(read)

    async def group_lag(self, stream: str) -> dict[str, int]:
        """Entries not yet delivered plus entries delivered but unacked, per group."""

        async def read() -> dict[str, int]:
            try:
                groups = await self.redis.xinfo_groups(self.key(stream))
            except aioredis.ResponseError:
                return {}
            counted: dict[str, int] = {}
            for group in groups:
                if group.get("lag") is None:  # the server cannot tell after deletions
                    after = undelivered_after(group)
                    later: Any = await self.redis.xrange(self.key(stream), after, "+")
                    counted[after] = len(later)
            return {text(g["name"]): group_lag(g, counted.__getitem__) for g in groups}

        lag = await self.io.run(read)
        for group, value in lag.items():
            self.metrics.set_gauge("group_lag", value, stream=stream, group=group)
        return lag
