"""When the hub sheds a packet (pure).

Overload shows as age: when the hub cannot keep up, the entries it reads were written
longer and longer ago. Past `shed_after_ms` it stops aggregating NORMAL and LOW packets
(each one counted) so that it catches up with the present, where the operator looks.
HIGH and CRITICAL packets are never shed, however late.

The age is the hub's clock minus the server time in the entry id, so a clock skew
between the hub and the server larger than `shed_after_ms` would look like overload:
keep the clocks synchronised (NTP) or raise the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

from leyline_pb import leyline_pb2 as pb
from oona.streams import URGENT_PRIORITIES


@dataclass(frozen=True)
class OverloadPolicy:
    shed_after_ms: float = 5_000.0

    def sheds(self, priority: pb.MessagePriority.ValueType, entry_age_ms: float) -> bool:
        """Whether a packet of this effective priority, read this late, is shed."""
        return priority not in URGENT_PRIORITIES and entry_age_ms > self.shed_after_ms
