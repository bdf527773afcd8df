"""The V-trace loss (IO-free): targets from ``learning.vtrace``, then the three terms.

Inputs are time-major ``[T, B]``: column b is one segment, its steps at the bottom
(left-padded: row ``T - len_b`` is its first step). V-trace's recursion runs backwards
from the bootstrap value at row T, so padding rows above a segment's first step never
reach its real steps; ``mask`` leaves them out of every mean. The targets and
advantages are computed on detached values (no gradient flows through a target):

    policy loss  = -mean(A_t * log pi(a_t | x_t))   (A: the advantages, normalised
                                                    over the batch by default)
    value loss   = 0.5 * mean((v_t - V(x_t))^2)
    entropy      = mean(H(pi(. | x_t)))
    total        = policy + value_loss_coef * value - entropy_coef * entropy

Means are over the unmasked steps of the batch. The advantages are normalised with
the moments of every real step of the update (``AdvantageMoments``): on several ranks
those are summed over the ranks, so each rank weighs its steps as one process would
weigh the whole batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from tamiyo_bus.impala.settings import ImpalaLossSettings
from tamiyo_bus.learning.ppo import standardise
from tamiyo_bus.learning.vtrace import VTraceSettings, VTraceTargets, vtrace


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
    advantages: Tensor  # V-trace's, [T, B], no gradient (before any normalisation)
    mean_rho: float  # over the unmasked steps: 1.0 on-policy


@dataclass(frozen=True, slots=True)
class AdvantageMoments:
    """Count, sum and sum of squares of the advantages of real steps: sums, so the
    moments of several ranks' batches are the sums of theirs."""

    count: float = 0.0
    total: float = 0.0
    squares: float = 0.0

    @classmethod
    def of(cls, batch: VTraceInputs, targets: VTraceTargets) -> AdvantageMoments:
        real = targets.advantages[batch.mask.detach().cpu().numpy() > 0].astype("float64")
        return cls(float(real.size), float(real.sum()), float((real**2).sum()))

    def standardise(self, advantages: Tensor) -> Tensor:
        """Zero mean, unit (sample) spread over the steps counted, as PPO's minibatches."""
        mean = self.total / max(self.count, 1.0)
        spread = None
        if self.count >= 2:
            variance = max(self.squares - self.count * mean * mean, 0.0) / (self.count - 1.0)
            spread = math.sqrt(variance)
        return standardise(advantages, mean, spread)


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def vtrace_targets(batch: VTraceInputs, settings: VTraceSettings) -> VTraceTargets:
    """V-trace's targets of the batch, from its detached values and log-probs."""
    return vtrace(
        batch.rewards.detach().cpu().numpy(),
        batch.values.detach().float().cpu().numpy(),
        batch.bootstrap_value.detach().float().cpu().numpy(),
        batch.log_probs.detach().float().cpu().numpy(),
        batch.behaviour_log_probs.detach().cpu().numpy(),
        batch.terminated.detach().cpu().numpy(),
        settings,
    )


def vtrace_loss(
    batch: VTraceInputs,
    settings: ImpalaLossSettings,
    targets: VTraceTargets | None = None,
    moments: AdvantageMoments | None = None,
) -> VTraceLoss:
    """The loss of one batch; its gradient reaches the learner's log-probs, entropies
    and values only. ``targets``: the batch's, when already computed; ``moments``: the
    advantages' over the whole update (default: this batch's)."""
    if targets is None:
        targets = vtrace_targets(batch, settings.vtrace)
    device = batch.values.device
    value_targets = torch.from_numpy(targets.values).to(device)
    advantages = torch.from_numpy(targets.advantages).to(device)
    mask = batch.mask.to(device)
    weights = advantages
    if settings.normalize_advantages:
        scale = moments if moments is not None else AdvantageMoments.of(batch, targets)
        weights = scale.standardise(advantages) * mask
    policy = -_masked_mean(weights * batch.log_probs, mask)
    value = 0.5 * _masked_mean((value_targets - batch.values) ** 2, mask)
    entropy = _masked_mean(batch.entropies, mask)
    total = policy + settings.value_loss_coef * value - settings.entropy_coef * entropy
    rhos = torch.from_numpy(targets.rhos).to(device)
    return VTraceLoss(
        total, policy, value, entropy, value_targets, advantages,
        float(_masked_mean(rhos, mask)),
    )  # fmt: skip
