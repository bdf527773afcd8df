"""Per-group ledger of signed units: replay detection and effect-once application.

A unit is what one signature covers: a single envelope (keyed by its message id) or a
batch (keyed by its batch id; its envelopes cannot be regrouped without the private
key). For each (group, unit) one key records the stream entry that carried it, when it
was first delivered, and how many of its envelopes were applied:
``P|<entry id>|<first ms>|<applied>`` while pending, ``A|...`` once complete.
A redelivery of the same entry resumes after the applied envelopes; the same unit in a
different entry is a replay. Keys outlive the freshness window (`idempotency_ttl_s`).
Recording progress and XACK happen in one server-side script, so a crash leaves either
both or neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import redis.asyncio as aioredis

from oona.settings import OonaSettings

# KEYS: ledger keys; ARGV[1] ttl s; ARGV[2] now ms; ARGV[2+i] entry id of KEYS[i].
# Returns {code, applied} per key: code 0 new, 1 redelivered, 2 applied, 3 replay.
_CHECK = """
local out = {}
for i, key in ipairs(KEYS) do
  local entry = ARGV[2 + i]
  local cur = redis.call('GET', key)
  if not cur then
    redis.call('SET', key, 'P|' .. entry .. '|' .. ARGV[2] .. '|0', 'EX', ARGV[1])
    out[#out + 1] = 0
    out[#out + 1] = 0
  else
    local state, owner, _, applied = string.match(cur, '^(%a)|([^|]*)|(%d+)|(%d+)$')
    if owner ~= entry then out[#out + 1] = 3
    elseif state == 'A' then out[#out + 1] = 2
    else out[#out + 1] = 1 end
    out[#out + 1] = tonumber(applied)
  end
end
return out
"""

# KEYS[1] stream; KEYS[2..] ledger keys; ARGV[1] group; ARGV[2] number of ledger keys;
# ARGV[3 .. 2+n] "A" or "P" then applied count, as "A:12"; the rest: entry ids to ack.
_RECORD = """
local n = tonumber(ARGV[2])
for i = 1, n do
  local cur = redis.call('GET', KEYS[1 + i])
  if cur then
    local state, applied = string.match(ARGV[2 + i], '^(%a):(%d+)$')
    local owner, first = string.match(cur, '^%a|([^|]*)|(%d+)|')
    redis.call('SET', KEYS[1 + i], state .. '|' .. owner .. '|' .. first .. '|' .. applied,
               'KEEPTTL')
  end
end
if #ARGV > 2 + n then
  return redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 3 + n))
end
return 0
"""


class DeliveryStatus(Enum):
    NEW = 0
    REDELIVERED = 1
    APPLIED = 2
    REPLAY = 3


@dataclass(frozen=True)
class UnitState:
    status: DeliveryStatus
    applied: int  # envelopes of the unit already applied (resume point)


@dataclass(frozen=True)
class Progress:
    unit_id: str
    applied: int
    complete: bool


class EnvelopeLedger:
    def __init__(self, redis: aioredis.Redis, settings: OonaSettings, group: str) -> None:
        self.redis = redis
        self.settings = settings
        self.group = group
        self._check = redis.register_script(_CHECK)
        self._record = redis.register_script(_RECORD)

    def key(self, unit_id: str) -> str:
        return f"{self.settings.key_prefix}:seen:{self.group}:{unit_id}"

    async def check(self, pairs: Sequence[tuple[str, str]], *, now_ms: int) -> list[UnitState]:
        """State of each (unit id, entry id), in order, recording first sight of new ones."""
        if not pairs:
            return []
        keys = [self.key(unit_id) for unit_id, _ in pairs]
        args: list[str | int] = [self.settings.idempotency_ttl_s, now_ms]
        args.extend(entry for _, entry in pairs)
        flat = await self._check(keys=keys, args=args)
        return [
            UnitState(DeliveryStatus(int(flat[i])), int(flat[i + 1]))
            for i in range(0, len(flat), 2)
        ]

    async def record_and_ack(
        self, stream_key: str, progress: Sequence[Progress], ack_entry_ids: Sequence[str]
    ) -> None:
        """Record how far each unit got and ack finished entries, atomically."""
        if not progress and not ack_entry_ids:
            return
        keys = [stream_key, *(self.key(p.unit_id) for p in progress)]
        marks = [f"{'A' if p.complete else 'P'}:{p.applied}" for p in progress]
        args: list[str | int] = [self.group, len(progress), *marks, *ack_entry_ids]
        await self._record(keys=keys, args=args)

    async def first_delivery_ms(self, unit_id: str | None) -> int | None:
        """When the unit was first delivered to this group, if that was recorded."""
        if unit_id is None:
            return None
        value: Any = await self.redis.get(self.key(unit_id))
        return int(value.split(b"|")[2]) if value else None
