"""The generic circuit breaker (pure: driven by an injected clock)."""

from __future__ import annotations

from oona.breaker import BreakerSettings, BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(threshold: int = 3, cooldown_ms: float = 100.0, trials: int = 1):
    clock = Clock()
    transitions: list[tuple[BreakerState, BreakerState]] = []
    breaker = CircuitBreaker(
        "io",
        BreakerSettings(threshold, cooldown_ms, trials),
        clock=clock,
        on_transition=lambda name, old, new: transitions.append((old, new)),
    )
    return breaker, clock, transitions


def test_opens_after_consecutive_failures_and_refuses_calls() -> None:
    breaker, _, transitions = make(threshold=3)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    breaker.record_success()  # a success resets the streak
    for _ in range(3):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()
    assert transitions == [(BreakerState.CLOSED, BreakerState.OPEN)]


def test_half_open_success_closes_and_failure_reopens() -> None:
    breaker, clock, transitions = make(threshold=1, cooldown_ms=100.0, trials=1)
    breaker.record_failure()
    clock.now = 0.05
    assert not breaker.allow()
    clock.now = 0.1
    assert breaker.allow()  # the one trial call
    assert not breaker.allow()  # no second trial while the first is in flight
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    clock.now = 0.25
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert [new for _, new in transitions] == [
        BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.OPEN,
        BreakerState.HALF_OPEN, BreakerState.CLOSED,
    ]  # fmt: skip
