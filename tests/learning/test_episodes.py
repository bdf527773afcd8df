"""From played episodes to learning's inputs: the PPO batch (GAE over each episode, in
decision order), the teacher's demonstrations (discounted returns) and the feature
observations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tamiyo_bus.learning.episodes import demonstrations, observed_features, rollout_batch
from tamiyo_bus.learning.gae import GAESettings, compute_gae, next_state_values
from tamiyo_bus.policy.baselines import RandomPolicy
from tamiyo_bus.policy.schema import NODE_TYPES
from tamiyo_bus.sim import SimSettings, VectorSim
from tamiyo_bus.sim.rollout import Episode, graph_builder, run_episode

ONE_EPOCH = SimSettings(epochs=1)  # 25 decisions per episode


@pytest.fixture(scope="module")
def episodes() -> list[Episode]:
    sim = VectorSim(ONE_EPOCH, runs=3, seed=4)
    generator = torch.Generator().manual_seed(4)
    return run_episode(sim, [RandomPolicy()] * 3, graph_builder(sim), generator=generator)


def test_the_batch_holds_every_decision_with_gae_over_each_episode(
    episodes: list[Episode],
) -> None:
    gae = GAESettings(gamma=0.9, gae_lambda=0.8)
    batch = rollout_batch(episodes, gae, reward_scale=10.0)
    decisions = len(episodes[0].records)
    assert len(batch) == len(batch.inputs) == 3 * decisions
    second = episodes[1].records
    rows = slice(decisions, 2 * decisions)
    rewards = np.array([r.reward for r in second]) * 10.0
    values = np.zeros(decisions)  # the random policy has no critic
    terminal = np.arange(decisions) == decisions - 1
    expected = compute_gae(
        rewards,
        values,
        next_state_values(values, 0.0, np.zeros(decisions, bool)),
        terminal,
        np.zeros(decisions, bool),
        gae,
    )
    np.testing.assert_allclose(batch.advantages[rows], expected.advantages, rtol=1e-6)
    np.testing.assert_allclose(batch.returns[rows], expected.returns, rtol=1e-6)
    np.testing.assert_allclose(batch.old_log_prob[rows], [r.log_prob for r in second])
    # The batch's transition i is decision i of the episodes in order.
    group = batch.inputs.groups[int(batch.inputs.group_of[decisions])]
    first_action = group.actions.action[int(batch.inputs.row_of[decisions])]
    assert int(first_action) == second[0].action.action
    features = observed_features(episodes)
    assert set(features) == set(NODE_TYPES)
    assert all(len(v) == 3 * decisions for v in features.values())


def test_demonstrations_hold_the_discounted_return_to_the_episode_end(
    episodes: list[Episode],
) -> None:
    demos = demonstrations(episodes, gamma=0.5, reward_scale=2.0)
    rewards = [2.0 * r.reward for r in episodes[2].records]
    expected = [sum(0.5**k * r for k, r in enumerate(rewards[t:])) for t in range(len(rewards))]
    decisions = len(rewards)
    assert len(demos) == 3 * decisions
    np.testing.assert_allclose(demos.returns[2 * decisions :], expected, rtol=1e-5, atol=1e-7)
