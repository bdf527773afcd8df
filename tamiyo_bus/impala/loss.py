"""The V-trace loss (IO-free): targets from ``learning.vtrace``, then the three terms.

Inputs are time-major ``[T, B]``: column b is one segment, its steps at the bottom
(left-padded: row ``T - len_b`` is its first step). V-trace's recursion runs backwards
from the bootstrap value at row T, so padding rows above a segment's first step never
reach its real steps; ``mask`` leaves them out of every mean. The targets and
advantages are computed on detached values (no gradient flows through a target):

    policy loss  = -mean(advantage_t * log pi(a_t | x_t))
    value loss   = 0.5 * mean((v_t - V(x_t))^2)
    entropy      = mean(H(pi(. | x_t)))
    total        = policy + value_loss_coef * value - entropy_coef * entropy

Means are over the unmasked steps of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tamiyo_bus.impala.settings import ImpalaLossSettings
from tamiyo_bus.learning.vtrace import vtrace


@dataclass(frozen=True, slots=True)
class VTraceInputs:
    """One batch for the loss; every tensor ``[T, B]`` except ``bootstrap_value`` ``[B]``."""

    log_probs: Tensor  # the learner's log pi(a_t | x_t), with gradient
    entropies: Tensor  # with gradient
    values: Tensor  # the learner's V(x_t), with gradient
    bootstrap_value: Tensor  # V(x_T) after each segment (unused where it terminated)
    behaviour_log_probs: Tensor  # the actor's log mu(a_t | x_t)
    rewards: Tensor
    terminated: Tensor  # 1.0 where the episode ended at step t
    mask: Tensor  # 1.0 for a real step, 0.0 for padding


@dataclass(frozen=True, slots=True)
class VTraceLoss:
    total: Tensor  # what the optimiser minimises
    policy: Tensor
    value: Tensor
    entropy: Tensor
    value_targets: Tensor  # v_t, [T, B], no gradient
    advantages: Tensor  # [T, B], no gradient
    mean_rho: float  # over the unmasked steps: 1.0 on-policy


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def vtrace_loss(batch: VTraceInputs, settings: ImpalaLossSettings) -> VTraceLoss:
    """The loss of one batch; its gradient reaches the learner's log-probs, entropies
    and values only."""
    targets = vtrace(
        batch.rewards.detach().cpu().numpy(),
        batch.values.detach().float().cpu().numpy(),
        batch.bootstrap_value.detach().float().cpu().numpy(),
        batch.log_probs.detach().float().cpu().numpy(),
        batch.behaviour_log_probs.detach().cpu().numpy(),
        batch.terminated.detach().cpu().numpy(),
        settings.vtrace,
    )
    device = batch.values.device
    value_targets = torch.from_numpy(targets.values).to(device)
    advantages = torch.from_numpy(targets.advantages).to(device)
    mask = batch.mask.to(device)
    policy = -_masked_mean(advantages * batch.log_probs, mask)
    value = 0.5 * _masked_mean((value_targets - batch.values) ** 2, mask)
    entropy = _masked_mean(batch.entropies, mask)
    total = policy + settings.value_loss_coef * value - settings.entropy_coef * entropy
    rhos = torch.from_numpy(targets.rhos).to(device)
    return VTraceLoss(
        total, policy, value, entropy, value_targets, advantages,
        float(_masked_mean(rhos, mask)),
    )  # fmt: skip
