"""Baseline policies with the serving policy's decision interface.

``decide(graph, *, greedy, generator, cancelled) -> Inference``, working from the
PolicyGraph's features and masks alone, so anything that runs a ``ServingPolicy``
(the simulator's rollout, a benchmark) runs these unchanged. They have no value head:
``value`` is 0, and so is ``expected_severity`` (no risk head either). They are
parameter-free modules, so a PolicyHolder can run them on the step path (a
PolicyUpdate for them is refused: no architecture accepts its weights).

- :class:`NoOpPolicy`: never acts; what the run does on its own.
- :class:`RandomPolicy`: a uniformly random valid choice at every level of the action
  hierarchy, with its exact log-probability; the floor any learnt policy must clear.
- ``heuristic.HeuristicPolicy``: what a careful engineer would write by hand.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tamiyo_bus.policy.actions import (
    ACTION_SPACE,
    BLEND_METHODS,
    LOG_ALPHA_MAX,
    LOG_ALPHA_MIN,
    LR_LOG_SCALE_MAX,
    NO_OP_ACTION,
    SEED_COLUMN,
    PolicyAction,
)
from tamiyo_bus.policy.graph import PolicyGraph
from tamiyo_bus.policy.network import Cancelled
from tamiyo_bus.policy.serving import Inference


class NoOpPolicy(nn.Module):
    """Always NO_OP, with probability 1."""

    def decide(
        self,
        graph: PolicyGraph,
        *,
        greedy: bool = True,
        generator: torch.Generator | None = None,
        cancelled: Cancelled | None = None,
    ) -> Inference:
        return Inference(PolicyAction(NO_OP_ACTION), 0.0, 0.0, 0.0)


def _uniform_index(allowed: torch.Tensor, generator: torch.Generator | None) -> tuple[int, int]:
    """(a uniformly chosen True position of ``allowed``, how many there were)."""
    choices = torch.nonzero(allowed).flatten()
    pick = int(torch.randint(len(choices), (1,), generator=generator))
    return int(choices[pick]), len(choices)


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


class RandomPolicy(nn.Module):
    """A uniformly random masked choice: action type, then target seed, blueprint, blend
    method, and the continuous parameters uniform over their whole range. ``greedy``
    is ignored (a random policy has no mode); ``generator`` makes it reproducible."""

    def decide(
        self,
        graph: PolicyGraph,
        *,
        greedy: bool = True,
        generator: torch.Generator | None = None,
        cancelled: Cancelled | None = None,
    ) -> Inference:
        masks = graph.masks
        action, count = _uniform_index(masks.action, generator)
        log_prob = -math.log(count)
        spec = ACTION_SPACE[action]
        seed = blueprint = blend = -1
        alpha = lr = 0.0
        if spec.needs_seed:
            seed, count = _uniform_index(masks.seed[:, SEED_COLUMN[action]], generator)
            log_prob -= math.log(count)
        if spec.needs_blueprint:
            blueprint, count = _uniform_index(masks.blueprint[seed], generator)
            log_prob -= math.log(count)
        if spec.has_blend:
            blend = int(torch.randint(len(BLEND_METHODS), (1,), generator=generator))
            alpha = _uniform(LOG_ALPHA_MIN, LOG_ALPHA_MAX, generator)
            log_prob -= math.log(len(BLEND_METHODS)) + math.log(LOG_ALPHA_MAX - LOG_ALPHA_MIN)
        if spec.has_lr:
            lr = _uniform(-LR_LOG_SCALE_MAX, LR_LOG_SCALE_MAX, generator)
            log_prob -= math.log(2.0 * LR_LOG_SCALE_MAX)
        return Inference(
            PolicyAction(action, seed, blueprint, blend, alpha, lr), log_prob, 0.0, 0.0
        )
