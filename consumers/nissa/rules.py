"""Alert rules evaluated per series over time (pure; the clock is injected).

A rule names a metric (normalised, ``tamiyo.decision_latency``), a statistic of each
window's aggregate (last, max, mean...), a comparison and a duration D (`for_s`).
State is kept per (rule, label set): a series whose samples satisfy the condition is
*pending* from its first such sample and *firing* once the condition has held for D
seconds. Only a sample of that same series that breaks the condition ends it; samples
of other metrics or other series (unrelated packets) neither reset nor clear it. A
series that stops reporting for `stale_after_s` is treated as gone: a pending alert is
dropped and a firing one resolves ("no data").

CRITICAL events raise an alert at once (no duration). Such an alert stays firing while
the event recurs and resolves `event_hold_s` after its last occurrence.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from consumers.nissa.dead_letters import DEAD_LETTERS_ADDED
from leyline_vocab.roles import SOURCE_SIMIC
from leyline_vocab.schema import Labels, metric_spec
from leyline_vocab.telemetry import (
    BREAKER_OPEN_LEVEL,
    METRIC_BREAKER_STATE,
    METRIC_CONSERVATIVE,
    METRIC_DECISION_LATENCY,
    METRIC_LEARNER_REJECTED_IN_ROW,
    METRIC_RISK,
    SOURCE_TAMIYO,
)

Clock = Callable[[], float]


class Op(StrEnum):
    GT = ">"
    GE = ">="
    LT = "<"
    LE = "<="


class Stat(StrEnum):
    LAST = "last"
    MAX = "max"
    MIN = "min"
    MEAN = "mean"
    SUM = "sum"
    COUNT = "count"


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class AlertState(StrEnum):
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


class Sample(Protocol):
    """One window's aggregate of a series (pb.AggregatedSeries satisfies it)."""

    @property
    def count(self) -> int: ...
    @property
    def sum(self) -> float: ...
    @property
    def min(self) -> float: ...
    @property
    def max(self) -> float: ...
    @property
    def last(self) -> float: ...


def statistic(sample: Sample, stat: Stat) -> float:
    if stat is Stat.LAST:
        return sample.last
    if stat is Stat.MAX:
        return sample.max
    if stat is Stat.MIN:
        return sample.min
    if stat is Stat.SUM:
        return sample.sum
    if stat is Stat.COUNT:
        return float(sample.count)
    return sample.sum / sample.count if sample.count else 0.0


@dataclass(frozen=True)
class AlertRule:
    name: str
    metric: str
    op: Op
    threshold: float
    for_s: float = 0.0
    stat: Stat = Stat.LAST
    severity: Severity = Severity.WARNING
    match: tuple[tuple[str, str], ...] = ()  # only series carrying these labels
    summary: str = ""

    def holds(self, value: float) -> bool:
        if self.op is Op.GT:
            return value > self.threshold
        if self.op is Op.GE:
            return value >= self.threshold
        if self.op is Op.LT:
            return value < self.threshold
        return value <= self.threshold

    def applies_to(self, labels: Labels) -> bool:
        return all(pair in labels for pair in self.match)


@dataclass
class Alert:
    """One alert instance: a rule on one series, or one kind of CRITICAL event."""

    name: str
    severity: Severity
    labels: Labels
    summary: str
    origin: str  # "rule" or "event"
    state: AlertState
    started_s: float
    last_seen_s: float
    firing_s: float | None = None
    resolved_s: float | None = None
    value: float | None = None
    occurrences: int = 1
    attributes: dict[str, str] = field(default_factory=dict)

    def view(self) -> dict[str, object]:
        """Plain data for /alerts and the status page."""
        return {
            "name": self.name,
            "severity": self.severity.value,
            "state": self.state.value,
            "labels": dict(self.labels),
            "summary": self.summary,
            "origin": self.origin,
            "started_s": self.started_s,
            "firing_s": self.firing_s,
            "resolved_s": self.resolved_s,
            "last_seen_s": self.last_seen_s,
            "value": self.value,
            "occurrences": self.occurrences,
            "attributes": self.attributes,
        }


Listener = Callable[[Alert], None]


@dataclass(frozen=True)
class AlertSettings:
    stale_after_s: float = 300.0
    event_hold_s: float = 300.0
    resolved_history: int = 100
    dead_letter_window_s: float = 60.0


class AlertEngine:
    """Not thread-safe on its own: NissaState serialises access."""

    def __init__(
        self,
        rules: Sequence[AlertRule],
        clock: Clock,
        settings: AlertSettings | None = None,
    ) -> None:
        self.clock = clock
        self.settings = settings or AlertSettings()
        self.rules = tuple(rules)
        self._by_metric: dict[str, list[AlertRule]] = {}
        for rule in self.rules:
            self._by_metric.setdefault(rule.metric, []).append(rule)
        self._rule_alerts: dict[tuple[str, Labels], tuple[AlertRule, Alert]] = {}
        self._event_alerts: dict[tuple[str, Labels], Alert] = {}
        self.resolved: deque[Alert] = deque(maxlen=self.settings.resolved_history)
        self.listeners: list[Listener] = []

    def observe(self, metric: str, labels: Labels, sample: Sample) -> None:
        """One window's aggregate of the series (`metric`, `labels`)."""
        rules = self._by_metric.get(metric)
        if not rules:
            return
        now = self.clock()
        for rule in rules:
            if not rule.applies_to(labels):
                continue
            value = statistic(sample, rule.stat)
            key = (rule.name, labels)
            found = self._rule_alerts.get(key)
            if not rule.holds(value):
                if found is not None:
                    self._end(key, found[1], now)
                continue
            if found is None:
                alert = Alert(
                    name=rule.name, severity=rule.severity, labels=labels,
                    summary=rule.summary, origin="rule", state=AlertState.PENDING,
                    started_s=now, last_seen_s=now,
                )  # fmt: skip
                self._rule_alerts[key] = (rule, alert)
            else:
                alert = found[1]
            alert.value = value
            alert.last_seen_s = now
            self._maybe_fire(rule, alert, now)

    def raise_event(
        self, name: str, labels: Labels, summary: str, attributes: Mapping[str, str]
    ) -> Alert:
        """A CRITICAL event: firing at once, or one more occurrence of a firing one."""
        now = self.clock()
        key = (name, labels)
        alert = self._event_alerts.get(key)
        if alert is None:
            alert = Alert(
                name=name, severity=Severity.CRITICAL, labels=labels, summary=summary,
                origin="event", state=AlertState.FIRING, started_s=now, last_seen_s=now,
                firing_s=now, attributes=dict(attributes),
            )  # fmt: skip
            self._event_alerts[key] = alert
            self._notify(alert)
            return alert
        alert.occurrences += 1
        alert.last_seen_s = now
        alert.summary = summary or alert.summary
        alert.attributes = dict(attributes)
        return alert

    def tick(self) -> None:
        """Time-driven transitions: pending -> firing once D has passed, staleness,
        and the end of event alerts' hold."""
        now = self.clock()
        for key, (rule, alert) in list(self._rule_alerts.items()):
            if now - alert.last_seen_s > self.settings.stale_after_s:
                self._end(key, alert, now)
            else:
                self._maybe_fire(rule, alert, now)
        for key, alert in list(self._event_alerts.items()):
            if now - alert.last_seen_s > self.settings.event_hold_s:
                del self._event_alerts[key]
                self._resolve(alert, now)

    def active(self, *, include_pending: bool = False) -> list[Alert]:
        """Firing alerts (and pending ones if asked), most severe and newest first."""
        alerts = [a for _, a in self._rule_alerts.values()] + list(self._event_alerts.values())
        chosen = [a for a in alerts if include_pending or a.state is AlertState.FIRING]
        order = {Severity.CRITICAL: 0, Severity.WARNING: 1, Severity.INFO: 2}
        return sorted(chosen, key=lambda a: (order[a.severity], -a.started_s))

    def _maybe_fire(self, rule: AlertRule, alert: Alert, now: float) -> None:
        if alert.state is AlertState.PENDING and now - alert.started_s >= rule.for_s:
            alert.state = AlertState.FIRING
            alert.firing_s = now
            self._notify(alert)

    def _end(self, key: tuple[str, Labels], alert: Alert, now: float) -> None:
        del self._rule_alerts[key]
        if alert.state is AlertState.FIRING:
            self._resolve(alert, now)

    def _resolve(self, alert: Alert, now: float) -> None:
        alert.state = AlertState.RESOLVED
        alert.resolved_s = now
        self.resolved.appendleft(alert)

    def _notify(self, alert: Alert) -> None:
        for listener in self.listeners:
            listener(alert)


def rule_from_mapping(raw: Mapping[str, object]) -> AlertRule:
    """One rule from plain data (a JSON object with AlertRule's field names)."""
    match = raw.get("match", {})
    if not isinstance(match, Mapping):
        raise ValueError(f"rule {raw.get('name')!r}: match must be an object")
    return AlertRule(
        name=str(raw["name"]),
        metric=str(raw["metric"]),
        op=Op(str(raw["op"])),
        threshold=float(str(raw["threshold"])),
        for_s=float(str(raw.get("for_s", 0.0))),
        stat=Stat(str(raw.get("stat", Stat.LAST.value))),
        severity=Severity(str(raw.get("severity", Severity.WARNING.value))),
        match=tuple(sorted((str(k), str(v)) for k, v in match.items())),
        summary=str(raw.get("summary", "")),
    )


def load_rules(path: Path) -> tuple[AlertRule, ...]:
    """Rules from a JSON file holding a list of rule objects."""
    data = json.loads(path.read_text())
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of rules")
    return tuple(rule_from_mapping(item) for item in data)


def _metric(source: str, name: str) -> str:
    """A metric's name after the hub's normalisation."""
    return metric_spec(source, name, "").name


DEFAULT_RULES: tuple[AlertRule, ...] = (
    AlertRule(
        name="decision_latency_high",
        metric=_metric(SOURCE_TAMIYO, METRIC_DECISION_LATENCY),
        op=Op.GT, threshold=0.005, for_s=30.0, stat=Stat.MEAN,
        summary="mean evaluate_step latency above its 5 ms budget for 30 s",
    ),
    AlertRule(
        name="risk_high",
        metric=_metric(SOURCE_TAMIYO, METRIC_RISK),
        op=Op.GE, threshold=0.8, for_s=30.0,
        summary="expected risk severity of the policy at or above 0.8 for 30 s",
    ),
    AlertRule(
        name="breaker_stuck_open",
        metric=_metric(SOURCE_TAMIYO, METRIC_BREAKER_STATE),
        op=Op.GE, threshold=BREAKER_OPEN_LEVEL, for_s=60.0,
        summary="a circuit breaker has been open for 60 s",
    ),
    AlertRule(
        name="dead_letters_growing",
        metric=DEAD_LETTERS_ADDED,
        op=Op.GT, threshold=0.0,
        summary="a dead-letter stream grew in the last minute: read its records "
        "(docs/operations.md)",
    ),
    AlertRule(
        name="conservative_mode_long",
        metric=_metric(SOURCE_TAMIYO, METRIC_CONSERVATIVE),
        op=Op.GE, threshold=1.0, for_s=300.0,
        summary="Tamiyo has been in conservative mode for 5 minutes",
    ),
    AlertRule(
        name="candidates_rejected_repeatedly",
        metric=_metric(SOURCE_SIMIC, METRIC_LEARNER_REJECTED_IN_ROW),
        op=Op.GE, threshold=3.0,
        summary="Simic's validation gate rejected 3 candidate policies in a row",
    ),
)  # fmt: skip
