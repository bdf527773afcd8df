"""Tamiyo's share of the trainer as a budget: the cadence she chooses keeps her
measured cost within ``max_step_share`` of the host's step."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest

from tamiyo_bus.cadence import Cadence, cadence_steps
from tamiyo_bus.policy.graph import PolicyGraph
from tamiyo_bus.policy.serving import Inference, ServingPolicy
from tamiyo_bus.settings import DecisionMode, StepSettings
from tests.policy.helpers import SMALL, make_stack


@pytest.mark.parametrize(
    ("cost_ms", "step_ms", "share", "expected"),
    [
        (3.0, 30.0, 0.10, 1),  # exactly the budget
        (3.1, 30.0, 0.10, 2),
        (3.0, 2.5, 0.10, 12),
        (5.0, 2.0, 0.10, 25),
        (1_000.0, 1.0, 0.10, 100),  # capped
        (math.nan, 2.0, 0.10, 1),  # not measured yet: every step
        (3.0, 0.0, 0.10, 1),
    ],
)
def test_the_cadence_is_the_smallest_interval_within_the_share(
    cost_ms: float, step_ms: float, share: float, expected: int
) -> None:
    assert cadence_steps(cost_ms, step_ms, share, max_steps=100) == expected


def test_a_fixed_cadence_overrides_the_budget() -> None:
    cadence = Cadence.of(0.1, fixed_steps=7, max_steps=1000, smoothing=0.5)
    cadence.observe_decision(100.0)
    cadence.observe_host_step(1.0)
    assert cadence.steps == 7


class BusyPolicy(ServingPolicy):
    """Spends ``cost_ms`` of CPU time on every decision: a policy of known cost."""

    def __init__(self, cost_ms: float) -> None:
        super().__init__(SMALL)
        self.cost_ns = int(cost_ms * 1e6)

    def decide(self, graph: PolicyGraph, **kwargs: Any) -> Inference:
        until = time.thread_time_ns() + self.cost_ns
        while time.thread_time_ns() < until:
            pass
        return super().decide(graph, **kwargs)


def test_on_a_slow_host_the_auto_cadence_keeps_tamiyo_within_her_share() -> None:
    """A host whose step takes 4 ms and a policy that costs at least 8 ms of CPU a
    decision: deciding every step would take 200 % of the host's time; the cadence
    Tamiyo settles on keeps her measured cost under 10 %."""
    host_step_ms, share = 4.0, 0.10
    settings = StepSettings(
        decision_mode=DecisionMode.AHEAD, max_step_share=share, max_decision_age_steps=10_000
    )
    stack = make_stack(policy=BusyPolicy(8.0), settings=settings)
    controller = stack.controller
    for step in range(4_000):
        if controller.wants_state(step):
            packet = stack.packet(step)
            packet.training_metrics["step_latency_ms"] = host_step_ms
            controller.evaluate_step(packet)
            assert controller.wait_idle(10.0)  # each decision lands before the next step
    cost_ms = controller.cadence.decision_cost.value
    assert cost_ms >= 8.0
    assert controller.cadence.steps == math.ceil(cost_ms / (share * host_step_ms) - 1e-9)
    assert controller.cadence.share() <= share
    assert controller.stats.decided >= 10
