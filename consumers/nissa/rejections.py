"""The rejections Nissa has seen: every refused bus entry, command and policy update
that some component reported as an event, counted and the latest kept.

Counts are keyed by source, kind (``message_rejected``, ``command_rejected``,
``policy_update_rejected``), reason and stream, and exported as
``nissa_rejections_total``. The reasons and streams come from the components' own code,
but the number of distinct keys is bounded all the same (`max_series`; past it a
rejection is counted under ``reason="other"``), so a flood cannot grow /metrics
without end.

A refused message that was verified and claimed CRITICAL priority arrives as a
CRITICAL event (oona.dead_letters); the latest of those are kept apart with the time
Nissa saw them, for /healthz to report while they are recent.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.events import EventKind

KINDS = frozenset(
    {EventKind.MESSAGE_REJECTED, EventKind.COMMAND_REJECTED, EventKind.POLICY_UPDATE_REJECTED}
)
OTHER = "other"


@dataclass(frozen=True)
class RejectionKey:
    source: str
    kind: str
    reason: str
    stream: str


class RejectionBook:
    """Counts by key, and the latest `latest_kept` rejections (newest first)."""

    def __init__(self, *, max_series: int = 512, latest_kept: int = 50) -> None:
        self.max_series = max_series
        self.counts: Counter[RejectionKey] = Counter()
        self.latest: deque[dict[str, object]] = deque(maxlen=latest_kept)
        self.urgent: deque[tuple[float, str]] = deque(maxlen=latest_kept)

    def urgent_since(self, since_s: float) -> list[str]:
        """What each refused CRITICAL message seen at or after `since_s` was, newest first."""
        return [what for seen_s, what in reversed(self.urgent) if seen_s >= since_s]

    def observe(self, forwarded: pb.ForwardedEvent, now_s: float = 0.0) -> bool:
        """Count `forwarded` when it is a rejection; the hub names events
        ``<source>.<kind>``."""
        kind = forwarded.event.name.rsplit(".", 1)[-1]
        if kind not in KINDS:
            return False
        attrs = forwarded.event.attributes
        key = RejectionKey(forwarded.source, kind, attrs.get("reason", ""), attrs.get("stream", ""))
        if key not in self.counts and len(self.counts) >= self.max_series:
            key = RejectionKey(forwarded.source, kind, OTHER, OTHER)
        self.counts[key] += 1
        if forwarded.event.priority == pb.MESSAGE_PRIORITY_CRITICAL:
            self.urgent.append(
                (now_s, f"{key.reason} from {attrs.get('source', '?')} on {key.stream}")
            )
        self.latest.appendleft(
            {
                "time_s": forwarded.timestamp_ns / 1e9,
                "source": forwarded.source,
                "kind": kind,
                "reason": key.reason,
                "stream": key.stream,
                "detail": attrs.get("detail", "")[:200],
            }
        )
        return True

    def view(self) -> dict[str, object]:
        return {"total": sum(self.counts.values()), "latest": list(self.latest)}
