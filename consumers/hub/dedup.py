"""Recently seen telemetry packet ids (pure, bounded).

Oona already applies each signed unit once per group; this catches the same packet
arriving in a different unit: a producer that re-sent a batch whose first publish
timed out after it landed, or a packet sent on both the emergency and telemetry lanes.
Ids are remembered for `ttl_s` or until `capacity` newer ids push them out, which
bounds memory at a rate of 20,000 packets/s.
"""

from __future__ import annotations

EXPIRE_EVERY = 1_024  # adds between two time-based expiry passes


class PacketIdCache:
    """Insertion-ordered ids with their first-seen time; oldest evicted first. The
    capacity bound holds on every add; the time bound is applied every `EXPIRE_EVERY`
    adds (and on `expire`), which keeps the cost per packet constant."""

    def __init__(self, capacity: int = 200_000, ttl_s: float = 120.0) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self.ttl_s = ttl_s
        self._seen: dict[str, float] = {}
        self._adds = 0

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, packet_id: str) -> bool:
        return packet_id in self._seen

    def add(self, packet_id: str, now_s: float) -> None:
        """Remember `packet_id` as seen at `now_s` (call once its effect is done)."""
        seen = self._seen
        seen[packet_id] = now_s
        if len(seen) > self.capacity:
            del seen[next(iter(seen))]
        self._adds += 1
        if self._adds >= EXPIRE_EVERY:
            self.expire(now_s)

    def expire(self, now_s: float) -> None:
        """Forget ids older than the time bound."""
        self._adds = 0
        seen = self._seen
        horizon = now_s - self.ttl_s
        expired = []
        for packet_id, first_s in seen.items():
            if first_s > horizon:
                break
            expired.append(packet_id)
        for packet_id in expired:
            del seen[packet_id]
