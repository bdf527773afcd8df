"""Aggregating normalised telemetry over one short time window (pure, no IO).

Per series (normalised name + labels) a window keeps count, sum, min, max and last;
histograms (latencies) also keep per-bucket counts, so a latency is exported as a
distribution and not as its last sample. Events are kept one by one (they are not
summable), per-source last-seen times and health are kept for Nissa's health checks.
Every bound that is hit is counted in the window's counters, which travel to Nissa.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.schema import Labels, MetricSpec, NormalisedPoint
from leyline_vocab.telemetry import (
    HUB_NON_FINITE,
    HUB_SHED_EVENTS,
    HUB_SHED_SERIES,
)
from oona.ids import new_message_id
from oona.metrics import LATENCY_BUCKETS_S


class SeriesStats:
    """Running statistics of one series within a window."""

    __slots__ = ("buckets", "count", "last", "last_ns", "max", "min", "sum")

    def __init__(self, histogram_bounds: int | None) -> None:
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.last = 0.0
        self.last_ns = 0
        self.buckets: list[int] | None = (
            [0] * (histogram_bounds + 1) if histogram_bounds is not None else None
        )

    def add(self, value: float, timestamp_ns: int, bounds: Sequence[float]) -> None:
        self.count += 1
        self.sum += value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        if timestamp_ns >= self.last_ns:
            self.last = value
            self.last_ns = timestamp_ns
        if self.buckets is not None:
            self.buckets[bisect.bisect_left(bounds, value)] += 1


@dataclass
class _Series:
    spec: MetricSpec
    labels: Labels
    source: str
    stats: SeriesStats


@dataclass
class _Source:
    last_seen_ns: int = 0
    packets: int = 0
    health: pb.HealthReport | None = None
    health_ns: int = 0


@dataclass
class Window:
    """One window of aggregated NORMAL (and HIGH) telemetry."""

    start_ns: int
    max_series: int = 50_000
    max_events: int = 2_000
    bounds: tuple[float, ...] = LATENCY_BUCKETS_S
    series: dict[tuple[str, Labels], _Series] = field(default_factory=dict)
    events: list[pb.ForwardedEvent] = field(default_factory=list)
    sources: dict[str, _Source] = field(default_factory=dict)
    counters: Counter[str] = field(default_factory=Counter)

    def add_point(
        self, point: NormalisedPoint, value: float, timestamp_ns: int, source: str
    ) -> bool:
        """Add one point (already scaled to its base unit); False when it was shed
        because the window holds `max_series` series already."""
        if not math.isfinite(value):
            self.counters[HUB_NON_FINITE] += 1
            return False
        entry = self.series.get(point.key)
        if entry is None:
            if len(self.series) >= self.max_series:
                self.counters[HUB_SHED_SERIES] += 1
                return False
            spec = point.spec
            histogram = len(self.bounds) if spec.kind == pb.METRIC_KIND_HISTOGRAM else None
            entry = _Series(spec, point.labels, source, SeriesStats(histogram))
            self.series[point.key] = entry
        entry.stats.add(value, timestamp_ns, self.bounds)
        return True

    def add_event(self, event: pb.ForwardedEvent, *, urgent: bool = False) -> bool:
        """Keep one event for forwarding; False when it was shed over `max_events`
        (never for an `urgent` one: HIGH and CRITICAL events are never shed)."""
        if len(self.events) >= self.max_events and not urgent:
            self.counters[HUB_SHED_EVENTS] += 1
            return False
        self.events.append(event)
        return True

    def saw_source(
        self, source: str, timestamp_ns: int, health: pb.HealthReport | None = None
    ) -> None:
        entry = self.sources.get(source)
        if entry is None:
            entry = self.sources[source] = _Source()
        entry.packets += 1
        entry.last_seen_ns = max(entry.last_seen_ns, timestamp_ns)
        if health is not None and timestamp_ns >= entry.health_ns:
            entry.health = health
            entry.health_ns = timestamp_ns

    def to_aggregates(
        self,
        *,
        hub: str,
        end_ns: int,
        priority: pb.MessagePriority.ValueType = pb.MESSAGE_PRIORITY_NORMAL,
        series_per_message: int = 512,
        events_per_message: int = 512,
    ) -> list[pb.TelemetryAggregate]:
        """The window as one or more aggregates (split so no message grows unbounded);
        sources and counters ride on the first."""
        series = list(self._series_messages())
        aggregates: list[pb.TelemetryAggregate] = []
        chunks = max(
            1,
            math.ceil(len(series) / series_per_message),
            math.ceil(len(self.events) / events_per_message),
        )
        for index in range(chunks):
            aggregate = pb.TelemetryAggregate(
                aggregate_id=new_message_id(),
                hub=hub,
                window_start_ns=self.start_ns,
                window_end_ns=end_ns,
                priority=priority,
            )
            lo_s = index * series_per_message
            aggregate.series.extend(series[lo_s : lo_s + series_per_message])
            lo_e = index * events_per_message
            aggregate.events.extend(self.events[lo_e : lo_e + events_per_message])
            if index == 0:
                for name, src in sorted(self.sources.items()):
                    status = aggregate.sources.add(
                        source=name, last_seen_ns=src.last_seen_ns, packets=src.packets,
                        health_timestamp_ns=src.health_ns,
                    )  # fmt: skip
                    if src.health is not None:
                        status.health.CopyFrom(src.health)
                aggregate.hub_counters.update(self.counters)
            aggregates.append(aggregate)
        return aggregates

    def _series_messages(self) -> Iterator[pb.AggregatedSeries]:
        for entry in self.series.values():
            stats = entry.stats
            message = pb.AggregatedSeries(
                name=entry.spec.name,
                unit=entry.spec.unit,
                kind=entry.spec.kind,
                labels=dict(entry.labels),
                count=stats.count,
                sum=stats.sum,
                min=stats.min,
                max=stats.max,
                last=stats.last,
                last_timestamp_ns=stats.last_ns,
                source=entry.source,
            )
            if stats.buckets is not None:
                message.bucket_bounds.extend(self.bounds)
                message.bucket_counts.extend(stats.buckets)
            yield message
