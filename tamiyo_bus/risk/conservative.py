"""Conservative mode: a sticky safe state with hysteresis.

Entered at once on a breaker opening or a step at ``enter_category`` (RED) or worse, or
when ``enter_high_risk_steps`` (K) of the last ``enter_window_steps`` decisions were at
``high_risk_category`` (ORANGE) or worse. Left only when both hold: ``cooldown_s`` has
passed since the last trigger (a trigger while on restarts the cool-down) **and** the
last ``exit_healthy_steps`` (N) decisions were healthy (category at most
``healthy_max_category`` with no breaker open). Any unhealthy decision resets that
streak, so an alternating signal keeps the mode on instead of flapping.

One call changes the mode at most once: the call that enters returns at once, and the
decision that enters is never counted as healthy, so no call enters and leaves.

While on: no germination, learning paused, IMPALA publishing disabled, only safe
commands (gating.Restriction.SAFE_ONLY).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from tamiyo_bus.risk.engine import Category

REPEATED_HIGH_RISK = "repeated_high_risk"


class ModeChange(StrEnum):
    ENTERED = "entered"
    EXITED = "exited"


@dataclass(frozen=True, slots=True)
class ConservativeSettings:
    enter_category: Category = Category.RED
    high_risk_category: Category = Category.ORANGE
    enter_high_risk_steps: int = 3
    enter_window_steps: int = 10
    cooldown_s: float = 30.0
    exit_healthy_steps: int = 20
    healthy_max_category: Category = Category.YELLOW

    def __post_init__(self) -> None:
        if not 1 <= self.enter_high_risk_steps <= self.enter_window_steps:
            raise ValueError("need 1 <= enter_high_risk_steps <= enter_window_steps")
        if self.exit_healthy_steps < 1 or self.cooldown_s < 0:
            raise ValueError("need exit_healthy_steps >= 1 and cooldown_s >= 0")
        if self.healthy_max_category >= self.high_risk_category:
            raise ValueError("healthy_max_category must lie below high_risk_category")


@dataclass(frozen=True, slots=True)
class Transition:
    change: ModeChange
    cause: str  # reason code that entered, or the one that had entered (on exit)
    healthy_steps: int
    on_for_s: float


class ConservativeMode:
    """Thread-safe: decisions come from the step path, breaker openings from anywhere."""

    def __init__(
        self, settings: ConservativeSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._active = False
        self._cause = ""
        self._entered_at = 0.0
        self._last_trigger_at = 0.0
        self._healthy_streak = 0
        self._recent_high: deque[bool] = deque(maxlen=settings.enter_window_steps)
        self._recent_high_count = 0

    @property
    def active(self) -> bool:
        return self._active

    @property
    def cause(self) -> str:
        """The reason code that entered the mode ("" when off)."""
        return self._cause

    @property
    def germination_allowed(self) -> bool:
        return not self._active

    @property
    def learning_paused(self) -> bool:
        return self._active

    @property
    def impala_publishing_enabled(self) -> bool:
        return not self._active

    def trigger(self, cause: str) -> Transition | None:
        """A breaker opened (or another external trigger): enter, or restart the cool-down."""
        with self._lock:
            if self._active:
                self._retrigger()
                return None
            return self._enter(cause)

    def observe(self, category: Category, reason: str, breakers_healthy: bool) -> Transition | None:
        """Account one gated decision; returns the mode change it caused, if any.

        ``breakers_healthy``: no breaker is open (a cooled-down one awaiting its trial
        call counts as healthy, see ``RiskBreakers.none_open``)."""
        s = self.settings
        high = category >= s.high_risk_category
        with self._lock:
            if not self._active:
                return self._observe_off(category, reason, high)
            if high or not breakers_healthy or category > s.healthy_max_category:
                if high:
                    self._retrigger()
                else:
                    self._healthy_streak = 0
                return None
            self._healthy_streak += 1
            cooled = self._clock() - self._last_trigger_at >= s.cooldown_s
            if cooled and self._healthy_streak >= s.exit_healthy_steps:
                return self._exit()
            return None

    def _observe_off(self, category: Category, reason: str, high: bool) -> Transition | None:
        if category >= self.settings.enter_category:
            return self._enter(reason)
        if len(self._recent_high) == self._recent_high.maxlen and self._recent_high[0]:
            self._recent_high_count -= 1
        self._recent_high.append(high)
        self._recent_high_count += high
        if self._recent_high_count >= self.settings.enter_high_risk_steps:
            return self._enter(REPEATED_HIGH_RISK)
        return None

    def _enter(self, cause: str) -> Transition:
        now = self._clock()
        self._active = True
        self._cause = cause
        self._entered_at = self._last_trigger_at = now
        self._healthy_streak = 0
        self._recent_high.clear()
        self._recent_high_count = 0
        return Transition(ModeChange.ENTERED, cause, 0, 0.0)

    def _retrigger(self) -> None:
        self._last_trigger_at = self._clock()
        self._healthy_streak = 0

    def _exit(self) -> Transition:
        on_for_s = self._clock() - self._entered_at
        transition = Transition(ModeChange.EXITED, self._cause, self._healthy_streak, on_for_s)
        self._active = False
        self._cause = ""
        self._healthy_streak = 0
        return transition
