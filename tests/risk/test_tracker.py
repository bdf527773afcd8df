"""Signal extraction from the packet (the tracker) and adaptive thresholds."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import pytest

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.risk import RiskSettings, Signal, SignalTracker, Thresholds, TrackerSettings
from tamiyo_bus.risk.adaptive import AdaptiveSettings, AdaptiveThresholds, adapted_pair
from tamiyo_bus.risk.signals import ScoreTable
from tamiyo_bus.risk.tracker import relative_rise

from .helpers import NO_METADATA, gate_once, germinate, make_gate, static


@dataclass(frozen=True)
class Meta:
    risk: float
    quarantined: bool = False


def packet(loss: float = 1.0, **metrics: float) -> pb.SystemStatePacket:
    out = pb.SystemStatePacket(training_loss=loss)
    out.training_metrics.update(metrics)
    return out


def test_loss_delta_is_the_rise_over_the_moving_average() -> None:
    tracker = SignalTracker(TrackerSettings(loss_ewma_alpha=0.5))
    assert tracker.observe(packet(1.0), blueprints=NO_METADATA)[Signal.LOSS_DELTA] == 0.0
    assert tracker.observe(packet(1.5), blueprints=NO_METADATA)[Signal.LOSS_DELTA] == pytest.approx(
        0.5
    )
    # the average is now 1.25: a loss of 1.0 is a fall, scored as a negative delta
    assert tracker.observe(packet(1.0), blueprints=NO_METADATA)[Signal.LOSS_DELTA] == pytest.approx(
        -0.2
    )
    assert tracker.observe(packet(math.nan), blueprints=NO_METADATA)[Signal.LOSS_DELTA] == math.inf


def test_diverged_loss_is_critical() -> None:
    tracker = SignalTracker()
    gate, _, _ = make_gate()
    tracker.observe(packet(1.0), blueprints=NO_METADATA)
    result = gate_once(
        gate, germinate(), tracker.observe(packet(math.inf), blueprints=NO_METADATA), None
    )
    assert result.command.command_type == pb.COMMAND_TYPE_EMERGENCY
    assert result.reason == "loss_delta"


def test_loss_volatility_is_the_jitter_from_one_loss_to_the_next() -> None:
    tracker = SignalTracker(TrackerSettings(loss_window_steps=4))
    for loss in (1.0, 3.0, 1.0, 3.0, 1.0, 3.0):
        values = tracker.observe(packet(loss), blueprints=NO_METADATA)
    # The window holds 1, 3, 1, 3: second differences -4 and 4, median magnitude 4, the
    # jitter 4 / (0.6745 sqrt(6)), over the mean 2.
    expected = 4.0 / (0.6745 * math.sqrt(6.0)) / 2.0
    assert values[Signal.LOSS_VOLATILITY] == pytest.approx(expected)


def test_a_loss_falling_steadily_or_round_a_bend_is_not_volatile() -> None:
    tracker = SignalTracker(TrackerSettings(loss_window_steps=20))
    for step in range(40):  # falls steadily, then bends to flat at step 30
        loss = 2.0 - 0.04 * min(step, 30)
        values = tracker.observe(packet(loss), blueprints=NO_METADATA)
    assert values[Signal.LOSS_VOLATILITY] == pytest.approx(0.0, abs=1e-6)  # float32 losses


def test_metrics_are_read_under_their_names_and_absent_ones_left_out() -> None:
    values = SignalTracker().observe(
        packet(
            gradient_norm=12.0,
            hook_latency_ms=3.5,
            device_memory_fraction=0.9,
            isolation_violations=1.0,
        ),
        blueprints=NO_METADATA,
        feature_coverage=0.8,
    )
    assert values[Signal.GRADIENT_NORM] == 12.0
    assert values[Signal.HOOK_LATENCY] == 3.5
    assert values[Signal.DEVICE_MEMORY] == pytest.approx(0.9)
    assert values[Signal.ISOLATION_VIOLATIONS] == 1.0
    assert values[Signal.FEATURE_COVERAGE] == pytest.approx(0.8)
    assert Signal.STEP_LATENCY not in values and Signal.HOST_MEMORY not in values


def test_blueprints_of_live_seeds_and_the_proposal_count() -> None:
    p = packet()
    p.seed_states.add(seed_id="a", stage=pb.SEED_STAGE_TRAINING, blueprint_id="risky")
    p.seed_states.add(seed_id="b", stage=pb.SEED_STAGE_CULLED, blueprint_id="bad")
    p.seed_states.add(seed_id="c", stage=pb.SEED_STAGE_FOSSILIZED, blueprint_id="unknown")
    blueprints = {"risky": Meta(0.6), "bad": Meta(0.9, True), "fresh": Meta(0.2, True)}
    values = SignalTracker().observe(
        p, blueprints=static(blueprints), proposed_blueprint_id="fresh"
    )
    assert values[Signal.BLUEPRINT_RISK] == pytest.approx(0.6)  # the culled seed is gone
    assert values[Signal.BLUEPRINT_QUARANTINE] == 1.0  # the proposal's blueprint
    values = SignalTracker().observe(p, blueprints=static(blueprints))
    assert values[Signal.BLUEPRINT_RISK] == pytest.approx(0.6)
    assert values[Signal.BLUEPRINT_QUARANTINE] == 0.0


def test_timeouts_are_counted_over_a_window_of_decisions() -> None:
    tracker = SignalTracker(TrackerSettings(timeout_window_decisions=3))
    flags = [True, True, False, False, True, False, False, False]
    counts = [
        tracker.observe(packet(), blueprints=NO_METADATA, timed_out=f)[Signal.TIMEOUTS]
        for f in flags
    ]
    assert counts == [1, 2, 2, 1, 1, 1, 1, 0]


def test_adapted_pair_follows_statistics_within_half_to_double() -> None:
    s = AdaptiveSettings(k_sigma=2.0)
    assert adapted_pair(10.0, 100.0, 8.0, 1.0, s) == (10.0, 100.0)  # 8 + 2 = 10: unchanged
    assert adapted_pair(10.0, 100.0, 12.0, 1.5, s) == (15.0, 150.0)
    assert adapted_pair(10.0, 100.0, 1.0, 0.1, s) == (5.0, 50.0)  # clamped at 0.5x
    assert adapted_pair(10.0, 100.0, 90.0, 10.0, s) == (20.0, 200.0)  # clamped at 2x


def test_adaptive_thresholds_recompute_every_n_epochs() -> None:
    settings = AdaptiveSettings(every_epochs=2, k_sigma=0.0, min_samples=10)
    adaptive = AdaptiveThresholds(Thresholds(), settings)
    assert adaptive.on_epoch(0) is None  # starts the count
    for _ in range(10):
        adaptive.observe({Signal.STEP_LATENCY: 1500.0, Signal.DEVICE_MEMORY: 0.99})
    for _ in range(5):
        adaptive.observe({Signal.HOOK_LATENCY: 100.0})  # too few samples to adapt
    assert adaptive.on_epoch(1) is None
    new = adaptive.on_epoch(2)
    assert new is not None
    assert new.pair(Signal.STEP_LATENCY) == (1500.0, 15_000.0)
    assert new.pair(Signal.DEVICE_MEMORY) == Thresholds().pair(Signal.DEVICE_MEMORY)  # physical
    assert new.pair(Signal.HOOK_LATENCY) == Thresholds().pair(Signal.HOOK_LATENCY)
    assert adaptive.on_epoch(3) is None


def test_gate_uses_adapted_thresholds() -> None:
    settings = RiskSettings(adaptive=AdaptiveSettings(every_epochs=1, k_sigma=0.0, min_samples=5))
    gate, _, _ = make_gate(settings)
    slow = {Signal.STEP_LATENCY: 5000.0}  # slow for the defaults: YELLOW
    assert gate_once(gate, germinate(), slow, None).category.name == "YELLOW"
    gate.new_epoch(0)
    for _ in range(5):
        gate_once(gate, germinate(), slow, None)
    assert gate.new_epoch(1)
    assert gate.score_table == ScoreTable.from_thresholds(
        Thresholds(step_latency_ms_base=2_000.0, step_latency_ms_emergency=20_000.0)
    )
    # The base moved 2x (the cap): the same latency is no longer a risk.
    assert gate_once(gate, germinate(), slow, None).category.name == "GREEN"


def test_thresholds_replace_keeps_units_in_names() -> None:
    changed = dataclasses.replace(Thresholds(), hook_latency_ms_base=4.0)
    assert changed.pair(Signal.HOOK_LATENCY) == (4.0, 20.0)


def test_a_tiny_uptick_of_a_near_zero_loss_is_not_a_spike() -> None:
    tracker_settings = TrackerSettings(loss_reference_floor=0.05)
    assert relative_rise(0.003, 0.001, floor=tracker_settings.loss_reference_floor) < 0.05
    assert relative_rise(0.5, 0.001, floor=tracker_settings.loss_reference_floor) > 0.5
    assert relative_rise(1.2, 1.0, floor=0.05) == pytest.approx(0.2)
