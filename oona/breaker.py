"""A generic circuit breaker: CLOSED -> OPEN -> HALF_OPEN -> CLOSED.

Failures are counted only for what the breaker guards (for the bus: IO errors, never
a handler's exception). After `failure_threshold` consecutive failures it opens; after
`cooldown_ms` it lets at most `half_open_max_calls` trial calls through; one success
closes it, one failure re-opens it, and a trial that ends in neither (an exception the
breaker does not guard, a cancellation) gives its slot back with `release`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerSettings:
    failure_threshold: int = 5
    cooldown_ms: float = 1_000.0
    half_open_max_calls: int = 1


Transition = Callable[[str, BreakerState, BreakerState], None]


class CircuitBreaker:
    """Thread-safe breaker; `on_transition(name, old, new)` observes every change."""

    def __init__(
        self,
        name: str,
        settings: BreakerSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_transition: Transition | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self._clock = clock
        self._on_transition = on_transition
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trials_in_flight = 0
        self._listeners: list[Transition] = []

    def subscribe(self, listener: Transition) -> None:
        """Observe every transition as well, after ``on_transition``.

        Listeners run under the breaker's lock, in the transition's order: they must
        return quickly and must not call back into this breaker.
        """
        with self._lock:
            self._listeners.append(listener)

    @property
    def state(self) -> BreakerState:
        with self._lock:
            self._maybe_half_open()
            return self._state

    def allow(self) -> bool:
        """Whether a call may go ahead now (reserves a trial slot when half-open)."""
        with self._lock:
            self._maybe_half_open()
            if self._state is BreakerState.CLOSED:
                return True
            if (
                self._state is BreakerState.HALF_OPEN
                and self._trials_in_flight < self.settings.half_open_max_calls
            ):
                self._trials_in_flight += 1
                return True
            return False

    def record_success(self) -> None:
        if self._state is BreakerState.CLOSED and self._failures == 0:
            # Nothing to reset: the common case, on the step path, without the lock. A
            # failure recorded meanwhile is ordered after this success, as it would be
            # had this call taken the lock first.
            return
        with self._lock:
            self._failures = 0
            if self._state is BreakerState.HALF_OPEN:
                self._trials_in_flight = 0
                self._move(BreakerState.CLOSED)

    def release(self) -> None:
        """End a trial that proved nothing either way: its slot is free again (else a
        half-open breaker whose trial raised something else would refuse every call
        for good)."""
        with self._lock:
            if self._state is BreakerState.HALF_OPEN and self._trials_in_flight > 0:
                self._trials_in_flight -= 1

    def record_failure(self) -> None:
        with self._lock:
            if self._state is BreakerState.HALF_OPEN:
                self._trials_in_flight = 0
                self._open()
                return
            self._failures += 1
            if self._state is BreakerState.CLOSED and (
                self._failures >= self.settings.failure_threshold
            ):
                self._open()

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._move(BreakerState.OPEN)

    def _maybe_half_open(self) -> None:
        if self._state is BreakerState.OPEN and (
            (self._clock() - self._opened_at) * 1000.0 >= self.settings.cooldown_ms
        ):
            self._trials_in_flight = 0
            self._move(BreakerState.HALF_OPEN)

    def _move(self, new: BreakerState) -> None:
        old, self._state = self._state, new
        if old is new:
            return
        if self._on_transition is not None:
            self._on_transition(self.name, old, new)
        for listener in self._listeners:
            listener(self.name, old, new)
