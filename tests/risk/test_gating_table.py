"""Table-driven gating: every signal below base, between its thresholds, past emergency.

A germination is proposed each time. The expected categories follow from the documented
weights and rule (docs/risk.md): below base -> GREEN (passes); half-way -> weight x 0.5;
past emergency -> weight x 1 (1.0 CRITICAL, 0.8-0.9 RED, 0.6-0.7 ORANGE).
"""

from __future__ import annotations

import pytest

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.risk import Category, Restriction, Signal, Thresholds
from tamiyo_bus.risk.signals import SIGNALS, ScoreTable, score, score_all

from .helpers import gate_once, germinate, make_gate

G, Y, OR, R, C = (
    Category.GREEN,
    Category.YELLOW,
    Category.ORANGE,
    Category.RED,
    Category.CRITICAL,
)
# signal: (category half-way between base and emergency, category past emergency)
EXPECTED: dict[Signal, tuple[Category, Category]] = {
    Signal.LOSS_DELTA: (OR, C),
    Signal.LOSS_VOLATILITY: (Y, OR),
    Signal.GRADIENT_NORM: (Y, R),
    Signal.GRADIENT_VARIANCE: (Y, OR),
    Signal.GRADIENT_CONFLICT: (Y, OR),
    Signal.STEP_LATENCY: (Y, OR),
    Signal.HOOK_LATENCY: (Y, OR),
    Signal.DEVICE_MEMORY: (Y, R),
    Signal.HOST_MEMORY: (Y, OR),
    Signal.KASMINA_APPLY_LATENCY: (Y, OR),
    Signal.KASMINA_FINALIZE_LATENCY: (Y, OR),
    Signal.ISOLATION_VIOLATIONS: (Y, R),
    Signal.BLUEPRINT_RISK: (Y, OR),
    Signal.BLUEPRINT_QUARANTINE: (OR, C),
    Signal.POLICY_RISK: (Y, R),
    Signal.FEATURE_COVERAGE: (Y, OR),
    Signal.TIMEOUTS: (Y, R),
}
# What a proposed germination becomes in each category (outside conservative mode).
GERMINATION = {
    G: pb.COMMAND_TYPE_SEED,
    Y: pb.COMMAND_TYPE_SEED,  # germination itself is not downgraded at YELLOW
    OR: pb.COMMAND_TYPE_NO_OP,
    R: pb.COMMAND_TYPE_NO_OP,
    C: pb.COMMAND_TYPE_EMERGENCY,
}


def values(signal: Signal) -> dict[str, float]:
    base, emergency = Thresholds().pair(signal)
    span = emergency - base
    return {
        "below": base - 0.25 * span,
        "at_base": base,
        "between": base + 0.5 * span,
        "at_emergency": emergency,
        "past": emergency + span,
    }


def test_table_covers_every_signal() -> None:
    assert set(EXPECTED) == set(SIGNALS)


@pytest.mark.parametrize("signal", SIGNALS)
def test_score_is_linear_between_base_and_emergency(signal: Signal) -> None:
    base, emergency = Thresholds().pair(signal)
    v = values(signal)
    assert score(v["below"], base, emergency) == 0.0
    assert score(v["at_base"], base, emergency) == 0.0
    assert score(v["between"], base, emergency) == pytest.approx(0.5)
    assert score(v["at_emergency"], base, emergency) == 1.0
    assert score(v["past"], base, emergency) == 1.0
    assert score(float("nan"), base, emergency) == 0.0


@pytest.mark.parametrize("signal", SIGNALS)
@pytest.mark.parametrize("where", ["below", "between", "past"])
def test_gating_per_signal(signal: Signal, where: str) -> None:
    gate, _, _ = make_gate()
    value = values(signal)[where]
    if signal is Signal.POLICY_RISK:
        result = gate_once(gate, germinate(), {}, value)
    else:
        result = gate_once(gate, germinate(), {signal: value}, None)
    half, past = EXPECTED[signal]
    expected = {"below": G, "between": half, "past": past}[where]
    assert result.category is expected
    assert result.command.command_type == GERMINATION[expected]
    assert result.reason == (signal.value if expected is not G else "none")
    assert result.changed == (GERMINATION[expected] != pb.COMMAND_TYPE_SEED)
    if result.changed:
        assert result.command.reason == signal.value  # the deciding signal is the reason code
        assert result.command.command_id == "cmd-1"
        assert result.command.annotations["risk_replaced"] == "COMMAND_TYPE_SEED/SEED_OP_GERMINATE"
        assert result.command.annotations["risk_replaced_reason"] == "policy"
    assert result.command.annotations["risk_category"] == expected.name


def test_emergency_at_critical_and_conservative_from_red() -> None:
    gate, sink, _ = make_gate()
    red = gate_once(gate, germinate(), {Signal.GRADIENT_NORM: 1e6}, None)
    assert red.restriction is Restriction.NO_OP and red.conservative
    critical = gate_once(gate, germinate(), {Signal.LOSS_DELTA: float("inf")}, None)
    assert critical.command.command_type == pb.COMMAND_TYPE_EMERGENCY
    assert critical.command.reason == "loss_delta"
    emergency = [e for e in sink.drain() if e.name == "emergency"]
    assert len(emergency) == 1 and emergency[0].priority == pb.MESSAGE_PRIORITY_CRITICAL


def test_several_hot_dimensions_escalate_together() -> None:
    gate, _, _ = make_gate()
    hot = {Signal.GRADIENT_NORM: 1e6, Signal.DEVICE_MEMORY: 1.0}  # two at 0.9
    assert gate_once(gate, germinate(), hot, None).category is R
    three = {**hot, Signal.TIMEOUTS: 5.0}
    result = gate_once(gate, germinate(), three, None)
    assert result.category is C and result.assessment.hot == 3
    assert result.reason == "gradient_norm"  # worst weighted score, first on a tie


def test_policy_risk_is_expected_severity_not_arg_max_confidence() -> None:
    """A confident "no risk" head (p = 0.97 on severity 0) must read as low risk."""
    confident_safe = (0.97, 0.01, 0.01, 0.005, 0.005)
    confident_critical = (0.005, 0.005, 0.01, 0.01, 0.97)

    def expected_severity(p: tuple[float, ...]) -> float:
        return sum(k * pk for k, pk in enumerate(p)) / (len(p) - 1)

    gate, _, _ = make_gate()
    assert gate_once(gate, germinate(), {}, expected_severity(confident_safe)).category is G
    gate, _, _ = make_gate()
    assert gate_once(gate, germinate(), {}, expected_severity(confident_critical)).category is R


def test_missing_signals_score_zero_and_coverage_reads_lower_as_worse() -> None:
    table = ScoreTable.from_thresholds(Thresholds())
    assert score_all({}, table) == [0.0] * len(SIGNALS)
    base, emergency = Thresholds().pair(Signal.FEATURE_COVERAGE)
    assert emergency < base
    assert score(1.0, base, emergency) == 0.0
    assert score(0.7, base, emergency) == pytest.approx(0.5)


def test_thresholds_must_differ() -> None:
    with pytest.raises(ValueError, match="hook_latency"):
        Thresholds(hook_latency_ms_base=5.0, hook_latency_ms_emergency=5.0)
