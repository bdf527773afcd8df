"""Recently seen telemetry packet ids (pure, bounded).

Oona already applies each signed unit once per group; this catches the same packet
arriving in a different unit: a producer that re-sent a batch whose first publish
timed out after it landed, or a packet sent on both the emergency and telemetry lanes.
Ids are remembered for `ttl_s` or until `capacity` newer ids push them out, which
bounds memory at a rate of 20,000 packets/s.
"""

from __future__ import annotations

from collections import OrderedDict


class PacketIdCache:
    """Insertion-ordered ids with their first-seen time; oldest evicted first."""

    def __init__(self, capacity: int = 200_000, ttl_s: float = 120.0) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self.ttl_s = ttl_s
        self._seen: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, packet_id: str) -> bool:
        return packet_id in self._seen

    def add(self, packet_id: str, now_s: float) -> None:
        """Remember `packet_id` as seen at `now_s` (call once its effect is done)."""
        self._seen[packet_id] = now_s
        self._seen.move_to_end(packet_id)
        self.expire(now_s)

    def expire(self, now_s: float) -> None:
        seen = self._seen
        while len(seen) > self.capacity:
            seen.popitem(last=False)
        horizon = now_s - self.ttl_s
        while seen:
            oldest = next(iter(seen.values()))
            if oldest > horizon:
                break
            seen.popitem(last=False)
