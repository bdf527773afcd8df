"""The category rule, tallied in one pass or in two (the packet's signals before the
decision, the decision's after): the same assessment either way."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oona.events import BufferedEventSink
from tamiyo_bus.risk import CategoryRule, RiskGate, RiskSettings, Signal, Weights
from tamiyo_bus.risk.engine import Assessment, conclude, tally
from tamiyo_bus.risk.signals import INDEX, SIGNALS

WEIGHTS = Weights().vector()
RULE = CategoryRule()
# Scores on a coarse grid, so that ties between signals are common.


def assess(scores: list[float], weights: tuple[float, ...], rule: CategoryRule) -> Assessment:
    """The category of every score tallied in one pass, in SIGNALS order."""
    return conclude(tally(enumerate(scores), weights, rule.hot_score), rule)


SCORES = st.lists(st.sampled_from([0.0, 0.25, 0.5, 0.8, 1.0]), min_size=17, max_size=17)


@given(SCORES, st.sets(st.sampled_from(range(len(SIGNALS)))))
def test_two_tallies_assess_as_one(scores: list[float], later: set[int]) -> None:
    """Whichever signals come later, and in whatever order, ties go to the earlier signal."""
    first = tally(((i, s) for i, s in enumerate(scores) if i not in later), WEIGHTS, 0.8)
    rest = [(i, scores[i]) for i in sorted(later, reverse=True)]
    assert conclude(tally(rest, WEIGHTS, 0.8, first), RULE) == assess(scores, WEIGHTS, RULE)


def test_a_tie_goes_to_the_earlier_signal() -> None:
    scores = [0.0] * len(SIGNALS)
    scores[INDEX[Signal.GRADIENT_NORM]] = scores[INDEX[Signal.TIMEOUTS]] = 1.0  # both 0.9
    assert assess(scores, WEIGHTS, RULE).reason == "gradient_norm"
    later_first = tally([(INDEX[Signal.TIMEOUTS], 1.0)], WEIGHTS, 0.8)
    both = tally([(INDEX[Signal.GRADIENT_NORM], 1.0)], WEIGHTS, 0.8, later_first)
    assert conclude(both, RULE).reason == "gradient_norm"


def test_prepare_refuses_the_decisions_own_signals() -> None:
    gate = RiskGate(RiskSettings(), BufferedEventSink())
    with pytest.raises(ValueError, match="before the decision"):
        gate.prepare({Signal.TIMEOUTS: 1.0})
