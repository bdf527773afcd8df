"""What a data-parallel learner needs of the LearningGuard: ``refusal`` says what a step
would meet without reserving the half-open breaker's trial, so the ranks can agree
before any of them steps."""

from __future__ import annotations

from oona.breaker import BreakerSettings, BreakerState, CircuitBreaker
from tamiyo_bus.learning.guard import LearningGuard, LearningGuardSettings, LearningOutcome
from tamiyo_bus.risk import BreakerName

from .test_guard import MAX_GRAD_NORM


def test_refusal_names_the_refusal_and_reserves_no_trial() -> None:
    now = [0.0]
    settings = BreakerSettings(failure_threshold=1, cooldown_ms=1_000.0, half_open_max_calls=1)
    breaker = CircuitBreaker(BreakerName.LEARNING, settings, clock=lambda: now[0])
    paused = [True]
    guard = LearningGuard(breaker, lambda: paused[0], LearningGuardSettings(MAX_GRAD_NORM))
    assert guard.refusal() is LearningOutcome.PAUSED
    paused[0] = False
    assert guard.refusal() is None
    breaker.record_failure()
    assert guard.refusal() is LearningOutcome.BREAKER_OPEN
    now[0] = 2.0  # past the cool-down: half-open, its one trial still free
    assert guard.refusal() is None and guard.refusal() is None
    assert breaker.state is BreakerState.HALF_OPEN and breaker.allow()
