"""GAE against hand-computed values: bootstrapping, terminal states and time-limit cuts."""

from __future__ import annotations

import numpy as np
import pytest

from tamiyo_bus.learning.gae import GAESettings, compute_gae, next_state_values

HAND = GAESettings(gamma=0.9, gae_lambda=0.8)  # gamma * lambda = 0.72
REWARDS = np.array([1.0, 2.0, 3.0], np.float32)
VALUES = np.array([0.5, 1.0, 1.5], np.float32)
LAST_VALUE = 2.0
NONE = np.zeros(3, np.bool_)


def flags(*steps: int) -> np.ndarray:
    out = np.zeros(3, np.bool_)
    out[list(steps)] = True
    return out


def test_an_unbroken_rollout_bootstraps_the_last_value() -> None:
    next_values = next_state_values(VALUES, LAST_VALUE, NONE)
    assert next_values.tolist() == [1.0, 1.5, 2.0]
    result = compute_gae(REWARDS, VALUES, next_values, NONE, NONE, HAND)
    # deltas: 1 + .9*1 - .5 = 1.4; 2 + .9*1.5 - 1 = 2.35; 3 + .9*2 - 1.5 = 3.3
    expected = [1.4 + 0.72 * (2.35 + 0.72 * 3.3), 2.35 + 0.72 * 3.3, 3.3]
    np.testing.assert_allclose(result.advantages, expected, rtol=1e-6)
    np.testing.assert_allclose(result.returns, np.array(expected) + VALUES, rtol=1e-6)


def test_a_terminal_state_is_not_bootstrapped_and_cuts_the_trace() -> None:
    next_values = next_state_values(VALUES, LAST_VALUE, NONE)
    result = compute_gae(REWARDS, VALUES, next_values, flags(1), NONE, HAND)
    # step 1: 2 - 1 = 1.0, nothing from step 2; step 0: 1.4 + .72 * 1.0
    np.testing.assert_allclose(result.advantages, [1.4 + 0.72 * 1.0, 1.0, 3.3], rtol=1e-6)


def test_a_time_limit_cut_bootstraps_from_the_final_state_but_cuts_the_trace() -> None:
    final_values = np.array([0.0, 4.0, 0.0], np.float32)
    truncated = flags(1)
    next_values = next_state_values(VALUES, LAST_VALUE, truncated, final_values)
    assert next_values.tolist() == [1.0, 4.0, 2.0]
    result = compute_gae(REWARDS, VALUES, next_values, NONE, truncated, HAND)
    # step 1: 2 + .9*4 - 1 = 4.6 (bootstrapped, unlike a terminal state)
    np.testing.assert_allclose(result.advantages, [1.4 + 0.72 * 4.6, 4.6, 3.3], rtol=1e-6)


def test_a_cut_inside_the_rollout_needs_the_final_states_value() -> None:
    with pytest.raises(ValueError, match="final_values"):
        next_state_values(VALUES, LAST_VALUE, flags(1))


def test_the_defaults_are_gamma_099_and_lambda_095() -> None:
    settings = GAESettings()
    assert (settings.gamma, settings.gae_lambda) == (0.99, 0.95)
    rewards, values = np.array([1.0, 0.0], np.float32), np.array([0.0, 0.0], np.float32)
    next_values = np.array([0.0, 10.0], np.float32)
    result = compute_gae(rewards, values, next_values, np.zeros(2, bool), np.zeros(2, bool))
    np.testing.assert_allclose(result.advantages, [1.0 + 0.99 * 0.95 * 9.9, 9.9], rtol=1e-6)


def test_parallel_environments_are_independent_columns() -> None:
    rng = np.random.default_rng(0)
    rewards, values = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    last = rng.normal(size=3)
    terminated = rng.random((6, 3)) < 0.2
    truncated = ~terminated & (rng.random((6, 3)) < 0.2)
    finals = rng.normal(size=(6, 3))
    together = compute_gae(
        rewards, values, next_state_values(values, last, truncated, finals), terminated, truncated
    )
    for env in range(3):
        alone = compute_gae(
            rewards[:, env],
            values[:, env],
            next_state_values(values[:, env], last[env], truncated[:, env], finals[:, env]),
            terminated[:, env],
            truncated[:, env],
        )
        np.testing.assert_allclose(together.advantages[:, env], alone.advantages, rtol=1e-5)
