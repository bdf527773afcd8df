"""Weatherlight's drain of the `emergency` and `normal` streams (group ``weatherlight``).

One Oona consumer reads both, emergency first, with Oona's starvation guard
(`emergency_burst_limit`), so a flood of urgent messages cannot stall routine ones
forever and routine ones never delay an urgent one by more than a read. Each message
is handed to the route registered for its type; a type without a route is counted
(and an urgent one logged), never silently discarded. Telemetry on the emergency
stream is also read by the telemetry hub in its own group, which is how CRITICAL
telemetry reaches Nissa; Weatherlight's copy only counts it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from leyline_pb import leyline_pb2 as pb
from oona.consumer import Consumer, Delivery, Handler, Subscription
from oona.streams import Stream, is_urgent
from weatherlight.supervisor import ServiceContext, ServiceRun

log = logging.getLogger(__name__)

WEATHERLIGHT_GROUP = "weatherlight"
Routes = Mapping[pb.MessageType.ValueType, Handler]


@dataclass
class DrainStats:
    """Counts per (stream, message type); outlives restarts of the drain so the
    counters stay monotonic."""

    messages: Counter[tuple[str, str]] = field(default_factory=Counter)


class Drain:
    def __init__(self, stats: DrainStats, routes: Routes) -> None:
        self.stats = stats
        self.routes = routes

    async def handle(self, delivery: Delivery) -> None:
        envelope = delivery.envelope
        type_name = pb.MessageType.Name(envelope.message_type)
        self.stats.messages[(delivery.stream, type_name)] += 1
        route = self.routes.get(envelope.message_type)
        if route is not None:
            await route(delivery)
        elif is_urgent(envelope.priority):
            log.warning(
                "urgent %s from %s (%s), no route registered",
                type_name, envelope.source, envelope.message_id,
            )  # fmt: skip


def drain_service(stats: DrainStats, routes: Routes | None = None) -> ServiceRun:
    """The registry entry's run function; `routes` maps a MessageType to its handler."""
    drain = Drain(stats, routes or {})

    async def run(context: ServiceContext) -> None:
        bus = context.connect()
        try:
            subscription = Subscription(
                group=WEATHERLIGHT_GROUP,
                consumer=context.consumer_name,
                streams=(Stream.EMERGENCY, Stream.NORMAL),
                accepted_types=frozenset(pb.MessageType.values()),
            )
            await Consumer(bus, subscription, drain.handle, context.keyring).run(context.stop)
        finally:
            await bus.close()

    return run


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
