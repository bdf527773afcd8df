"""Imitation of a teacher policy before PPO: behaviour cloning with a critic target.

From scratch, PPO's first lesson on the simulator is that almost every action but
NO_OP costs (random learning-rate changes, culls and germinations during instability
pay in spikes and emergencies), and its entropy collapses onto NO_OP before it has
found the long chain (germinate at a deficit layer, start training, wait for the
gate, start blending) that pays. Cloning a teacher that already walks that chain (the
heuristic) starts PPO where the chain is taken, and PPO then improves on it.

The loss for a minibatch is ``-mean(log pi(teacher's whole choice)) + value_coef *
mean((V - G)^2)``, ``G`` the teacher's discounted return from that decision on, so the
critic starts from the teacher's values instead of zero. Every step goes through the
learner's guard and optimiser, as a PPO step does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tamiyo_bus.learning.episodes import Demonstrations
from tamiyo_bus.learning.evaluation import Evaluation, PolicyEvaluator
from tamiyo_bus.learning.graph_batch import GraphTransitions
from tamiyo_bus.learning.guard import LearningGuard


@dataclass(frozen=True)
class ImitationSettings:
    """Behaviour cloning before PPO (``episodes`` 0: none)."""

    episodes: int = 0  # teacher episodes of every simulated run
    epochs: int = 4  # passes over them
    minibatch_transitions: int = 256
    value_coef: float = 0.5

    def __post_init__(self) -> None:
        if self.episodes < 0 or self.epochs < 1 or self.minibatch_transitions < 1:
            raise ValueError("need episodes >= 0, epochs >= 1, minibatch_transitions >= 1")


def imitation_loss(evaluation: Evaluation, returns: Tensor, value_coef: float) -> Tensor:
    """Negative log-likelihood of the teacher's choices plus the critic's squared error."""
    value_error = (evaluation.value - returns.to(evaluation.value.device)).square().mean()
    loss: Tensor = -evaluation.log_prob.mean() + value_coef * value_error
    return loss


def imitate(
    evaluator: PolicyEvaluator[GraphTransitions],
    optimizer: torch.optim.Optimizer,
    guard: LearningGuard,
    demos: Demonstrations,
    settings: ImitationSettings,
    generator: torch.Generator | None = None,
) -> list[float]:
    """Epochs of shuffled minibatches; the loss of every applied step, in order."""
    losses: list[float] = []
    for _ in range(settings.epochs):
        order = torch.randperm(len(demos), generator=generator)
        for start in range(0, len(demos), settings.minibatch_transitions):
            rows = order[start : start + settings.minibatch_transitions]

            def loss_fn(rows: Tensor = rows) -> Tensor:
                evaluation = evaluator.evaluate(demos.inputs, rows)
                return imitation_loss(evaluation, demos.returns[rows], settings.value_coef)

            result = guard.step(optimizer, loss_fn)
            if result.applied and result.loss is not None:
                losses.append(result.loss)
    return losses
