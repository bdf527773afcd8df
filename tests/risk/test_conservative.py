"""Conservative mode: entry rules, hysteresis on exit, no flapping."""

from __future__ import annotations

import pytest

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.risk import Category, ConservativeMode, ConservativeSettings, RiskSettings, Signal
from tamiyo_bus.risk.conservative import REPEATED_HIGH_RISK, ModeChange

from .helpers import Clock, gate_once, germinate, make_gate, names

G, Y, OR, R = Category.GREEN, Category.YELLOW, Category.ORANGE, Category.RED


def mode(**overrides: object) -> tuple[ConservativeMode, Clock]:
    clock = Clock()
    settings = ConservativeSettings(**{"cooldown_s": 10.0, "exit_healthy_steps": 3, **overrides})  # type: ignore[arg-type]
    return ConservativeMode(settings, clock=clock), clock


def test_red_enters_at_once_and_sets_the_flags() -> None:
    m, _ = mode()
    assert (m.germination_allowed, m.learning_paused, m.impala_publishing_enabled) == (
        True, False, True,
    )  # fmt: skip
    change = m.observe(R, "gradient_norm", breakers_healthy=True)
    assert change is not None and change.change is ModeChange.ENTERED
    assert change.cause == "gradient_norm" and m.cause == "gradient_norm"
    assert (m.germination_allowed, m.learning_paused, m.impala_publishing_enabled) == (
        False, True, False,
    )  # fmt: skip


def test_k_high_risk_steps_within_the_window_enter() -> None:
    m, _ = mode(enter_high_risk_steps=3, enter_window_steps=5)
    pattern = [OR, G, G, G, OR, G, G, G, OR]  # never 3 ORANGE within 5 decisions
    assert all(m.observe(c, "x", True) is None for c in pattern)
    assert not m.active
    for c in (OR, G):
        assert m.observe(c, "x", True) is None
    change = m.observe(OR, "x", True)  # the last 5 decisions hold 3 ORANGE
    assert change is not None and change.cause == REPEATED_HIGH_RISK


def test_exit_needs_cooldown_and_healthy_streak() -> None:
    m, clock = mode(cooldown_s=10.0, exit_healthy_steps=3)
    m.observe(R, "loss_delta", True)
    for _ in range(20):  # healthy but inside the cool-down
        clock.now += 0.1
        assert m.observe(G, "none", True) is None
    clock.now = 10.0  # cool-down over, streak long enough -> the next healthy step exits
    change = m.observe(Y, "hook_latency", True)
    assert change is not None and change.change is ModeChange.EXITED
    assert change.cause == "loss_delta" and change.on_for_s == 10.0
    assert not m.active and m.cause == ""


def test_exit_needs_the_streak_even_after_the_cooldown() -> None:
    m, clock = mode(cooldown_s=1.0, exit_healthy_steps=3)
    m.observe(R, "loss_delta", True)
    clock.now = 100.0
    assert m.observe(G, "none", True) is None
    assert m.observe(G, "none", breakers_healthy=False) is None  # open breaker: not healthy
    assert m.observe(G, "none", True) is None
    assert m.observe(G, "none", True) is None
    assert m.observe(G, "none", True) is not None  # third healthy in a row


def test_a_trigger_while_on_restarts_the_cooldown() -> None:
    m, clock = mode(cooldown_s=10.0, exit_healthy_steps=1)
    m.observe(R, "loss_delta", True)
    clock.now = 8.0
    assert m.trigger("breaker.urza") is None  # already on: restarts the cool-down
    clock.now = 12.0
    assert m.observe(G, "none", True) is None
    clock.now = 18.0
    assert m.observe(G, "none", True) is not None


def test_never_enters_and_leaves_in_one_call() -> None:
    m, _ = mode(cooldown_s=0.0, exit_healthy_steps=1)
    entered = m.observe(R, "loss_delta", True)
    assert entered is not None and entered.change is ModeChange.ENTERED and m.active
    exited = m.observe(G, "none", True)
    assert exited is not None and exited.change is ModeChange.EXITED
    trig = m.trigger("breaker.inference")
    assert trig is not None and trig.change is ModeChange.ENTERED and m.active


@pytest.mark.parametrize(("high", "low"), [(R, G), (OR, G), (R, Y)])
def test_alternating_signal_does_not_flap(high: Category, low: Category) -> None:
    m, clock = mode(cooldown_s=5.0, exit_healthy_steps=4)
    changes = []
    for step in range(400):
        clock.now += 1.0
        change = m.observe(high if step % 2 == 0 else low, "loss_delta", True)
        if change is not None:
            changes.append(change.change)
    assert changes == [ModeChange.ENTERED]
    assert m.active
    for _ in range(4):  # the alternation stops: one clean exit
        clock.now += 1.0
        change = m.observe(G, "none", True)
    assert change is not None and change.change is ModeChange.EXITED


def test_gate_alternating_loss_does_not_flap_and_holds_germination() -> None:
    """Through the gate: a loss alternating between spiking and calm."""
    settings = RiskSettings(conservative=ConservativeSettings(cooldown_s=3.0, exit_healthy_steps=5))
    gate, sink, clock = make_gate(settings)
    commands = []
    for step in range(100):
        clock.now += 1.0
        signals = {Signal.LOSS_DELTA: 0.45 if step % 2 == 0 else 0.0}  # RED, GREEN, ...
        result = gate_once(gate, germinate(), signals, None)
        commands.append(result.command.command_type)
    mode_events = [n for n in names(sink.drain()) if n.startswith("conservative")]
    assert mode_events == ["conservative_entered"]
    assert set(commands) == {pb.COMMAND_TYPE_NO_OP}  # RED: NO_OP; GREEN but conservative: held


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError):
        ConservativeSettings(enter_high_risk_steps=5, enter_window_steps=3)
    with pytest.raises(ValueError):
        ConservativeSettings(exit_healthy_steps=0)
    with pytest.raises(ValueError):
        ConservativeSettings(healthy_max_category=OR)
