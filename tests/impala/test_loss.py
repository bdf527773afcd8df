"""The V-trace loss against values worked out by hand: on-policy its targets are the
n-step returns; importance weights are truncated at rho-bar; a left-padded segment gets
the targets it gets alone; no gradient flows through the targets; normalised, the
policy gradient weighs each real step by its advantage's standard score, padding by
nothing."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from tamiyo_bus.impala.loss import VTraceInputs, vtrace_loss
from tamiyo_bus.impala.settings import ImpalaLossSettings
from tamiyo_bus.learning.vtrace import VTraceSettings

GAMMA = 0.9
SETTINGS = ImpalaLossSettings(
    VTraceSettings(gamma=GAMMA), value_loss_coef=0.5, entropy_coef=0.1, normalize_advantages=False
)


def _inputs(
    rewards: list[list[float]], values: list[list[float]], bootstrap: list[float],
    log_probs: list[list[float]], behaviour: list[list[float]],
    mask: list[list[float]] | None = None,
) -> VTraceInputs:  # fmt: skip
    r = torch.tensor(rewards)
    return VTraceInputs(
        torch.tensor(log_probs, requires_grad=True),
        torch.ones_like(r, requires_grad=True),
        torch.tensor(values, requires_grad=True),
        torch.tensor(bootstrap),
        torch.tensor(behaviour),
        r,
        torch.zeros_like(r),
        torch.ones_like(r) if mask is None else torch.tensor(mask),
    )


def test_on_policy_the_targets_are_the_n_step_returns_and_the_terms_follow() -> None:
    half = math.log(0.5)
    batch = _inputs([[1.0], [2.0], [3.0]], [[0.5], [0.5], [0.5]], [1.0],
                    [[half]] * 3, [[half]] * 3)  # fmt: skip
    loss = vtrace_loss(batch, SETTINGS)
    v2 = 3.0 + GAMMA * 1.0
    v1 = 2.0 + GAMMA * v2
    v0 = 1.0 + GAMMA * v1
    assert loss.value_targets[:, 0].tolist() == pytest.approx([v0, v1, v2], rel=1e-5)
    advantages = [v0 - 0.5, v1 - 0.5, v2 - 0.5]  # r_t + gamma v_{t+1} - V(x_t)
    assert loss.advantages[:, 0].tolist() == pytest.approx(advantages, rel=1e-5)
    policy = -sum(a * half for a in advantages) / 3
    value = 0.5 * sum((v - 0.5) ** 2 for v in (v0, v1, v2)) / 3
    assert loss.policy.item() == pytest.approx(policy, rel=1e-5)
    assert loss.value.item() == pytest.approx(value, rel=1e-5)
    assert loss.entropy.item() == pytest.approx(1.0)
    assert loss.total.item() == pytest.approx(policy + 0.5 * value - 0.1 * 1.0, rel=1e-5)
    assert loss.mean_rho == pytest.approx(1.0)


def test_the_importance_weight_is_truncated_at_rho_bar() -> None:
    # one step, V = 0, bootstrap 2, reward 1: target = rho * (1 + 0.9 * 2)
    below = vtrace_loss(_inputs([[1.0]], [[0.0]], [2.0], [[math.log(0.25)]], [[math.log(0.5)]]),
                        SETTINGS)  # fmt: skip
    above = vtrace_loss(_inputs([[1.0]], [[0.0]], [2.0], [[math.log(0.9)]], [[math.log(0.3)]]),
                        SETTINGS)  # fmt: skip
    assert float(below.value_targets[0, 0]) == pytest.approx(0.5 * 2.8, rel=1e-5)
    assert float(above.value_targets[0, 0]) == pytest.approx(1.0 * 2.8, rel=1e-5)
    assert above.mean_rho == pytest.approx(1.0) and below.mean_rho == pytest.approx(0.5)


def test_a_left_padded_segment_gets_the_targets_it_gets_alone() -> None:
    lp, mu = math.log(0.4), math.log(0.5)
    alone = vtrace_loss(_inputs([[2.0], [3.0]], [[0.1], [0.2]], [1.0], [[lp]] * 2, [[mu]] * 2),
                        SETTINGS)  # fmt: skip
    padded = vtrace_loss(
        _inputs([[9.0, 1.0], [2.0, 1.0], [3.0, 1.0]], [[7.0, 0.3], [0.1, 0.3], [0.2, 0.3]],
                [1.0, 0.5], [[0.0, lp], [lp, lp], [lp, lp]], [[0.0, mu], [mu, mu], [mu, mu]],
                mask=[[0.0, 1.0], [1.0, 1.0], [1.0, 1.0]]),
        SETTINGS,
    )  # fmt: skip
    torch.testing.assert_close(padded.value_targets[1:, 0], alone.value_targets[:, 0])
    torch.testing.assert_close(padded.advantages[1:, 0], alone.advantages[:, 0])


def test_no_gradient_flows_through_the_targets() -> None:
    batch = _inputs([[1.0], [2.0]], [[0.5], [0.25]], [1.0], [[-1.0]] * 2, [[-1.0]] * 2)
    loss = vtrace_loss(batch, SETTINGS)
    loss.value.backward()  # type: ignore[no-untyped-call]
    expected = -(loss.value_targets - batch.values.detach()) / 2  # d/dV of 0.5 mean (v - V)^2
    assert batch.values.grad is not None
    torch.testing.assert_close(batch.values.grad, expected)


def test_normalised_the_policy_gradient_weighs_real_steps_by_their_standard_score() -> None:
    lp, mu = math.log(0.4), math.log(0.5)
    inputs = _inputs(
        [[9.0, 1.0], [2.0, 1.0], [3.0, -1.0]], [[7.0, 0.3], [0.1, 0.3], [0.2, 0.3]],
        [1.0, 0.5], [[0.0, lp], [lp, lp], [lp, lp]], [[0.0, mu], [mu, mu], [mu, mu]],
        mask=[[0.0, 1.0], [1.0, 1.0], [1.0, 1.0]],
    )  # fmt: skip
    normalised = vtrace_loss(inputs, replace(SETTINGS, normalize_advantages=True))
    raw = vtrace_loss(inputs, SETTINGS)
    torch.testing.assert_close(normalised.advantages, raw.advantages)  # reported as V-trace's
    real = inputs.mask.bool()
    scores = (raw.advantages[real] - raw.advantages[real].mean()) / raw.advantages[real].std()
    normalised.policy.backward()  # type: ignore[no-untyped-call]
    assert inputs.log_probs.grad is not None
    torch.testing.assert_close(
        inputs.log_probs.grad[real], -scores / real.sum(), rtol=1e-4, atol=1e-6
    )
    assert float(inputs.log_probs.grad[0, 0]) == 0.0  # padding
    assert normalised.value.item() == pytest.approx(raw.value.item())
