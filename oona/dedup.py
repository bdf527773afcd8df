"""Per-group ledger of envelope ids: replay detection and effect-once application.

For each (group, message id) one key records which stream entry carried the envelope,
when it was first delivered, and whether its effect was applied:
``P|<entry id>|<first ms>`` while pending, ``A|<entry id>|<first ms>`` once applied.
A redelivery of the same entry is processed again until applied; the same message id
arriving in a different entry is a replay. The key outlives the freshness window
(`idempotency_ttl_s`), so a replay can never slip in between the two checks.
Marking applied and XACK happen in one server-side script: a crash leaves either
both or neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

import redis.asyncio as aioredis

from oona.settings import OonaSettings

# KEYS: ledger keys; ARGV[1] ttl s; ARGV[2] now ms; ARGV[2+i] entry id of KEYS[i].
# Returns one code per key: 0 new, 1 redelivered, 2 applied, 3 replay.
_CHECK = """
local out = {}
for i, key in ipairs(KEYS) do
  local entry = ARGV[2 + i]
  local cur = redis.call('GET', key)
  if not cur then
    redis.call('SET', key, 'P|' .. entry .. '|' .. ARGV[2], 'EX', ARGV[1])
    out[i] = 0
  else
    local state, owner = string.match(cur, '^(%a)|([^|]*)|')
    if owner ~= entry then out[i] = 3
    elseif state == 'A' then out[i] = 2
    else out[i] = 1 end
  end
end
return out
"""

# KEYS[1] stream; KEYS[2..] ledger keys to mark applied; ARGV[1] group; ARGV[2..] ids to ack.
_APPLY = """
for i = 2, #KEYS do
  local cur = redis.call('GET', KEYS[i])
  if cur and string.sub(cur, 1, 1) == 'P' then
    redis.call('SET', KEYS[i], 'A' .. string.sub(cur, 2), 'KEEPTTL')
  end
end
if #ARGV > 1 then
  return redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
end
return 0
"""


class DeliveryStatus(Enum):
    NEW = 0
    REDELIVERED = 1
    APPLIED = 2
    REPLAY = 3


class EnvelopeLedger:
    def __init__(self, redis: aioredis.Redis, settings: OonaSettings, group: str) -> None:
        self.redis = redis
        self.settings = settings
        self.group = group
        self._check = redis.register_script(_CHECK)
        self._apply = redis.register_script(_APPLY)

    def key(self, message_id: str) -> str:
        return f"{self.settings.key_prefix}:seen:{self.group}:{message_id}"

    async def check(
        self, pairs: Sequence[tuple[str, str]], *, now_ms: int
    ) -> dict[tuple[str, str], DeliveryStatus]:
        """Status of each (message id, entry id), recording first sight of new ones."""
        if not pairs:
            return {}
        keys = [self.key(message_id) for message_id, _ in pairs]
        args = [self.settings.idempotency_ttl_s, now_ms, *(entry for _, entry in pairs)]
        codes = await self._check(keys=keys, args=args)
        return {pair: DeliveryStatus(int(code)) for pair, code in zip(pairs, codes, strict=True)}

    async def apply_and_ack(
        self, stream_key: str, applied_ids: Sequence[str], ack_entry_ids: Sequence[str]
    ) -> None:
        """Mark envelopes applied and ack entries, atomically."""
        if not applied_ids and not ack_entry_ids:
            return
        keys = [stream_key, *(self.key(m) for m in applied_ids)]
        await self._apply(keys=keys, args=[self.group, *ack_entry_ids])

    async def first_delivery_ms(self, message_ids: Sequence[str]) -> int | None:
        """Earliest recorded first delivery among these envelopes, if any was recorded."""
        if not message_ids:
            return None
        values = await self.redis.mget([self.key(m) for m in message_ids])
        times = [int(v.rsplit(b"|", 1)[1]) for v in values if v]
        return min(times) if times else None
