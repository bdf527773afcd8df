"""RiskGate: the risk engine's judgement of one decision, in two halves.

``prepare`` scores the signals the packet gives while the policy decides;
``gate_prepared`` adds the decision's own (and the risk head's expected severity) and
returns the GateResult. In order: score every signal
(signals.py), categorise (engine.py), raise the events of signals that crossed their
alarm level, account the decision in conservative mode (conservative.py), restrict the
command (gating.py), export metrics. Breakers (breakers.py) are consulted for health
and put conservative mode on when one opens.

Every event goes to the EventSink as it happens; the events a call produced are also
returned in its GateResult. Cheap by construction: a few dozen float operations, breaker
health read from a set the transitions keep, and the command restricted in place, never
copied.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.events import BreakerName, EventKind, event
from leyline_vocab.telemetry import METRIC_CONSERVATIVE, METRIC_RISK_DECISIONS
from oona.breaker import BreakerState
from oona.events import EventSink
from tamiyo_bus.risk.adaptive import AdaptiveSettings, AdaptiveThresholds
from tamiyo_bus.risk.breakers import BreakerBankSettings, MetricsSink, RiskBreakers
from tamiyo_bus.risk.conservative import (
    ConservativeMode,
    ConservativeSettings,
    ModeChange,
    Transition,
)
from tamiyo_bus.risk.engine import (
    Assessment,
    Category,
    CategoryRule,
    Tally,
    Weights,
    conclude,
    tally,
)
from tamiyo_bus.risk.gating import (
    GatingSettings,
    Restriction,
    restrict,
    restriction,
)
from tamiyo_bus.risk.signals import (
    DECISION_SIGNALS,
    INDEX,
    SIGNALS,
    ScoreTable,
    Signal,
    Thresholds,
    score_all,
    score_into,
)
from tamiyo_bus.risk.tracker import TrackerSettings

CONSERVATIVE_REASON = "conservative_mode"

# Signals whose crossing of the alarm level is an event of its own.
ALARMS: tuple[tuple[Signal, EventKind], ...] = (
    (Signal.LOSS_DELTA, EventKind.LOSS_SPIKE),
    (Signal.ISOLATION_VIOLATIONS, EventKind.ISOLATION_VIOLATION),
    (Signal.HOOK_LATENCY, EventKind.HOOK_BUDGET_EXCEEDED),
    (Signal.TIMEOUTS, EventKind.TIMEOUT),
    (Signal.BLUEPRINT_QUARANTINE, EventKind.BLUEPRINT_QUARANTINED),
)
_ALARM_INDEX = tuple((INDEX[signal], kind) for signal, kind in ALARMS)
_MODE_EVENT = {
    ModeChange.ENTERED: EventKind.CONSERVATIVE_ENTERED,
    ModeChange.EXITED: EventKind.CONSERVATIVE_EXITED,
}


def breaker_reason(name: BreakerName) -> str:
    """The reason code of a decision (or mode change) a breaker caused."""
    return f"breaker.{name}"


@dataclass(frozen=True, slots=True)
class RiskSettings:
    thresholds: Thresholds = field(default_factory=Thresholds)
    weights: Weights = field(default_factory=Weights)
    rule: CategoryRule = field(default_factory=CategoryRule)
    gating: GatingSettings = field(default_factory=GatingSettings)
    conservative: ConservativeSettings = field(default_factory=ConservativeSettings)
    breakers: BreakerBankSettings = field(default_factory=BreakerBankSettings)
    adaptive: AdaptiveSettings | None = None  # None: thresholds stay as configured
    tracker: TrackerSettings = field(default_factory=TrackerSettings)
    # An alarm event fires when its signal's score reaches this, and re-arms only once
    # the score is back to 0, so a signal hovering near the level raises one event.
    alarm_score: float = 0.5


@dataclass(frozen=True, slots=True)
class PreparedScores:
    """What ``RiskGate.prepare`` made of the signals known before the decision."""

    signals: Mapping[Signal, float]
    scores: list[float]  # SIGNALS order, DECISION_SIGNALS at 0 (gate_prepared scores a copy)
    tally: Tally  # over ``scores``
    table: ScoreTable  # the thresholds they were scored with, used for the rest too


@dataclass(frozen=True, slots=True)
class GateResult:
    command: pb.AdaptationCommand  # the command to sign and issue: the proposal, restricted
    category: Category
    reason: str  # reason code of the decision: deciding signal, "conservative_mode" or "none"
    restriction: Restriction
    changed: bool  # whether the restriction changed the proposal
    conservative: bool  # conservative mode is on after this decision
    events: tuple[pb.TelemetryEvent, ...]
    assessment: Assessment


class RiskGate:
    """Risk engine, breakers and conservative mode behind one per-decision call.

    Called from the step path (one thread); breaker transitions may arrive from any
    thread and only touch conservative mode (locked) and the sink.
    """

    def __init__(
        self,
        settings: RiskSettings,
        sink: EventSink,
        *,
        clock: Callable[[], float] = time.monotonic,
        metrics: MetricsSink | None = None,
        breakers: RiskBreakers | None = None,
    ) -> None:
        self.settings = settings
        self._sink = sink
        self._metrics = metrics
        self.breakers = breakers or RiskBreakers(
            settings.breakers, sink, clock=clock, metrics=metrics
        )
        self.conservative = ConservativeMode(settings.conservative, clock=clock)
        self._table = ScoreTable.from_thresholds(settings.thresholds)
        self._weights = settings.weights.vector()
        self._adaptive = (
            AdaptiveThresholds(settings.thresholds, settings.adaptive)
            if settings.adaptive is not None
            else None
        )
        self._armed = [True] * len(ALARMS)
        self._category = Category.GREEN
        self._published_conservative: bool | None = None
        self.breakers.subscribe(self._on_breaker)
        self._publish_conservative(False)

    def prepare(self, signals: Mapping[Signal, float]) -> PreparedScores:
        """Score and tally the signals known before the decision (none of
        DECISION_SIGNALS): the step path calls this while the policy decides, so that
        after the decision only its own few signals are left to score."""
        if not DECISION_SIGNALS.isdisjoint(signals):
            raise ValueError("prepare() takes the signals known before the decision")
        table = self._table
        scores = score_all(signals, table)
        found = tally(enumerate(scores), self._weights, self.settings.rule.hot_score)
        return PreparedScores(signals, scores, found, table)

    def gate_prepared(
        self,
        proposed: pb.AdaptationCommand,
        prepared: PreparedScores,
        decision_signals: Mapping[Signal, float],
        policy_expected_severity: float | None,
    ) -> GateResult:
        """Gate one decision from its ``prepare``d scores plus ``decision_signals`` (of
        DECISION_SIGNALS) and the risk head's expected severity in [0, 1]
        (``PolicyOutput.expected_severity()``, None when the policy did not run). The
        proposal is annotated, and restricted if it must be, in place (see gating.py),
        and returned as the result's command."""
        values = dict(decision_signals)
        if policy_expected_severity is not None:
            values[Signal.POLICY_RISK] = policy_expected_severity
        scores = list(prepared.scores)
        decided = score_into(scores, values, prepared.table)
        if self._adaptive is not None:
            self._adaptive.observe(prepared.signals)
            self._adaptive.observe(decision_signals)
        rule = self.settings.rule
        found = conclude(
            tally(decided.items(), self._weights, rule.hot_score, prepared.tally), rule
        )
        events: list[pb.TelemetryEvent] = []
        self._alarms(scores, found, events)
        if found.category is not self._category:
            events.append(self._category_event(found))
            if found.category is Category.CRITICAL:
                events.append(
                    event(EventKind.EMERGENCY, signal=found.reason, score=_r(found.worst))
                )
            self._category = found.category
        change = self.conservative.observe(found.category, found.reason, self.breakers.none_open())
        if change is not None:
            events.append(_mode_event(change))
        conservative = self.conservative.active
        level = restriction(found.category, conservative)
        reason = found.reason
        if level is Restriction.SAFE_ONLY:
            reason = CONSERVATIVE_REASON
        changed = restrict(proposed, level, reason, self.settings.gating)
        annotations = proposed.annotations
        annotations["risk_category"] = found.category.name
        annotations["risk_signal"] = found.reason
        if changed and reason == CONSERVATIVE_REASON:
            annotations["risk_conservative_cause"] = self.conservative.cause
        for raised in events:
            self._sink.emit(raised)
        if self._metrics is not None:
            self._metrics.inc(METRIC_RISK_DECISIONS, category=found.category.name)
        self._publish_conservative(conservative)
        return GateResult(
            proposed,
            found.category,
            reason,
            level,
            changed,
            conservative,
            tuple(events),
            found,
        )

    def _publish_conservative(self, active: bool) -> None:
        """The conservative-mode gauge, sent when it changes (and once at start): an
        unchanged gauge costs a packet per decision and says nothing new."""
        if self._metrics is not None and active is not self._published_conservative:
            self._published_conservative = active
            self._metrics.set_gauge(METRIC_CONSERVATIVE, float(active))

    def new_epoch(self, epoch: int) -> bool:
        """Tell the gate the training epoch; with adaptive thresholds on, every N epochs
        they are recomputed. Returns whether the thresholds changed."""
        if self._adaptive is None:
            return False
        thresholds = self._adaptive.on_epoch(epoch)
        if thresholds is None:
            return False
        self._table = ScoreTable.from_thresholds(thresholds)
        return True

    @property
    def score_table(self) -> ScoreTable:
        """The thresholds in force (changed by adaptive recomputation)."""
        return self._table

    def _alarms(
        self, scores: list[float], found: Assessment, events: list[pb.TelemetryEvent]
    ) -> None:
        """Rising-edge events for ALARMS, re-armed once the signal is back at base."""
        level = self.settings.alarm_score
        for slot, (index, kind) in enumerate(_ALARM_INDEX):
            s = scores[index]
            if self._armed[slot] and s >= level:
                self._armed[slot] = False
                events.append(
                    event(
                        kind, signal=SIGNALS[index].value, score=_r(s), category=found.category.name
                    )
                )
            elif s == 0.0:
                self._armed[slot] = True

    def _category_event(self, found: Assessment) -> pb.TelemetryEvent:
        return event(
            EventKind.RISK_CATEGORY_CHANGED,
            previous=self._category.name,
            category=found.category.name,
            signal=found.reason,
            score=_r(found.worst),
            hot=found.hot,
        )

    def _on_breaker(self, name: BreakerName, old: BreakerState, new: BreakerState) -> None:
        if new is BreakerState.OPEN:
            change = self.conservative.trigger(breaker_reason(name))
            if change is not None:
                self._sink.emit(_mode_event(change))
                self._publish_conservative(True)


def _mode_event(change: Transition) -> pb.TelemetryEvent:
    return event(
        _MODE_EVENT[change.change],
        cause=change.cause,
        healthy_steps=change.healthy_steps,
        on_for_s=_r(change.on_for_s),
    )


def _r(x: float) -> float:
    return round(x, 4)
