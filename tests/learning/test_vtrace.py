"""V-trace against hand-computed targets; on-policy, its targets are n-step returns."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tamiyo_bus.learning.vtrace import VTraceSettings, vtrace


def test_two_steps_by_hand() -> None:
    # ratios pi/mu: 0.5/0.25 = 2 (truncated to 1) and 0.2/0.4 = 0.5
    out = vtrace(
        rewards=[1.0, 2.0],
        values=[0.5, 0.4],
        bootstrap_value=0.3,
        target_log_probs=[math.log(0.5), math.log(0.2)],
        behaviour_log_probs=[math.log(0.25), math.log(0.4)],
        terminated=[False, False],
        settings=VTraceSettings(gamma=0.9),
    )
    # deltas: 1 (1 + 0.9 0.4 - 0.5) = 0.86; 0.5 (2 + 0.9 0.3 - 0.4) = 0.935
    # v_1 = 0.4 + 0.935; v_0 = 0.5 + 0.86 + 0.9 * 1 * 0.935
    assert out.rhos == pytest.approx([1.0, 0.5])
    assert out.values == pytest.approx([0.5 + 0.86 + 0.9 * 0.935, 0.4 + 0.935], abs=1e-6)
    # advantages: rho_s (r_s + gamma v_{s+1} - V(x_s)), v_T the bootstrap value
    assert out.advantages == pytest.approx(
        [1.0 * (1.0 + 0.9 * (0.4 + 0.935) - 0.5), 0.5 * (2.0 + 0.9 * 0.3 - 0.4)], abs=1e-6
    )


def n_step_returns(
    rewards: np.ndarray, bootstrap: float, terminated: np.ndarray, gamma: float
) -> np.ndarray:
    out, carry = np.zeros_like(rewards), bootstrap
    for t in range(len(rewards) - 1, -1, -1):
        carry = rewards[t] + gamma * (1.0 - terminated[t]) * carry
        out[t] = carry
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_on_policy_targets_are_the_n_step_returns(seed: int) -> None:
    rng = np.random.default_rng(seed)
    steps = 20
    rewards = rng.normal(size=steps)
    values = rng.normal(size=steps)
    terminated = rng.random(steps) < 0.15
    log_probs = np.log(rng.uniform(0.05, 1.0, size=steps))
    out = vtrace(rewards, values, 0.7, log_probs, log_probs, terminated, VTraceSettings(gamma=0.97))
    expected = n_step_returns(rewards, 0.7, terminated.astype(np.float64), 0.97)
    assert out.values == pytest.approx(expected, abs=1e-5)
    assert out.rhos == pytest.approx(np.ones(steps))


def test_nothing_is_carried_past_the_end_of_an_episode() -> None:
    out = vtrace(
        rewards=[1.0, 5.0],
        values=[0.0, 0.0],
        bootstrap_value=100.0,
        target_log_probs=[0.0, 0.0],
        behaviour_log_probs=[0.0, 0.0],
        terminated=[True, True],
        settings=VTraceSettings(gamma=0.9),
    )
    assert out.values == pytest.approx([1.0, 5.0])  # neither the next step nor the bootstrap


def test_batched_segments_are_independent() -> None:
    rng = np.random.default_rng(5)
    rewards, values = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    target, behaviour = rng.normal(size=(6, 3)) * 0.1, rng.normal(size=(6, 3)) * 0.1
    terminated = np.zeros((6, 3), dtype=bool)
    bootstrap = rng.normal(size=3)
    together = vtrace(rewards, values, bootstrap, target, behaviour, terminated)
    for b in range(3):
        alone = vtrace(
            rewards[:, b], values[:, b], bootstrap[b], target[:, b], behaviour[:, b],
            terminated[:, b],
        )  # fmt: skip
        assert together.values[:, b] == pytest.approx(alone.values, abs=1e-6)
        assert together.advantages[:, b] == pytest.approx(alone.advantages, abs=1e-6)
