"""The validation gate's decisions (pure) and which decisions are held out."""

from __future__ import annotations

import math

from tamiyo_bus.simic.gate import (
    GateVerdict,
    HeldOutFigures,
    Rejection,
    SimFigures,
    ValidationGateSettings,
    is_held_out,
    judge,
)

GATE = ValidationGateSettings(value_error_tolerance=0.1, value_error_slack=0.0, max_kl=0.05,
                              sim_return_tolerance=0.2)  # fmt: skip


def held(candidate_error: float = 1.0, kl: float = 0.01) -> HeldOutFigures:
    return HeldOutFigures(decisions=64, running_value_error=1.0,
                          candidate_value_error=candidate_error, kl=kl)  # fmt: skip


def test_a_candidate_within_every_bound_passes() -> None:
    verdict = judge(held(1.09, 0.049), SimFigures(2.0, 1.85), GATE)
    assert verdict == GateVerdict(()) and verdict.passed
    assert judge(held(0.5), None, GATE).passed  # no simulated evaluation configured


def test_each_regression_is_named() -> None:
    assert judge(held(1.2), None, GATE).rejections == (Rejection.VALUE_ERROR,)
    assert judge(held(kl=0.06), None, GATE).rejections == (Rejection.KL,)
    assert judge(held(), SimFigures(2.0, 1.7), GATE).rejections == (Rejection.SIM_RETURN,)
    everything = judge(held(2.0, 1.0), SimFigures(2.0, 0.0), GATE)
    assert set(everything.rejections) == {Rejection.VALUE_ERROR, Rejection.KL, Rejection.SIM_RETURN}


def test_a_figure_that_is_not_finite_rejects() -> None:
    assert judge(held(math.nan), None, GATE).rejections == (Rejection.NOT_FINITE,)
    assert judge(held(), SimFigures(math.inf, 1.0), GATE).rejections == (Rejection.NOT_FINITE,)


def test_about_a_tenth_of_command_ids_are_held_out_and_always_the_same() -> None:
    ids = [f"run-{r}-c{s}" for r in range(20) for s in range(200)]
    held_out = [is_held_out(i, 0.1) for i in ids]
    assert 0.08 < sum(held_out) / len(ids) < 0.12
    assert held_out == [is_held_out(i, 0.1) for i in ids]
    assert not any(is_held_out(i, 0.0) for i in ids)
