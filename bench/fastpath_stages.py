"""Where a CRITICAL event's time goes on its way from Kasmina's publish to Nissa's alert
(bench/fastpath.py): each consumer of the path is timed at its stages, and the event
loop that runs the hub and Nissa is sampled for how late it wakes.

Per consumer (the hub's emergency lane, Nissa): when a read's entries reached the
consumer (its verification starts), when they were verified, when the ledger leased
their units, when the handler was entered and when it returned. The stamps are taken by
wrapping the consumer's verification, its ledger's check and its handler on that
instance only: the code timed is the code that runs in production.

The stages of one event, each a difference of two stamps on one machine's clock:

- ``to_hub_read``: Kasmina's publish and the hub's blocked read waking with it (the
  round trip to the server, and whatever held the hub's loop meanwhile);
- ``hub_verify``, ``hub_lease``: the hub's signature checks and its ledger round trip;
- ``hub_forward``: the hub's handler: aggregate, sign and publish the forwarded event;
- ``to_nissa_read``: from the forward's publish returning to Nissa's read waking (can
  be negative: Nissa may wake before the hub has the server's reply);
- ``nissa_verify``, ``nissa_lease``: as for the hub;
- ``nissa_queue``: from the lease to the handler, i.e. the entries read before the
  CRITICAL one (NORMAL aggregates share Nissa's stream);
- ``nissa_ingest``: Nissa's handler up to the alert.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from bench.common import percentiles
from leyline_pb import leyline_pb2 as pb
from oona.consumer import Consumer, Delivery

STAGES = (
    "to_hub_read", "hub_verify", "hub_lease", "hub_forward", "to_nissa_read",
    "nissa_verify", "nissa_lease", "nissa_queue", "nissa_ingest",
)  # fmt: skip
LOOP_SAMPLE_S = 0.005


@dataclass
class ConsumerStamps:
    """The stages of the read in progress on one consumer (ns, wall clock)."""

    read_ns: int = 0
    verified_ns: int = 0
    leased_ns: int = 0

    def wrap(self, consumer: Consumer) -> None:
        """Time `consumer`'s verification and ledger check from now on."""
        open_all = consumer._open_all
        check = consumer.ledger.check

        async def timed_open(*args: Any) -> Any:
            self.read_ns = time.time_ns()
            opened = await open_all(*args)
            self.verified_ns = time.time_ns()
            return opened

        async def timed_check(*args: Any, **kwargs: Any) -> Any:
            states = await check(*args, **kwargs)
            self.leased_ns = time.time_ns()
            return states

        consumer._open_all = timed_open  # type: ignore[method-assign]
        consumer.ledger.check = timed_check  # type: ignore[method-assign]


def sent_ns_of(delivery: Delivery) -> int:
    """The send time Kasmina's bench events carry, 0 for any other packet."""
    packet = pb.TelemetryPacket.FromString(delivery.envelope.payload)
    for event in packet.events:
        if "sent_ns" in event.attributes:
            return int(event.attributes["sent_ns"])
    return 0


@dataclass
class FastPathStages:
    """Stamps of the hub's emergency lane and Nissa, joined per CRITICAL event."""

    hub: ConsumerStamps = field(default_factory=ConsumerStamps)
    nissa: ConsumerStamps = field(default_factory=ConsumerStamps)
    at_hub: dict[int, dict[str, int]] = field(default_factory=dict)
    nissa_in_ns: int = 0
    events: list[dict[str, int]] = field(default_factory=list)

    def attach(self, hub_lane: Consumer, nissa: Consumer) -> None:
        self.hub.wrap(hub_lane)
        self.nissa.wrap(nissa)
        hub_handler, nissa_handler = hub_lane.handler, nissa.handler

        async def timed_hub(delivery: Delivery) -> None:
            entered = time.time_ns()
            await hub_handler(delivery)
            sent = sent_ns_of(delivery)
            if sent:
                self.at_hub[sent] = {
                    "read": self.hub.read_ns, "verified": self.hub.verified_ns,
                    "leased": self.hub.leased_ns, "in": entered, "out": time.time_ns(),
                }  # fmt: skip

        async def timed_nissa(delivery: Delivery) -> None:
            self.nissa_in_ns = time.time_ns()
            await nissa_handler(delivery)

        hub_lane.handler = timed_hub
        nissa.handler = timed_nissa

    def on_alert(self, sent_ns: int, alert_ns: int) -> None:
        """An alert for the event sent at `sent_ns` was raised (inside Nissa's handler)."""
        hub = self.at_hub.pop(sent_ns, None)
        if hub is None:
            return
        n = self.nissa
        self.events.append({
            "to_hub_read": hub["read"] - sent_ns,
            "hub_verify": hub["verified"] - hub["read"],
            "hub_lease": hub["leased"] - hub["verified"],
            "hub_forward": hub["out"] - hub["leased"],
            "to_nissa_read": n.read_ns - hub["out"],
            "nissa_verify": n.verified_ns - n.read_ns,
            "nissa_lease": n.leased_ns - n.verified_ns,
            "nissa_queue": self.nissa_in_ns - n.leased_ns,
            "nissa_ingest": alert_ns - self.nissa_in_ns,
            "total": alert_ns - sent_ns,
        })  # fmt: skip

    def summary(self) -> dict[str, Any]:
        """Per stage, ms: p50 and p99 over every event, and the stage's mean share of the
        slowest 5 % of events (where a p99 is made)."""
        if not self.events:
            return {}
        slow = sorted(self.events, key=lambda e: e["total"])[-max(len(self.events) // 20, 1) :]
        out: dict[str, Any] = {}
        for stage in (*STAGES, "total"):
            values = [e[stage] for e in self.events]
            out[stage] = {
                **percentiles(values, scale=1e-6, digits=3),
                "mean_in_slowest_5pct": round(sum(e[stage] for e in slow) / len(slow) / 1e6, 3),
            }
        return out


class LoopLag:
    """How late the loop wakes a task that sleeps `LOOP_SAMPLE_S`: the time a ready
    callback (a read's reply) waits behind the work in progress."""

    def __init__(self) -> None:
        self.lags_s: list[float] = []

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            before = time.perf_counter()
            await asyncio.sleep(LOOP_SAMPLE_S)
            self.lags_s.append(time.perf_counter() - before - LOOP_SAMPLE_S)

    def summary(self) -> dict[str, float]:
        if not self.lags_s:
            return {}
        return {
            **percentiles(self.lags_s, scale=1e3, digits=3),
            "max": round(max(self.lags_s) * 1e3, 3),
        }
