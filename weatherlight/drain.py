"""Weatherlight's drain of the `emergency` and `normal` streams (group ``weatherlight``).

One Oona consumer reads both, emergency first, with Oona's starvation guard
(`emergency_burst_limit`), so a flood of urgent messages cannot stall routine ones
forever and routine ones never delay an urgent one by more than a read. Each message
is counted by stream and type and an urgent one is logged: nothing is silently
discarded. Telemetry on the emergency
stream is also read by the telemetry hub in its own group, which is how CRITICAL
telemetry reaches Nissa; Weatherlight's copy only counts it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from leyline_pb import leyline_pb2 as pb
from oona.bus import Bus
from oona.consumer import Consumer, Delivery, Subscription
from oona.streams import Stream, is_urgent
from weatherlight.supervisor import BusComponent, ServiceContext, ServiceRun, bus_service

log = logging.getLogger(__name__)

WEATHERLIGHT_GROUP = "weatherlight"


@dataclass
class DrainStats:
    """Counts per (stream, message type); outlives restarts of the drain so the
    counters stay monotonic."""

    messages: Counter[tuple[str, str]] = field(default_factory=Counter)


class Drain:
    def __init__(self, stats: DrainStats) -> None:
        self.stats = stats

    async def handle(self, delivery: Delivery) -> None:
        envelope = delivery.envelope
        type_name = pb.MessageType.Name(envelope.message_type)
        self.stats.messages[(delivery.stream, type_name)] += 1
        if is_urgent(envelope.priority):
            log.warning("urgent %s from %s (%s)", type_name, envelope.source, envelope.message_id)


def drain_subscription(consumer: str) -> Subscription:
    """Every message type on the emergency stream, then the normal one."""
    return Subscription(
        group=WEATHERLIGHT_GROUP,
        consumer=consumer,
        streams=(Stream.EMERGENCY, Stream.NORMAL),
        accepted_types=frozenset(pb.MessageType.values()),
    )


def drain_service(stats: DrainStats) -> ServiceRun:
    """The registry entry's run function."""
    drain = Drain(stats)

    def build(bus: Bus, context: ServiceContext) -> AbstractAsyncContextManager[BusComponent]:
        subscription = drain_subscription(context.consumer_name)
        return nullcontext(
            Consumer(bus, subscription, drain.handle, context.keyring, events=context.events)
        )

    return bus_service(build)


class DrainCollector(Collector):
    def __init__(self, stats: DrainStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "weatherlight_messages",
            "Messages Weatherlight drained, by stream and type",
            labels=["stream", "type"],
        )
        for (stream, type_name), count in sorted(self.stats.messages.copy().items()):
            family.add_metric([stream, type_name], count)
        yield family
