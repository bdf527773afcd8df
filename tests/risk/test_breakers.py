"""The named breakers: transitions (half-open success and failure), metrics, events,
and conservative mode entered by a breaker opening."""

from __future__ import annotations

from leyline_pb import leyline_pb2 as pb
from oona.breaker import BreakerSettings, BreakerState, CircuitBreaker
from oona.events import BufferedEventSink
from oona.metrics import BusMetrics
from tamiyo_bus.risk import (
    BreakerBankSettings,
    BreakerName,
    RiskBreakers,
    RiskGate,
    RiskSettings,
    Signal,
)

from .helpers import Clock, gate_once, germinate

OPEN, HALF, CLOSED = BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED


def bank() -> tuple[RiskBreakers, BufferedEventSink, BusMetrics, Clock]:
    clock, sink, metrics = Clock(), BufferedEventSink(), BusMetrics()
    settings = BreakerBankSettings(
        inference=BreakerSettings(2, 1_000.0, 1), urza=BreakerSettings(1, 500.0, 2)
    )
    return RiskBreakers(settings, sink, clock=clock, metrics=metrics), sink, metrics, clock


def gauge(metrics: BusMetrics, name: BreakerName) -> float:
    gauges = metrics.snapshot()["gauges"]
    assert isinstance(gauges, dict)
    return next(
        g["value"] for g in gauges["risk_breaker_state"] if g["labels"] == {"breaker": name}
    )


def test_all_five_breakers_exist_and_start_closed() -> None:
    breakers, sink, metrics, _ = bank()
    assert set(breakers.states()) == set(BreakerName)
    assert set(breakers.states().values()) == {CLOSED}
    assert breakers.all_closed()
    assert all(gauge(metrics, name) == 0.0 for name in BreakerName)
    assert sink.drain() == []


def test_inference_open_half_open_failure_then_success() -> None:
    breakers, sink, metrics, clock = bank()
    inference = breakers[BreakerName.INFERENCE]
    inference.record_failure()
    assert breakers.all_closed()
    inference.record_failure()  # threshold 2
    assert inference.state is OPEN and not inference.allow()
    assert gauge(metrics, BreakerName.INFERENCE) == 2.0
    clock.now = 1.0
    assert inference.allow()  # half-open: the one trial
    assert not inference.allow()
    inference.record_failure()  # the trial failed: open again
    assert inference.state is OPEN
    clock.now = 2.0
    assert inference.allow()
    inference.record_success()  # the trial succeeded: closed
    assert inference.state is CLOSED and gauge(metrics, BreakerName.INFERENCE) == 0.0
    events = sink.drain()
    assert [(e.name, e.attributes["to"], e.priority) for e in events] == [
        ("breaker_opened", "open", pb.MESSAGE_PRIORITY_CRITICAL),
        ("breaker_half_open", "half_open", pb.MESSAGE_PRIORITY_NORMAL),
        ("breaker_opened", "open", pb.MESSAGE_PRIORITY_CRITICAL),
        ("breaker_half_open", "half_open", pb.MESSAGE_PRIORITY_NORMAL),
        ("breaker_closed", "closed", pb.MESSAGE_PRIORITY_NORMAL),
    ]
    assert all(e.attributes["breaker"] == "inference" for e in events)
    assert metrics.count("risk_breaker_transitions") == 5
    assert (
        metrics.count(
            "risk_breaker_transitions", breaker="inference", previous="half_open", to="open"
        )
        == 1
    )


def test_half_open_allows_a_bounded_number_of_trials() -> None:
    breakers, sink, _, clock = bank()
    urza = breakers[BreakerName.URZA]
    urza.record_failure()
    clock.now = 0.5
    assert [urza.allow() for _ in range(4)] == [True, True, False, False]
    opened = sink.drain()[0]
    assert opened.priority == pb.MESSAGE_PRIORITY_NORMAL  # only inference opening is CRITICAL


def test_adopted_breaker_is_observed() -> None:
    breakers, sink, _, _ = bank()
    io = CircuitBreaker("redis-io", BreakerSettings(1, 1_000.0, 1))
    breakers.adopt(BreakerName.BUS_IO, io)
    io.record_failure()
    assert breakers[BreakerName.BUS_IO] is io and not breakers.all_closed()
    assert [e.attributes["breaker"] for e in sink.drain()] == ["bus_io"]


def test_any_breaker_opening_enters_conservative_mode() -> None:
    clock, sink = Clock(), BufferedEventSink()
    gate = RiskGate(RiskSettings(), sink, clock=clock)
    for _ in range(3):
        gate.breakers[BreakerName.LEARNING].record_failure()
    assert gate.conservative.active and gate.conservative.cause == "breaker.learning"
    assert [e.name for e in sink.drain()] == ["breaker_opened", "conservative_entered"]
    result = gate_once(gate, germinate(), {}, None)
    assert result.command.command_type == pb.COMMAND_TYPE_NO_OP
    assert result.reason == "conservative_mode"
    assert result.command.annotations["risk_conservative_cause"] == "breaker.learning"


def test_gate_exports_decisions_and_conservative_mode_as_metrics() -> None:
    clock, metrics = Clock(), BusMetrics()
    gate = RiskGate(RiskSettings(), BufferedEventSink(), clock=clock, metrics=metrics)
    gate_once(gate, germinate(), {}, None)
    gate_once(gate, germinate(), {Signal.DEVICE_MEMORY: 1.0}, None)  # RED: conservative on
    assert metrics.count("risk_decisions", category="GREEN") == 1
    assert metrics.count("risk_decisions", category="RED") == 1
    gauges = metrics.snapshot()["gauges"]
    assert isinstance(gauges, dict)
    assert gauges["risk_conservative_mode"] == [{"labels": {}, "value": 1.0}]


def test_conservative_mode_ends_while_a_paused_breaker_awaits_its_trial() -> None:
    """Learning is paused while the mode is on, so the learning breaker gets no call
    until the mode ends: once it has cooled down it counts as healthy, or the mode
    would never end. Its trial then decides: a failure enters the mode again."""
    clock, sink = Clock(), BufferedEventSink()
    settings = RiskSettings()
    gate = RiskGate(settings, sink, clock=clock)
    learning = gate.breakers[BreakerName.LEARNING]
    for _ in range(settings.breakers.learning.failure_threshold):
        learning.record_failure()
    assert gate.conservative.learning_paused
    healthy_steps = settings.conservative.exit_healthy_steps
    for _ in range(healthy_steps):
        assert gate_once(gate, germinate(), {}, None).conservative  # still open: not healthy
    clock.now = max(settings.breakers.learning.cooldown_ms / 1000, settings.conservative.cooldown_s)
    results = [gate_once(gate, germinate(), {}, None) for _ in range(healthy_steps)]
    assert [r.conservative for r in results] == [True] * (healthy_steps - 1) + [False]
    assert learning.state is HALF and not gate.conservative.learning_paused
    assert learning.allow()  # the trial learning step
    learning.record_failure()
    assert gate.conservative.active and gate.conservative.cause == "breaker.learning"
    assert [e.name for e in sink.drain()] == [
        "breaker_opened",
        "conservative_entered",
        "breaker_half_open",
        "conservative_exited",
        "breaker_opened",
        "conservative_entered",
    ]
