"""LearningGuard: a learning step runs only with the breaker's leave and outside
conservative mode, and a failed step leaves the weights and the optimiser as they were."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch

from oona.breaker import BreakerSettings, BreakerState, CircuitBreaker
from oona.events import BufferedEventSink
from tamiyo_bus.learning.guard import LearningGuard, LearningGuardSettings, LearningOutcome
from tamiyo_bus.risk import BreakerBankSettings, BreakerName, RiskGate, RiskSettings

from ..risk.helpers import Clock, command, gate_once

MAX_GRAD_NORM = 0.5


class Learner:
    """A real module and optimiser (Adam keeps state a bad step could corrupt)."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = torch.nn.Linear(4, 1)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=0.1)
        self.inputs = torch.randn(8, 4)
        self.calls = 0

    def loss(self, scale: float = 1.0) -> torch.Tensor:
        self.calls += 1
        return (self.model(self.inputs) * scale).pow(2).mean()

    def snapshot(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return copy.deepcopy(self.model.state_dict()), copy.deepcopy(self.optimizer.state_dict())

    def unchanged_since(self, snapshot: tuple[dict[str, torch.Tensor], dict[str, Any]]) -> bool:
        """Weights and optimiser state bit-identical to ``snapshot``."""
        weights, optimizer = snapshot
        same_weights = all(torch.equal(weights[k], v) for k, v in self.model.state_dict().items())
        now = self.optimizer.state_dict()
        same_state = now["state"].keys() == optimizer["state"].keys() and all(
            now["state"][p].keys() == optimizer["state"][p].keys()
            and all(torch.equal(now["state"][p][k], v) for k, v in optimizer["state"][p].items())
            for p in optimizer["state"]
        )
        return same_weights and same_state and now["param_groups"] == optimizer["param_groups"]


def guard(paused: bool = False, threshold: int = 2) -> tuple[LearningGuard, Clock]:
    clock = Clock()
    breaker = CircuitBreaker("learning", BreakerSettings(threshold, 1_000.0, 1), clock=clock)
    return LearningGuard(breaker, lambda: paused, LearningGuardSettings(MAX_GRAD_NORM)), clock


def test_a_healthy_step_is_applied_with_clipped_gradients() -> None:
    learner, (g, _) = Learner(), guard()
    sgd = torch.optim.SGD(learner.model.parameters(), lr=1.0)
    before = torch.cat([p.detach().flatten().clone() for p in learner.model.parameters()])
    result = g.step(sgd, lambda: learner.loss(scale=100.0))
    after = torch.cat([p.detach().flatten() for p in learner.model.parameters()])
    assert result.applied and result.grad_norm is not None and result.grad_norm > MAX_GRAD_NORM
    # SGD at lr 1 moves the weights by exactly the clipped gradient.
    assert float((after - before).norm()) == pytest.approx(MAX_GRAD_NORM, rel=1e-5)
    assert g.outcomes == {LearningOutcome.APPLIED: 1}


@pytest.mark.parametrize(
    ("loss_fn", "outcome", "detail"),
    [
        (lambda learner: learner.loss() * float("nan"), LearningOutcome.NON_FINITE, "loss"),
        # A finite loss (0) whose gradient is not: d sqrt(x)/dx at 0.
        (
            lambda learner: (learner.loss() * 0).sqrt(),
            LearningOutcome.NON_FINITE,
            "gradient norm",
        ),
        (lambda learner: learner.loss()[5], LearningOutcome.FAILED, "IndexError"),
    ],
    ids=["nan-loss", "nan-gradient", "raises"],
)
def test_a_failed_step_changes_nothing_and_counts_on_the_breaker(
    loss_fn: Callable[[Learner], torch.Tensor], outcome: LearningOutcome, detail: str
) -> None:
    learner, (g, _) = Learner(), guard()
    assert g.step(learner.optimizer, learner.loss).applied  # Adam now has state
    snapshot = learner.snapshot()
    result = g.step(learner.optimizer, lambda: loss_fn(learner))
    assert result.outcome is outcome and detail in result.detail
    assert learner.unchanged_since(snapshot)
    assert all(p.grad is None for p in learner.model.parameters())
    assert g.breaker.state is BreakerState.CLOSED  # one failure of two
    g.step(learner.optimizer, lambda: loss_fn(learner))
    assert g.breaker.state is BreakerState.OPEN
    assert learner.unchanged_since(snapshot)


def test_an_open_breaker_refuses_steps_until_a_trial_succeeds() -> None:
    learner, (g, clock) = Learner(), guard(threshold=1)
    g.step(learner.optimizer, lambda: learner.loss() * float("inf"))
    calls = learner.calls
    refused = g.step(learner.optimizer, learner.loss)
    assert refused.outcome is LearningOutcome.BREAKER_OPEN and learner.calls == calls
    clock.now = 1.0  # cooled down: one trial
    assert g.step(learner.optimizer, learner.loss).applied
    assert g.breaker.state is BreakerState.CLOSED


def test_paused_steps_compute_nothing_and_spend_no_trial() -> None:
    learner, (g, _) = Learner(), guard(paused=True)
    snapshot = learner.snapshot()
    assert g.step(learner.optimizer, learner.loss).outcome is LearningOutcome.PAUSED
    assert learner.calls == 0 and learner.unchanged_since(snapshot)
    assert g.breaker.state is BreakerState.CLOSED


def test_failing_steps_put_the_run_in_conservative_mode_which_pauses_learning() -> None:
    """In the risk gate's process: the learning breaker opening enters conservative
    mode; learning stays paused until the mode ends, then its trial step closes the
    breaker."""
    clock, sink = Clock(), BufferedEventSink()
    settings = RiskSettings(breakers=BreakerBankSettings(learning=BreakerSettings(2, 1_000.0, 1)))
    gate = RiskGate(settings, sink, clock=clock)
    learner = Learner()
    g = LearningGuard.for_gate(gate)
    assert g.breaker is gate.breakers[BreakerName.LEARNING]
    for _ in range(2):
        g.step(learner.optimizer, lambda: learner.loss() * float("nan"))
    assert gate.conservative.active and gate.conservative.cause == "breaker.learning"
    calls = learner.calls
    assert g.step(learner.optimizer, learner.loss).outcome is LearningOutcome.PAUSED
    assert learner.calls == calls

    clock.now = settings.conservative.cooldown_s
    no_op = gate_once(gate, command(), {}, None)
    for _ in range(settings.conservative.exit_healthy_steps - 1):
        no_op = gate_once(gate, command(), {}, None)
    assert not no_op.conservative
    assert g.step(learner.optimizer, learner.loss).applied  # the trial
    assert g.breaker.state is BreakerState.CLOSED
    assert [e.name for e in sink.drain()] == [
        "breaker_opened",
        "conservative_entered",
        "breaker_half_open",
        "conservative_exited",
        "breaker_closed",
    ]
