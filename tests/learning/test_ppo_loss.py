"""PPO's loss pieces against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from tamiyo_bus.learning.ppo import (
    PPOSettings,
    approx_kl,
    clipped_surrogate,
    explained_variance,
    normalize_advantages,
    ppo_loss,
    value_loss,
)

RAW = PPOSettings(normalize_advantages=False)
RATIO = torch.tensor([1.5, 0.5, 1.0])
ADVANTAGES = torch.tensor([1.0, -1.0, 2.0])
NEW_VALUE = torch.tensor([1.0, 2.0, 0.0])
OLD_VALUE = torch.tensor([0.5, 2.5, 0.1])
RETURNS = torch.tensor([2.0, 1.0, 0.0])
ENTROPY = torch.tensor([0.5, 0.7, 0.9])


def test_defaults_are_the_specified_ones() -> None:
    s = PPOSettings()
    assert (s.clip_ratio, s.entropy_coef, s.value_coef, s.target_kl, s.max_grad_norm) == (
        0.2,
        0.01,
        0.5,
        0.01,
        0.5,
    )


def test_the_clipped_surrogate_takes_the_pessimistic_term() -> None:
    # unclipped r*A = [1.5, -0.5, 2]; clipped = [1.2, -0.8, 2]; min = [1.2, -0.8, 2]
    assert math.isclose(float(clipped_surrogate(RATIO, ADVANTAGES, 0.2)), -0.8, rel_tol=1e-6)


def test_the_surrogate_has_no_gradient_beyond_the_clip_in_the_advantages_direction() -> None:
    ratio = torch.tensor([1.5, 0.5, 1.1], requires_grad=True)
    clipped_surrogate(ratio, torch.tensor([1.0, -1.0, 1.0]), 0.2).backward()
    assert ratio.grad is not None
    assert ratio.grad.tolist()[:2] == [0.0, 0.0]
    assert ratio.grad[2] < 0


def test_value_clipping_keeps_the_worse_of_free_and_clipped_errors() -> None:
    # clipped predictions [0.7, 2.3, 0.0]: errors free [1, 1, 0], clipped [1.69, 1.69, 0]
    assert math.isclose(
        float(value_loss(NEW_VALUE, OLD_VALUE, RETURNS, 0.2)), 0.5 * 3.38 / 3, rel_tol=1e-6
    )
    assert math.isclose(float(value_loss(NEW_VALUE, OLD_VALUE, RETURNS, None)), 1 / 3, rel_tol=1e-6)


def test_approx_kl_is_the_low_variance_estimator() -> None:
    expected = ((0.5 - math.log(1.5)) + (-0.5 - math.log(0.5)) + 0.0) / 3
    assert math.isclose(float(approx_kl(RATIO.log())), expected, rel_tol=1e-6)


def test_the_total_combines_the_parts_with_their_coefficients() -> None:
    old = torch.zeros(3)
    loss = ppo_loss(RATIO.log(), old, ADVANTAGES, NEW_VALUE, OLD_VALUE, RETURNS, ENTROPY, RAW)
    assert math.isclose(float(loss.policy), -0.8, rel_tol=1e-6)
    assert math.isclose(float(loss.value), 0.5 * 3.38 / 3, rel_tol=1e-6)
    assert math.isclose(float(loss.entropy), 0.7, rel_tol=1e-6)
    assert math.isclose(float(loss.total), -0.8 + 0.5 * 0.5 * 3.38 / 3 - 0.01 * 0.7, rel_tol=1e-6)
    assert math.isclose(float(loss.clip_fraction), 2 / 3, rel_tol=1e-6)


def test_advantages_are_normalised_per_minibatch() -> None:
    normalised = normalize_advantages(ADVANTAGES)
    assert abs(float(normalised.mean())) < 1e-6
    assert math.isclose(float(normalised.std()), 1.0, rel_tol=1e-5)
    assert normalize_advantages(torch.tensor([3.0])).tolist() == [0.0]
    old = torch.zeros(3)
    default = ppo_loss(
        RATIO.log(), old, ADVANTAGES, NEW_VALUE, OLD_VALUE, RETURNS, ENTROPY, PPOSettings()
    )
    by_hand = clipped_surrogate(RATIO, normalised, 0.2)
    assert math.isclose(float(default.policy), float(by_hand), rel_tol=1e-6)


def test_explained_variance() -> None:
    target = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert explained_variance(target, target) == 1.0
    assert math.isclose(explained_variance(torch.full((4,), 2.5), target), 0.0, abs_tol=1e-7)
    assert explained_variance(target - 1.0, target) == pytest.approx(1.0)
    assert math.isnan(explained_variance(target, torch.ones(4)))
