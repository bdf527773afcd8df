"""A consumer's leases on the units of one read, kept by its own clock.

The ledger (oona.dedup) leases a unit to the consumer that checks it, by the server's
clock, for `lease_ms`: shorter than `claim_idle_ms`, so the lease has run out before
another consumer may claim the entry. The consumer counts the same span from just
before it asked, so by its own clock its lease always ends first; it renews every
lease it holds once half of that span has passed, and applies a unit only while it
still holds it. A consumer paused past its lease therefore asks again on resuming,
and learns that another consumer took the unit over instead of applying it twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from oona.connection import IoGuard
from oona.dedup import DeliveryStatus, EnvelopeLedger, UnitState

LEASE_SHARE_OF_CLAIM_IDLE = 0.8
"""A unit's lease as a share of `claim_idle_ms`: the rest is the margin by which it
runs out before anyone may claim its entry."""

_HELD = frozenset({DeliveryStatus.NEW, DeliveryStatus.REDELIVERED})


def lease_ms_for(claim_idle_ms: int) -> int:
    """How long a consumer holds a unit it checked (at least 1 ms)."""
    return max(int(claim_idle_ms * LEASE_SHARE_OF_CLAIM_IDLE), 1)


class UnitLeases:
    """The units of one read of `stream` this consumer holds; every ledger call goes
    through the bus's IO guard."""

    def __init__(
        self,
        ledger: EnvelopeLedger,
        stream: str,
        lease_ms: int,
        io: IoGuard,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ledger = ledger
        self.stream = stream
        self.lease_ms = lease_ms
        self._io = io
        self._clock = clock
        self._held: set[str] = set()
        self._granted_s = 0.0

    async def take(self, pairs: Sequence[tuple[str, str]]) -> list[UnitState]:
        """Check each (unit id, entry id) in the ledger, leasing those to apply."""
        asked_s = self._clock()
        states = await self._io.run(
            lambda: self.ledger.check(self.stream, pairs, lease_ms=self.lease_ms)
        )
        self._granted_s = asked_s
        self._held = {unit for (unit, _), s in zip(pairs, states, strict=True) if s.status in _HELD}
        return states

    async def hold(self, unit_id: str) -> bool:
        """Whether this consumer may apply `unit_id` now; renews first once half the
        lease has passed (one round trip for every unit it holds)."""
        if unit_id not in self._held:
            return False
        if (self._clock() - self._granted_s) * 1000.0 >= self.lease_ms / 2:
            units = sorted(self._held)
            asked_s = self._clock()
            held = await self._io.run(
                lambda: self.ledger.renew(self.stream, units, lease_ms=self.lease_ms)
            )
            self._granted_s = asked_s
            self._held = {unit for unit, h in zip(units, held, strict=True) if h}
        return unit_id in self._held

    def done(self, unit_id: str) -> None:
        """The unit was recorded (or left for a retry): stop renewing it."""
        self._held.discard(unit_id)
