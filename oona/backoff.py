"""The one retry backoff of the project: exponential, capped, with equal jitter.

Every wait before a retry (a reconnect, a consumer's redelivery, a field report's
republish, a supervised service's restart) is the base doubled per failure, capped,
then drawn from the upper half of that: retries spread out over time instead of
arriving together, and never wait less than half the nominal delay.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


def backoff_s(failures: int, *, base_s: float, max_s: float, jitter: float | None = None) -> float:
    """The wait after ``failures`` failures in a row (1: the first): ``base_s`` doubled
    per further failure, capped at ``max_s``, times a factor in [0.5, 1).

    ``jitter`` in [0, 1) picks that factor (drawn at random when None; tests pass it).
    """
    nominal = min(base_s * 2.0 ** max(failures - 1, 0), max_s)
    drawn = random.random() if jitter is None else jitter
    return nominal * (0.5 + drawn / 2)


@dataclass(slots=True)
class Backoff:
    """The failures of a loop that retries until it succeeds: ``next_s`` counts one more
    and gives its wait; ``reset`` after a success."""

    base_s: float
    max_s: float
    failures: int = field(default=0)

    def next_s(self) -> float:
        self.failures += 1
        return backoff_s(self.failures, base_s=self.base_s, max_s=self.max_s)

    def reset(self) -> None:
        self.failures = 0
