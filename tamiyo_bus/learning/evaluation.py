"""What PPO needs from a policy: log-probability, entropy and value of chosen actions.

The learner never looks inside a policy: an evaluator turns a minibatch of its inputs
into these three tensors. ``CategoricalEvaluator`` serves any module that returns
(logits, value); ``graph_evaluation.GraphPolicyEvaluator`` serves Tamiyo's graph policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, TypeVar

import torch
from torch import Tensor, nn

from tamiyo_bus.learning.hierarchical import categorical_entropy, masked_log_softmax

InputsT = TypeVar("InputsT", contravariant=True)


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Per selected transition, in the order of the indices asked for."""

    log_prob: Tensor  # [M] of the action that was taken
    entropy: Tensor  # [M] of the whole action distribution
    value: Tensor  # [M]


class PolicyEvaluator(Protocol[InputsT]):
    @property
    def module(self) -> nn.Module:
        """The trained parameters (the optimiser's)."""

    def evaluate(self, inputs: InputsT, indices: Tensor) -> Evaluation:
        """The transitions ``indices`` of ``inputs`` under the current parameters."""


@dataclass(frozen=True, slots=True)
class CategoricalInputs:
    observations: Tensor  # [T, ...]
    actions: Tensor  # [T] int64
    masks: Tensor | None = None  # [T, A] bool: valid actions


class CategoricalEvaluator:
    """A module mapping observations to (logits [M, A], value [M] or [M, 1])."""

    def __init__(self, module: nn.Module) -> None:
        self._module = module

    @property
    def module(self) -> nn.Module:
        return self._module

    def evaluate(self, inputs: CategoricalInputs, indices: Tensor) -> Evaluation:
        device = next(self._module.parameters()).device
        rows = indices.to(inputs.observations.device)
        logits, value = self._module(inputs.observations[rows].to(device))
        if inputs.masks is None:
            log_probs = torch.log_softmax(logits.float(), dim=-1)
        else:
            log_probs = masked_log_softmax(logits, inputs.masks[rows].to(device), -1)
        actions = inputs.actions[rows].to(device)
        chosen = log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        return Evaluation(chosen, categorical_entropy(log_probs, -1), value.float().reshape(-1))
