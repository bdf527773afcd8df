"""Weighted signal scores -> one risk category and the signal that decided it.

Pure. Each signal's 0..1 score is multiplied by its weight (how far that dimension
alone may push the category), then:

    worst = max weighted score        hot = number of weighted scores >= hot_score
    CRITICAL  worst >= critical_score (1.0)  or  hot >= hot_for_critical (3)
    RED       worst >= red_score (0.75)      or  hot >= hot_for_red (2)
    ORANGE    worst >= orange_score (0.5)
    YELLOW    worst >= yellow_score (0.25)
    GREEN     otherwise

so only a weight-1.0 signal at its emergency threshold (a diverging loss, a quarantined
blueprint in the model) reaches CRITICAL alone, while several dimensions hot at once
escalate together. The reason code is the signal with the worst weighted score (the
earliest in SIGNALS order on a tie), or ``none`` when every score is 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum

from tamiyo_bus.risk.signals import SIGNALS

NO_SIGNAL = "none"


class Category(IntEnum):
    GREEN = 0
    YELLOW = 1
    ORANGE = 2
    RED = 3
    CRITICAL = 4


@dataclass(frozen=True, slots=True)
class Weights:
    """How far each dimension alone can push the category (1.0: to CRITICAL)."""

    loss_delta: float = 1.0
    loss_volatility: float = 0.7
    gradient_norm: float = 0.9
    gradient_variance: float = 0.7
    gradient_conflict: float = 0.6
    step_latency: float = 0.6
    hook_latency: float = 0.6
    device_memory: float = 0.9
    host_memory: float = 0.7
    kasmina_apply_latency: float = 0.6
    kasmina_finalize_latency: float = 0.6
    isolation_violations: float = 0.9
    blueprint_risk: float = 0.7
    blueprint_quarantine: float = 1.0
    policy_risk: float = 0.8
    feature_coverage: float = 0.6
    timeouts: float = 0.9

    def __post_init__(self) -> None:
        for weight in self.vector():
            if not 0.0 <= weight <= 1.0:
                raise ValueError("signal weights must lie in [0, 1]")

    def vector(self) -> tuple[float, ...]:
        """Weights in SIGNALS order."""
        return tuple(getattr(self, signal.value) for signal in SIGNALS)


@dataclass(frozen=True, slots=True)
class CategoryRule:
    yellow_score: float = 0.25
    orange_score: float = 0.5
    red_score: float = 0.75
    critical_score: float = 1.0
    hot_score: float = 0.8
    hot_for_red: int = 2
    hot_for_critical: int = 3


@dataclass(frozen=True, slots=True)
class Assessment:
    category: Category
    reason: str  # the deciding signal, or NO_SIGNAL
    worst: float  # the deciding signal's weighted score
    hot: int  # dimensions at or above the rule's hot score


def categorise(worst: float, hot: int, rule: CategoryRule) -> Category:
    """The rule in the module docstring."""
    if worst >= rule.critical_score or hot >= rule.hot_for_critical:
        return Category.CRITICAL
    if worst >= rule.red_score or hot >= rule.hot_for_red:
        return Category.RED
    if worst >= rule.orange_score:
        return Category.ORANGE
    if worst >= rule.yellow_score:
        return Category.YELLOW
    return Category.GREEN


@dataclass(frozen=True, slots=True)
class Tally:
    """The worst weighted score (and its signal's index) and the hot count over some of
    the signals: the gate tallies the packet's signals before the decision is known and
    adds the decision's afterwards."""

    worst: float = 0.0
    deciding: int = -1  # index in SIGNALS; -1 while every score is 0
    hot: int = 0


def tally(
    indexed_scores: Iterable[tuple[int, float]],
    weights: Sequence[float],
    hot_score: float,
    start: Tally = Tally(),
) -> Tally:
    """``start`` plus the (SIGNALS index, score) pairs; each index counted once overall.
    On a tie the earlier signal in SIGNALS order decides, in whatever order they come."""
    worst, deciding, hot = start.worst, start.deciding, start.hot
    for i, s in indexed_scores:
        weighted = s * weights[i]
        if weighted > worst or (weighted == worst and i < deciding):
            worst, deciding = weighted, i
        if weighted >= hot_score:
            hot += 1
    return Tally(worst, deciding, hot)


def conclude(found: Tally, rule: CategoryRule) -> Assessment:
    """The category and reason code of a tally of every signal."""
    reason = SIGNALS[found.deciding].value if found.deciding >= 0 else NO_SIGNAL
    return Assessment(categorise(found.worst, found.hot, rule), reason, found.worst, found.hot)
