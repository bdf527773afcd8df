"""PPO's loss, piece by piece (pure torch, no IO, no module or optimiser).

Every function takes per-sample tensors of one minibatch, so the same code trains a
plain MLP and the hierarchical graph policy: only how the log-probabilities, entropies
and values are computed differs (see ``evaluation``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import torch
from torch import Tensor

_ADVANTAGE_EPS = 1e-8


class MixedPrecision(StrEnum):
    """AUTO: float16 autocast with a GradScaler on CUDA, float32 on the CPU. ON: also
    bfloat16 autocast on the CPU. OFF: float32 everywhere.

    bfloat16 on the CPU measured faster, but it moves the log-probabilities of an
    unchanged policy by an approx KL of 2e-4 to 2.5e-2 against float32, up to and beyond
    ``target_kl``, so PPO's ratios would start as noise; float16 moves them by at most
    about 5e-5 (docs/learning.md).
    """

    AUTO = "auto"
    ON = "on"
    OFF = "off"


@dataclass(frozen=True, slots=True)
class PPOSettings:
    clip_ratio: float = 0.2  # the surrogate ignores ratios outside 1 +- this
    value_clip_range: float | None = 0.2  # in return units; None: no value clipping
    entropy_coef: float = 0.01
    value_coef: float = 0.5
    normalize_advantages: bool = True  # per minibatch
    update_epochs: int = 4  # passes over one batch of transitions
    minibatch_transitions: int = 64
    target_kl: float | None = 0.01  # stop the epochs once a minibatch's KL exceeds it
    max_grad_norm: float = 0.5  # the LearningGuard's clip: must agree with it
    adam_eps: float = 1e-5
    mixed_precision: MixedPrecision = MixedPrecision.AUTO

    def __post_init__(self) -> None:
        if not (self.clip_ratio > 0 and self.max_grad_norm > 0):
            raise ValueError("clip_ratio and max_grad_norm must be > 0")
        if self.update_epochs < 1 or self.minibatch_transitions < 1:
            raise ValueError("update_epochs and minibatch_transitions must be >= 1")


@dataclass(frozen=True, slots=True)
class PPOLoss:
    """The minimised total and its parts; ``approx_kl`` and ``clip_fraction`` are
    detached diagnostics."""

    total: Tensor
    policy: Tensor
    value: Tensor
    entropy: Tensor
    approx_kl: Tensor
    clip_fraction: Tensor


def standardise(advantages: Tensor, mean: Tensor | float, spread: Tensor | float | None) -> Tensor:
    """Centred on ``mean`` and divided by ``spread``, plus a small epsilon so equal
    advantages stay finite; with no spread (a single sample has none) only centred.
    The moments are arguments because a learner on several ranks must share them."""
    centred = advantages - mean
    return centred if spread is None else centred / (spread + _ADVANTAGE_EPS)


def normalize_advantages(advantages: Tensor) -> Tensor:
    """Zero mean, unit (sample) spread within the minibatch."""
    spread = advantages.std() if advantages.numel() >= 2 else None
    return standardise(advantages, advantages.mean(), spread)


def approx_kl(log_ratio: Tensor) -> Tensor:
    """KL(old || new) estimated as mean((r - 1) - log r): unbiased, never negative and
    of lower variance than mean(-log r)."""
    return ((log_ratio.exp() - 1.0) - log_ratio).mean()


def clipped_surrogate(ratio: Tensor, advantages: Tensor, clip_ratio: float) -> Tensor:
    """-E[min(r A, clip(r, 1 - eps, 1 + eps) A)]: the policy part to minimise."""
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip_ratio, 1.0 + clip_ratio) * advantages
    return -torch.minimum(unclipped, clipped).mean()


def value_loss(
    new_value: Tensor, old_value: Tensor, returns: Tensor, clip_range: float | None
) -> Tensor:
    """0.5 E[(V - R)^2]; with clipping, the worse of the free and the clipped error, so
    the critic cannot move further than ``clip_range`` from its old prediction to chase
    one batch."""
    error = (new_value - returns).square()
    if clip_range is not None:
        clipped = old_value + (new_value - old_value).clamp(-clip_range, clip_range)
        error = torch.maximum(error, (clipped - returns).square())
    return 0.5 * error.mean()


def ppo_loss(
    new_log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    new_value: Tensor,
    old_value: Tensor,
    returns: Tensor,
    entropy: Tensor,
    settings: PPOSettings,
) -> PPOLoss:
    """policy + value_coef * value - entropy_coef * entropy, for one minibatch."""
    log_ratio = new_log_prob - old_log_prob
    ratio = log_ratio.exp()
    if settings.normalize_advantages:
        advantages = normalize_advantages(advantages)
    policy = clipped_surrogate(ratio, advantages, settings.clip_ratio)
    value = value_loss(new_value, old_value, returns, settings.value_clip_range)
    mean_entropy = entropy.mean()
    total = policy + settings.value_coef * value - settings.entropy_coef * mean_entropy
    with torch.no_grad():
        kl = approx_kl(log_ratio)
        clip_fraction = ((ratio - 1.0).abs() > settings.clip_ratio).float().mean()
    return PPOLoss(total, policy, value, mean_entropy, kl, clip_fraction)


def explained_variance(predicted: Tensor, target: Tensor) -> float:
    """1 - Var(target - predicted) / Var(target): 1 is a perfect critic, 0 no better
    than the mean, negative worse; NaN when the targets do not vary."""
    variance = float(target.var()) if target.numel() > 1 else 0.0
    if variance == 0.0:
        return float("nan")
    return 1.0 - float((target - predicted).var()) / variance
