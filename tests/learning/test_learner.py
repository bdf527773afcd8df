"""The PPO learner: it learns a control task with a plain MLP and a bandit with the
graph policy, every step goes through the LearningGuard, the LRController owns the
learning rate, the KL target stops the epochs, and mixed precision is chosen per device."""

from __future__ import annotations

import math

import pytest
import torch

from oona.breaker import BreakerSettings, CircuitBreaker
from tamiyo_bus.learning.evaluation import CategoricalInputs, Evaluation
from tamiyo_bus.learning.gae import Advantages
from tamiyo_bus.learning.graph_batch import GraphTransitions
from tamiyo_bus.learning.graph_evaluation import GraphPolicyEvaluator
from tamiyo_bus.learning.guard import LearningGuard, LearningGuardSettings, LearningOutcome
from tamiyo_bus.learning.learner import (
    PPOBatch,
    PPOLearner,
    PPOUpdateStats,
    StatsSink,
    autocast_dtype,
)
from tamiyo_bus.learning.ppo import MixedPrecision, PPOSettings
from tamiyo_bus.policy.reference import ReferencePolicy
from tamiyo_bus.tolaria.lr import LRController, LRSettings

from ..risk.helpers import Clock
from .cartpole import CartPoles
from .graphs import TINY, graphs, sampled_actions
from .rollouts import ActorCritic, collect, evaluator, train

CONSTANT = LRSettings(base_lr=1e-3, warmup_steps=0, total_steps=1, min_lr_ratio=1.0)


def guard(paused: bool = False, max_grad_norm: float = 0.5) -> LearningGuard:
    breaker = CircuitBreaker("learning", BreakerSettings(3, 1_000.0, 1), clock=Clock())
    return LearningGuard(breaker, lambda: paused, LearningGuardSettings(max_grad_norm))


def cartpole_learner(
    settings: PPOSettings,
    *,
    lr: LRController | None = None,
    learning_guard: LearningGuard | None = None,
    sink: StatsSink | None = None,
) -> tuple[PPOLearner[CategoricalInputs], ActorCritic]:
    torch.manual_seed(0)
    model = ActorCritic()
    learner = PPOLearner(
        evaluator(model),
        learning_guard or guard(),
        lr or LRController(CONSTANT),
        settings,
        sink=sink,
        generator=torch.Generator().manual_seed(0),
    )
    return learner, model


def one_batch(model: ActorCritic, seed: int = 0) -> PPOBatch[CategoricalInputs]:
    return collect(model, CartPoles(4, seed), 64, torch.Generator().manual_seed(seed))


def test_ppo_on_a_small_mlp_learns_to_balance_the_pole() -> None:
    learner, model = cartpole_learner(PPOSettings(minibatch_transitions=256))
    lengths = train(learner, model, CartPoles(8, seed=0), updates=25)
    # A random policy balances for about 22 steps; the time limit is 200.
    assert lengths[0] < 40
    assert lengths[-1] > 150


def test_every_step_goes_through_the_guard_and_advances_the_lr_controller() -> None:
    lr = LRController(LRSettings(base_lr=1e-3, warmup_steps=4, total_steps=100))
    seen: list[PPOUpdateStats] = []
    learner, model = cartpole_learner(PPOSettings(target_kl=None), lr=lr, sink=seen.append)
    assert learner.optimizer.param_groups[0]["lr"] == lr.learning_rate
    stats = learner.update(one_batch(model))
    assert seen == [stats]
    assert stats.applied_steps == 4 * 4  # 4 epochs of 256 / 64
    assert learner.guard.outcomes[LearningOutcome.APPLIED] == stats.applied_steps
    assert lr.step == stats.applied_steps
    assert learner.optimizer.param_groups[0]["lr"] == lr.learning_rate
    lr.apply_scale(0.5)  # Tamiyo's OPTIMIZER command reaches this optimiser too
    assert learner.optimizer.param_groups[0]["lr"] == lr.learning_rate
    for value in (stats.policy_loss, stats.value_loss, stats.entropy, stats.grad_norm):
        assert math.isfinite(value)
    assert 0.0 <= stats.clip_fraction <= 1.0 and stats.approx_kl >= 0.0


def test_a_paused_guard_refuses_the_update_and_nothing_changes() -> None:
    lr = LRController(CONSTANT)
    learner, model = cartpole_learner(PPOSettings(), lr=lr, learning_guard=guard(paused=True))
    before = [p.detach().clone() for p in model.parameters()]
    stats = learner.update(one_batch(model))
    assert stats.refused is LearningOutcome.PAUSED
    assert stats.applied_steps == 0 and math.isnan(stats.policy_loss)
    assert lr.step == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


class NonFinite:
    """An evaluator whose values are NaN: every loss is non-finite."""

    def __init__(self, model: ActorCritic) -> None:
        self.inner = evaluator(model)

    @property
    def module(self) -> torch.nn.Module:
        return self.inner.module

    def evaluate(self, inputs: CategoricalInputs, indices: torch.Tensor) -> Evaluation:
        e = self.inner.evaluate(inputs, indices)
        return Evaluation(e.log_prob, e.entropy, e.value * math.nan)


def test_non_finite_losses_are_not_applied_and_open_the_breaker() -> None:
    torch.manual_seed(0)
    model = ActorCritic()
    learner = PPOLearner(NonFinite(model), guard(), LRController(CONSTANT), PPOSettings())
    before = [p.detach().clone() for p in model.parameters()]
    stats = learner.update(one_batch(model))
    assert stats.failed_steps == 3  # the breaker's threshold, then it refuses
    assert stats.refused is LearningOutcome.BREAKER_OPEN
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_the_kl_target_stops_the_epochs() -> None:
    learner, model = cartpole_learner(PPOSettings(target_kl=1e-12))
    stats = learner.update(one_batch(model))
    # The first minibatch is measured before any step (ratio 1, KL 0); the second
    # measures the first step's change and stops the update after its own step.
    assert stats.stopped_at_kl and stats.applied_steps == 2 and stats.epochs == 1


def test_the_guard_and_the_settings_must_clip_alike() -> None:
    with pytest.raises(ValueError, match=r"clips at 1\.0"):
        cartpole_learner(PPOSettings(), learning_guard=guard(max_grad_norm=1.0))


def test_mixed_precision_per_device() -> None:
    assert autocast_dtype(MixedPrecision.AUTO, "cuda") is torch.float16
    assert autocast_dtype(MixedPrecision.AUTO, "cpu") is None
    assert autocast_dtype(MixedPrecision.ON, "cpu") is torch.bfloat16
    assert autocast_dtype(MixedPrecision.OFF, "cuda") is None
    learner, model = cartpole_learner(PPOSettings(mixed_precision=MixedPrecision.ON))
    assert learner.scaler is None  # bfloat16 needs no loss scaling
    stats = learner.update(one_batch(model))
    assert stats.applied_steps > 0 and math.isfinite(stats.policy_loss)


def test_ppo_on_the_graph_policy_raises_the_probability_of_rewarded_choices() -> None:
    torch.manual_seed(0)
    policy = ReferencePolicy(TINY)
    graph_list = graphs(24, structures=3)
    actions = sampled_actions(policy, graph_list)
    rewarded = torch.tensor([float(a.action == 4) for a in actions])
    assert 0 < rewarded.sum() < len(actions)
    transitions = GraphTransitions.of(graph_list, actions)
    evaluation = GraphPolicyEvaluator(policy)
    every = torch.arange(len(actions))
    with torch.no_grad():
        start = evaluation.evaluate(transitions, every)
    learner = PPOLearner(
        evaluation,
        guard(),
        LRController(CONSTANT),
        PPOSettings(minibatch_transitions=12, target_kl=None),
    )
    advantages = rewarded * 2.0 - 1.0
    batch = PPOBatch.of(
        transitions,
        start.log_prob,
        start.value,
        Advantages(advantages.numpy(), (advantages + start.value).numpy()),
    )
    for _ in range(3):
        stats = learner.update(batch)
        assert stats.failed_steps == 0
    with torch.no_grad():
        end = evaluation.evaluate(transitions, every)
    gained = end.log_prob - start.log_prob
    assert gained[rewarded == 1].mean() > 0.1
    assert gained[rewarded == 0].mean() < 0.0
