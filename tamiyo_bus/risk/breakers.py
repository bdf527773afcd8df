"""The named breakers around Tamiyo's dependencies, built from the one generic breaker.

Inference, Urza lookups, bus IO, policy updates and learning steps each get an
``oona.breaker.CircuitBreaker`` (CLOSED -> OPEN -> HALF_OPEN -> CLOSED, failure
threshold, cool-down, bounded half-open trials). Every transition is exported three
ways: a ``risk_breaker_state{breaker}`` gauge (0 closed, 1 half-open, 2 open) and a
``risk_breaker_transitions{breaker,previous,to}`` counter, an event with its priority
(``breaker_opened`` of the inference breaker is CRITICAL), and a call to every
subscriber (conservative mode enters when any breaker opens).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from leyline_vocab.events import BreakerName, EventKind, event
from leyline_vocab.telemetry import (
    BREAKER_STATE_VALUE,
    METRIC_BREAKER_STATE,
    METRIC_BREAKER_TRANSITIONS,
)
from oona.breaker import BreakerSettings, BreakerState, CircuitBreaker
from oona.events import EventSink

_EVENT: dict[BreakerState, EventKind] = {
    BreakerState.OPEN: EventKind.BREAKER_OPENED,
    BreakerState.HALF_OPEN: EventKind.BREAKER_HALF_OPEN,
    BreakerState.CLOSED: EventKind.BREAKER_CLOSED,
}


class MetricsSink(Protocol):
    """Where breaker metrics go (``oona.metrics.BusMetrics`` is one)."""

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None: ...

    def set_gauge(self, name: str, value: float, **labels: str) -> None: ...


BreakerListener = Callable[[BreakerName, BreakerState, BreakerState], None]


@dataclass(frozen=True, slots=True)
class BreakerBankSettings:
    """Per breaker: failures in a row that open it, cool-down, half-open trial calls.

    Inference opens after three missed deadlines in a row; policy updates and learning
    steps are rare and costly, so they cool down for longer.
    """

    inference: BreakerSettings = field(default_factory=lambda: BreakerSettings(3, 5_000.0, 1))
    urza: BreakerSettings = field(default_factory=lambda: BreakerSettings(5, 10_000.0, 1))
    bus_io: BreakerSettings = field(default_factory=lambda: BreakerSettings(5, 1_000.0, 1))
    policy_update: BreakerSettings = field(default_factory=lambda: BreakerSettings(3, 60_000.0, 1))
    learning: BreakerSettings = field(default_factory=lambda: BreakerSettings(3, 30_000.0, 1))


class RiskBreakers:
    """The five named breakers, their metrics and events, and transition subscribers."""

    def __init__(
        self,
        settings: BreakerBankSettings,
        sink: EventSink,
        *,
        clock: Callable[[], float] = time.monotonic,
        metrics: MetricsSink | None = None,
    ) -> None:
        self._sink = sink
        self._metrics = metrics
        self._listeners: list[BreakerListener] = []
        self._breakers: dict[BreakerName, CircuitBreaker] = {}
        self._not_closed: set[BreakerName] = set()
        for name in BreakerName:
            self._install(name, CircuitBreaker(name, getattr(settings, name.value), clock=clock))

    def __getitem__(self, name: BreakerName) -> CircuitBreaker:
        return self._breakers[name]

    def adopt(self, name: BreakerName, breaker: CircuitBreaker) -> None:
        """Use an existing breaker under ``name`` (the bus connection's IO breaker), so one
        breaker guards the dependency and the risk engine still sees its transitions."""
        self._install(name, breaker)

    def subscribe(self, listener: BreakerListener) -> None:
        """Call ``listener(name, old, new)`` on every transition (under the breaker's lock)."""
        self._listeners.append(listener)

    def all_closed(self) -> bool:
        """Whether every breaker is closed. O(1): kept by the transitions, because a breaker
        leaves CLOSED and comes back to it only through a transition."""
        return not self._not_closed

    def none_open(self) -> bool:
        """Whether no breaker is OPEN: each is closed, or has cooled down and lets its next
        call through as a trial.

        Conservative mode counts a step as healthy on this, not on ``all_closed``: a
        breaker whose calls conservative mode itself stops (learning) or that sees a call
        only now and then (policy updates) would otherwise never get its trial, and the
        mode would never end. A failed trial re-opens the breaker, which enters the mode
        again. Reading ``state`` moves a cooled-down breaker to HALF_OPEN; only breakers
        not closed are read, so this is O(1) while all are closed.
        """
        if not self._not_closed:
            return True
        return all(
            self._breakers[name].state is not BreakerState.OPEN for name in tuple(self._not_closed)
        )

    def states(self) -> dict[BreakerName, BreakerState]:
        return {name: b.state for name, b in self._breakers.items()}

    def _install(self, name: BreakerName, breaker: CircuitBreaker) -> None:
        self._breakers[name] = breaker
        breaker.subscribe(lambda _, old, new: self._on_transition(name, old, new))
        state = breaker.state
        if state is BreakerState.CLOSED:
            self._not_closed.discard(name)
        else:
            self._not_closed.add(name)
        if self._metrics is not None:
            self._metrics.set_gauge(METRIC_BREAKER_STATE, BREAKER_STATE_VALUE[state], breaker=name)

    def _on_transition(self, name: BreakerName, old: BreakerState, new: BreakerState) -> None:
        if new is BreakerState.CLOSED:
            self._not_closed.discard(name)
        else:
            self._not_closed.add(name)
        if self._metrics is not None:
            self._metrics.inc(
                METRIC_BREAKER_TRANSITIONS, breaker=name, previous=old.value, to=new.value
            )
            self._metrics.set_gauge(METRIC_BREAKER_STATE, BREAKER_STATE_VALUE[new], breaker=name)
        self._sink.emit(event(_EVENT[new], name.value, previous=old.value, to=new.value))
        for listener in self._listeners:
            listener(name, old, new)
