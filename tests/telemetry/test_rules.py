"""Alert rules over time windows, with an injected clock (no sleeping)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from consumers.nissa.rules import (
    AlertEngine,
    AlertRule,
    AlertSettings,
    AlertState,
    Op,
    Severity,
    Stat,
    load_rules,
)
from leyline_pb import leyline_pb2 as pb

LATENCY = "kasmina.apply_latency"
RULE = AlertRule("apply_slow", LATENCY, Op.GT, 0.002, for_s=30.0, stat=Stat.MAX)
SEED_A = (("run", "r"), ("seed", "a"))
SEED_B = (("run", "r"), ("seed", "b"))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def sample(value: float, count: int = 1) -> pb.AggregatedSeries:
    return pb.AggregatedSeries(count=count, sum=value * count, min=value, max=value, last=value)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def engine(clock: FakeClock) -> AlertEngine:
    return AlertEngine([RULE], clock, AlertSettings(stale_after_s=120.0, event_hold_s=60.0))


def states(engine: AlertEngine) -> dict[tuple[tuple[str, str], ...], AlertState]:
    return {a.labels: a.state for a in engine.active(include_pending=True)}


def test_a_windowed_alert_fires_only_after_its_condition_held_for_the_window(
    engine: AlertEngine, clock: FakeClock
) -> None:
    fired: list[str] = []
    engine.listeners.append(lambda alert: fired.append(alert.name))
    engine.observe(LATENCY, SEED_A, sample(0.005))
    assert states(engine) == {SEED_A: AlertState.PENDING}
    clock.now += 29.0
    engine.tick()
    assert engine.active() == [] and fired == []
    clock.now += 1.0
    engine.tick()
    [alert] = engine.active()
    assert (alert.name, alert.labels, alert.value) == ("apply_slow", SEED_A, 0.005)
    assert alert.firing_s == clock.now and fired == ["apply_slow"]


def test_unrelated_packets_neither_reset_nor_clear_a_pending_or_firing_alert(
    engine: AlertEngine, clock: FakeClock
) -> None:
    engine.observe(LATENCY, SEED_A, sample(0.005))
    for _ in range(29):  # one unrelated packet a second for the whole window
        clock.now += 1.0
        engine.observe("kasmina.seed_alpha", SEED_A, sample(0.0))  # another metric
        engine.observe(LATENCY, SEED_B, sample(0.0001))  # same metric, another seed, healthy
        engine.observe(LATENCY, (("run", "other"),), sample(0.0))
        engine.tick()
    clock.now += 1.0
    engine.tick()
    assert states(engine) == {SEED_A: AlertState.FIRING}
    for _ in range(10):
        clock.now += 1.0
        engine.observe(LATENCY, SEED_B, sample(0.0001))
        engine.tick()
    assert states(engine) == {SEED_A: AlertState.FIRING}


def test_a_sample_of_the_same_series_that_breaks_the_condition_ends_it(
    engine: AlertEngine, clock: FakeClock
) -> None:
    engine.observe(LATENCY, SEED_A, sample(0.005))
    clock.now += 20.0
    engine.observe(LATENCY, SEED_A, sample(0.001))  # healthy: the streak restarts
    engine.observe(LATENCY, SEED_A, sample(0.005))
    clock.now += 20.0
    engine.tick()
    assert states(engine) == {SEED_A: AlertState.PENDING}
    clock.now += 10.0
    engine.tick()
    assert states(engine) == {SEED_A: AlertState.FIRING}
    engine.observe(LATENCY, SEED_A, sample(0.001))
    assert engine.active(include_pending=True) == []
    assert engine.resolved[0].state is AlertState.RESOLVED


def test_a_series_that_stops_reporting_is_resolved_as_stale(
    engine: AlertEngine, clock: FakeClock
) -> None:
    engine.observe(LATENCY, SEED_A, sample(0.005))
    clock.now += 30.0
    engine.tick()
    assert engine.active()
    clock.now += 121.0
    engine.tick()
    assert engine.active() == [] and engine.resolved[0].labels == SEED_A


def test_the_statistic_and_label_match_of_a_rule_are_honoured(clock: FakeClock) -> None:
    rule = AlertRule("busy", "tolaria.steps", Op.GE, 10.0, stat=Stat.COUNT,
                     match=(("run", "r"),))  # fmt: skip
    engine = AlertEngine([rule], clock)
    engine.observe("tolaria.steps", (("run", "x"),), sample(1.0, count=50))
    engine.observe("tolaria.steps", (("run", "r"),), sample(1.0, count=9))
    assert engine.active() == []
    engine.observe("tolaria.steps", (("run", "r"),), sample(1.0, count=10))
    assert [a.labels for a in engine.active()] == [(("run", "r"),)]  # for_s 0: at once


def test_a_critical_event_raises_an_alert_at_once_and_resolves_after_its_hold(
    engine: AlertEngine, clock: FakeClock
) -> None:
    engine.raise_event("kasmina.isolation_violation", SEED_A, "gradient leak", {"layer": "3"})
    [alert] = engine.active()
    assert (alert.severity, alert.state, alert.origin) == (
        Severity.CRITICAL, AlertState.FIRING, "event",
    )  # fmt: skip
    clock.now += 50.0
    engine.raise_event("kasmina.isolation_violation", SEED_A, "again", {})
    clock.now += 50.0
    engine.tick()
    assert engine.active()[0].occurrences == 2
    clock.now += 11.0
    engine.tick()
    assert engine.active() == []


def test_rules_load_from_json(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    path.write_text(json.dumps([{"name": "loss", "metric": "tolaria.loss", "op": ">",
                                 "threshold": 5, "for_s": 60, "stat": "mean",
                                 "severity": "critical", "match": {"run": "r"}}]))  # fmt: skip
    [rule] = load_rules(path)
    assert rule == AlertRule("loss", "tolaria.loss", Op.GT, 5.0, 60.0, Stat.MEAN,
                             Severity.CRITICAL, (("run", "r"),))  # fmt: skip
