"""Per-group ledger of signed units: replay detection, effect-once application, and the
lease that keeps two consumers of a group from applying one unit at the same time.

A unit is what one signature covers: a single envelope (keyed by its message id) or a
batch (keyed by its batch id; its envelopes cannot be regrouped without the private
key). A unit is valid on the one stream its signature names, so the ledger is kept per
stream, its keys in the stream's slot (oona.streams.ledger_key): the script that
records progress and acks touches one slot. For each (stream, group, unit) one key
records the stream entry that carried it, when it was first delivered, how many of its
envelopes were applied, and which consumer holds it until when:
``P|<entry id>|<first ms>|<applied>|<lease until ms>|<consumer>`` while pending,
``A|...`` once complete (a key written before leases existed ends after the applied
count and holds no lease). Times are the server's clock, the one clock every
consumer of a group shares.

A consumer takes the lease of a unit when it checks it, and applies the unit only while
its lease lasts; a unit leased to another consumer whose lease has not run out is
`BUSY`. Progress is recorded, and the entry acked, in one server-side script that
refuses (fences) a consumer that no longer holds the unit: a consumer paused past its
lease finds, on resuming, that another took over, and neither records nor acks what
it held. A redelivery of the same entry resumes after the applied envelopes; the same
unit in a different entry is a replay. Keys outlive the freshness window
(`idempotency_ttl_s`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import redis.asyncio as aioredis

from oona.settings import OonaSettings
from oona.streams import ledger_key, stream_key

# Shared by the scripts: the server's time in ms, and a ledger value's parts.
_PARSE = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function parse(value)
  local state, entry, first, applied, rest =
    string.match(value, '^(%a)|([^|]*)|(%d+)|(%d+)(.*)$')
  local lease_until, holder = string.match(rest, '^|(%d+)|(.*)$')
  return state, entry, first, applied, tonumber(lease_until or '0'), holder or ''
end
local function value(state, entry, first, applied, lease_until, holder)
  return state .. '|' .. entry .. '|' .. first .. '|' .. applied .. '|' .. lease_until
    .. '|' .. holder
end
"""

# KEYS: ledger keys; ARGV[1] ttl s; ARGV[2] lease ms; ARGV[3] consumer;
# ARGV[3+i] entry id of KEYS[i]. Returns {code, applied, lease left ms} per key:
# code 0 new, 1 redelivered, 2 applied, 3 replay, 4 leased to another consumer.
_CHECK = (
    _PARSE
    + """
local now = now_ms()
local lease, me = tonumber(ARGV[2]), ARGV[3]
local out = {}
for i, key in ipairs(KEYS) do
  local entry = ARGV[3 + i]
  local cur = redis.call('GET', key)
  local code, applied, left = 0, 0, 0
  if not cur then
    redis.call('SET', key, value('P', entry, now, 0, now + lease, me), 'EX', ARGV[1])
  else
    local state, held, first, done, lease_until, holder = parse(cur)
    applied = tonumber(done)
    if held ~= entry then code = 3
    elseif state == 'A' then code = 2
    elseif holder ~= me and holder ~= '' and lease_until > now then
      code, left = 4, lease_until - now
    else
      code = 1
      redis.call('SET', key, value('P', entry, first, done, now + lease, me), 'KEEPTTL')
    end
  end
  out[#out + 1] = code
  out[#out + 1] = applied
  out[#out + 1] = left
end
return out
"""
)

# KEYS: ledger keys; ARGV[1] lease ms; ARGV[2] consumer. Extends the leases this
# consumer still holds; returns 1 per key it holds, 0 per key another took or finished.
_RENEW = (
    _PARSE
    + """
local now = now_ms()
local out = {}
for i, key in ipairs(KEYS) do
  local cur = redis.call('GET', key)
  local held = 0
  if cur then
    local state, entry, first, done, _, holder = parse(cur)
    if state == 'P' and holder == ARGV[2] then
      redis.call('SET', key, value('P', entry, first, done, now + tonumber(ARGV[1]), holder),
                 'KEEPTTL')
      held = 1
    end
  end
  out[i] = held
end
return out
"""
)

# KEYS[1] stream; KEYS[2..] ledger keys; ARGV[1] group; ARGV[2] consumer; ARGV[3] n
# ledger keys; then per key a mark ("A:12" or "P:3") and the entry to ack once recorded
# ("" for none); the rest: entries to ack as they are (already applied elsewhere).
# Returns {acked, fenced_1 .. fenced_n}: fenced_i is 1 when another consumer holds
# unit i (or finished it), in which case nothing is written or acked for it.
_RECORD = (
    _PARSE
    + """
local n = tonumber(ARGV[3])
local out = {0}
local acks = {}
for i = 1, n do
  local cur = redis.call('GET', KEYS[1 + i])
  local fenced = 0
  if cur then
    local state, entry, first, _, lease_until, holder = parse(cur)
    if state == 'A' or (holder ~= '' and holder ~= ARGV[2]) then
      fenced = 1
    else
      local mark, applied = string.match(ARGV[2 + 2 * i], '^(%a):(%d+)$')
      redis.call('SET', KEYS[1 + i], value(mark, entry, first, applied, lease_until, holder),
                 'KEEPTTL')
    end
  end
  out[1 + i] = fenced
  local ack = ARGV[3 + 2 * i]
  if fenced == 0 and ack ~= '' then acks[#acks + 1] = ack end
end
for i = 4 + 2 * n, #ARGV do acks[#acks + 1] = ARGV[i] end
if #acks > 0 then out[1] = redis.call('XACK', KEYS[1], ARGV[1], unpack(acks)) end
return out
"""
)


class DeliveryStatus(Enum):
    NEW = 0
    REDELIVERED = 1
    APPLIED = 2
    REPLAY = 3
    BUSY = 4  # leased to another consumer of the group, which is applying it


@dataclass(frozen=True)
class UnitState:
    status: DeliveryStatus
    applied: int  # envelopes of the unit already applied (resume point)
    lease_left_ms: int = 0  # BUSY: how long the other consumer's lease still runs


@dataclass(frozen=True)
class Progress:
    """How far one unit got, and the entry to ack with it once it is complete."""

    unit_id: str
    applied: int
    complete: bool
    entry_id: str = ""


@dataclass(frozen=True)
class Recorded:
    acked: int
    fenced: tuple[bool, ...]  # per Progress: another consumer holds or finished the unit


class EnvelopeLedger:
    def __init__(
        self, redis: aioredis.Redis, settings: OonaSettings, group: str, consumer: str = ""
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.group = group
        self.consumer = consumer
        self._check = redis.register_script(_CHECK)
        self._renew = redis.register_script(_RENEW)
        self._record = redis.register_script(_RECORD)

    def key(self, stream: str, unit_id: str) -> str:
        return ledger_key(self.settings.key_prefix, stream, self.group, unit_id)

    async def check(
        self, stream: str, pairs: Sequence[tuple[str, str]], *, lease_ms: int
    ) -> list[UnitState]:
        """State of each (unit id, entry id) of `stream`, in order; records first sight
        of new ones and leases every unit this consumer may apply for `lease_ms`."""
        if not pairs:
            return []
        keys = [self.key(stream, unit_id) for unit_id, _ in pairs]
        args: list[str | int] = [self.settings.idempotency_ttl_s, lease_ms, self.consumer]
        args.extend(entry for _, entry in pairs)
        flat = await self._check(keys=keys, args=args)
        return [
            UnitState(DeliveryStatus(int(flat[i])), int(flat[i + 1]), int(flat[i + 2]))
            for i in range(0, len(flat), 3)
        ]

    async def renew(self, stream: str, unit_ids: Sequence[str], *, lease_ms: int) -> list[bool]:
        """Extend this consumer's leases; False for each unit it no longer holds."""
        if not unit_ids:
            return []
        keys = [self.key(stream, unit_id) for unit_id in unit_ids]
        held = await self._renew(keys=keys, args=[lease_ms, self.consumer])
        return [bool(int(h)) for h in held]

    async def record_and_ack(
        self, stream: str, progress: Sequence[Progress], ack_entry_ids: Sequence[str] = ()
    ) -> Recorded:
        """Record how far each unit got and ack its entry when complete, and ack
        `ack_entry_ids`, atomically; a unit another consumer holds is left alone."""
        if not progress and not ack_entry_ids:
            return Recorded(0, ())
        keys = [
            stream_key(self.settings.key_prefix, stream),
            *(self.key(stream, p.unit_id) for p in progress),
        ]
        args: list[str | int] = [self.group, self.consumer, len(progress)]
        for p in progress:
            args.append(f"{'A' if p.complete else 'P'}:{p.applied}")
            args.append(p.entry_id if p.complete else "")
        args.extend(ack_entry_ids)
        reply = await self._record(keys=keys, args=args)
        return Recorded(int(reply[0]), tuple(bool(int(f)) for f in reply[1:]))

    async def first_delivery_ms(self, stream: str, unit_id: str | None) -> int | None:
        """When the unit was first delivered to this group, if that was recorded."""
        if unit_id is None:
            return None
        found: Any = await self.redis.get(self.key(stream, unit_id))
        return int(found.split(b"|")[2]) if found else None
