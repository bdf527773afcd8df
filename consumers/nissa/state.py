"""Everything Nissa knows, behind one lock: the asyncio consumer writes it, the HTTP
threads read it (metrics, health, alerts, the status page)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from consumers.nissa.board import BoardSettings, StatusBoard
from consumers.nissa.dead_letters import DEAD_LETTERS_ADDED, DeadLetterGrowth, Growth
from consumers.nissa.health import (
    ComponentStatus,
    HealthSettings,
    LagSample,
    Verdict,
    evaluate,
)
from consumers.nissa.learning import learning_view
from consumers.nissa.rejections import RejectionBook
from consumers.nissa.rules import (
    DEFAULT_RULES,
    AlertEngine,
    AlertRule,
    AlertSettings,
    AlertState,
    Clock,
)
from consumers.nissa.store import ExportSettings, MetricStore, prometheus_name
from leyline_pb import leyline_pb2 as pb
from leyline_vocab.schema import Labels
from leyline_vocab.telemetry import HUB_DUPLICATES, HUB_RECEIVED, HUB_SHED_PACKETS

HUB_COUNTERS = (HUB_RECEIVED, HUB_DUPLICATES, HUB_SHED_PACKETS)


@dataclass(frozen=True)
class StateSettings:
    export: ExportSettings = field(default_factory=ExportSettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    rules: tuple[AlertRule, ...] = DEFAULT_RULES
    health: HealthSettings = field(default_factory=HealthSettings)
    board: BoardSettings = field(default_factory=BoardSettings)


@dataclass
class _Source:
    last_seen_s: float
    last_packet_ns: int
    packets: int = 0
    health: str = ""
    health_summary: str = ""


def _labels(raw: Mapping[str, str]) -> Labels:
    return tuple(sorted(raw.items()))


def _is_critical(event: pb.ForwardedEvent) -> bool:
    return (
        event.event.level == pb.TELEMETRY_LEVEL_CRITICAL
        or event.priority == pb.MESSAGE_PRIORITY_CRITICAL
    )


def _summary(event: pb.TelemetryEvent) -> str:
    attrs = event.attributes
    for key in ("summary", "message", "reason", "detail"):
        if attrs.get(key):
            return attrs[key]
    return event.name


class NissaState:
    def __init__(self, settings: StateSettings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self.lock = threading.Lock()
        self.store = MetricStore(settings.export)
        self.alerts = AlertEngine(settings.rules, clock, settings.alerts)
        self.board = StatusBoard(settings.board)
        self.rejections = RejectionBook()
        self.dead_letters = DeadLetterGrowth(settings.alerts.dead_letter_window_s)
        self.sources: dict[str, _Source] = {}
        # exported from zero, so rate() works before the first shed or duplicate
        self.hub_counters: Counter[str] = Counter(dict.fromkeys(HUB_COUNTERS, 0))
        self.hub_last_seen_s: float | None = None
        self.lag: LagSample | None = None
        self.started_s = clock()
        self.aggregates = 0
        self.events = 0

    # ------------------------------------------------------------- writing

    def ingest(self, aggregate: pb.TelemetryAggregate) -> None:
        with self.lock:
            now = self.clock()
            self.aggregates += 1
            self.hub_last_seen_s = now
            for series in aggregate.series:
                labels = _labels(series.labels)
                self.store.ingest(series, labels, now)
                self.alerts.observe(series.name, labels, series)
                self.board.series(series, labels, now)
            for forwarded in aggregate.events:
                self.events += 1
                self.board.event(forwarded, now)
                self.rejections.observe(forwarded, now)
                if _is_critical(forwarded):
                    self.alerts.raise_event(
                        forwarded.event.name,
                        _labels(forwarded.labels),
                        _summary(forwarded.event),
                        dict(forwarded.event.attributes),
                    )
            for status in aggregate.sources:
                source = self.sources.get(status.source)
                if source is None:
                    source = self.sources[status.source] = _Source(now, status.last_seen_ns)
                source.last_seen_s = now
                source.last_packet_ns = max(source.last_packet_ns, status.last_seen_ns)
                source.packets += status.packets
                if status.HasField("health"):
                    source.health = pb.HealthStatus.Name(status.health.status)
                    source.health_summary = status.health.summary
            self.hub_counters.update(dict(aggregate.hub_counters))

    def tick(self) -> None:
        with self.lock:
            self.alerts.tick()
            self.store.expire(self.clock())

    def set_lag(self, sample: LagSample) -> None:
        with self.lock:
            self.lag = sample

    def set_dead_letters(self, added: Mapping[str, int]) -> None:
        """One sample of every dead-letter stream's all-time count: its growth over the
        window goes to the alert rules."""
        with self.lock:
            for stream, grew in self.dead_letters.observe(self.clock(), added).items():
                self.alerts.observe(DEAD_LETTERS_ADDED, (("stream", stream),), Growth(grew))

    # ------------------------------------------------------------- reading

    def health(self, components: Sequence[ComponentStatus]) -> tuple[Verdict, dict[str, object]]:
        with self.lock:
            now = self.clock()
            verdict = evaluate(
                now_s=now,
                started_s=self.started_s,
                lag=self.lag,
                hub_last_seen_s=self.hub_last_seen_s,
                sources_last_seen_s={k: s.last_seen_s for k, s in self.sources.items()},
                components=components,
                settings=self.settings.health,
                urgent_rejections=self.rejections.urgent_since(
                    now - self.settings.health.urgent_rejection_window_s
                ),
            )
            detail: dict[str, object] = {
                "status": "ok" if verdict.healthy else "unhealthy",
                "problems": list(verdict.problems),
                "time_s": now,
                "hub_last_seen_age_s": (
                    None if self.hub_last_seen_s is None else now - self.hub_last_seen_s
                ),
                "sources": {
                    name: {
                        "last_seen_age_s": now - s.last_seen_s,
                        "last_packet_s": s.last_packet_ns / 1e9,
                        "packets": s.packets,
                        "health": s.health,
                        "summary": s.health_summary,
                    }
                    for name, s in sorted(self.sources.items())
                },
                "bus_lag": self._lag_view(),
                "components": {c.name: {"healthy": c.healthy, **c.detail} for c in components},
            }
        return verdict, detail

    def _lag_view(self) -> dict[str, object]:
        if self.lag is None:
            return {}
        return {
            "taken_s": self.lag.taken_s,
            "error": self.lag.error,
            "streams": {s: dict(g) for s, g in sorted(self.lag.lag.items())},
        }

    def alerts_view(self) -> dict[str, object]:
        with self.lock:
            return {
                "time_s": self.clock(),
                "active": [a.view() for a in self.alerts.active()],
                "pending": [
                    a.view()
                    for a in self.alerts.active(include_pending=True)
                    if a.state is AlertState.PENDING
                ],
                "resolved": [a.view() for a in self.alerts.resolved],
            }

    def status_view(self, components: Sequence[ComponentStatus]) -> dict[str, object]:
        _, health = self.health(components)
        with self.lock:
            return {
                "time_s": self.clock(),
                "health": health,
                "alerts": [a.view() for a in self.alerts.active()],
                "runs": self.board.snapshot(),
                "learning": learning_view(self.store.gauge_values),
                "rejections": self.rejections.view(),
                "counters": {
                    "aggregates": self.aggregates,
                    "events": self.events,
                    **{f"hub_{k}": v for k, v in sorted(self.hub_counters.items())},
                },
            }


class NissaCollector(Collector):
    """The stored telemetry and Nissa's own counters, at scrape time."""

    def __init__(self, state: NissaState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        state = self.state
        with state.lock:
            yield from list(state.store.families())
            aggregates = CounterMetricFamily(
                "nissa_aggregates", "Aggregates received from the telemetry hub"
            )
            aggregates.add_metric([], state.aggregates)
            events = CounterMetricFamily("nissa_events", "Telemetry events received")
            events.add_metric([], state.events)
            hub = []
            for name, value in sorted(state.hub_counters.items()):
                family = CounterMetricFamily(
                    prometheus_name(f"telemetry_hub.{name}", ""),
                    f"Telemetry hub: {name.replace('_', ' ')}",
                )
                family.add_metric([], value)
                hub.append(family)
            dropped = CounterMetricFamily(
                "nissa_series_dropped",
                "Series not exported because their metric reached its label-set cap",
                labels=["metric"],
            )
            for name, value in sorted(state.store.series_dropped.items()):
                dropped.add_metric([name], value)
            metrics_dropped = CounterMetricFamily(
                "nissa_metrics_dropped", "Series not exported because the metric cap was reached"
            )
            metrics_dropped.add_metric([], state.store.metrics_dropped)
            alerts = GaugeMetricFamily(
                "nissa_alerts_firing", "Alerts firing now", labels=["alert", "severity"]
            )
            firing: Counter[tuple[str, str]] = Counter(
                (a.name, a.severity.value) for a in state.alerts.active()
            )
            for (name, severity), count in sorted(firing.items()):
                alerts.add_metric([name, severity], count)
            rejections = CounterMetricFamily(
                "nissa_rejections",
                "Entries, commands and policy updates a component refused, as reported",
                labels=["source", "kind", "reason", "stream"],
            )
            for key, count in sorted(state.rejections.counts.items(), key=repr):
                rejections.add_metric([key.source, key.kind, key.reason, key.stream], count)
            seen = GaugeMetricFamily(
                "nissa_source_last_seen_timestamp_seconds",
                "When Nissa last received telemetry of a source (Unix time)",
                labels=["source"],
            )
            for name, source in sorted(state.sources.items()):
                seen.add_metric([name], source.last_seen_s)
        yield from (aggregates, events, *hub, dropped, metrics_dropped, alerts, rejections, seen)
