"""The PPO trainer on the simulator: the batch it builds from episodes, what it reports
per update, reproducibility, and that it learns to beat the random policy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tamiyo_bus.learning.gae import GAESettings, compute_gae, next_state_values
from tamiyo_bus.learning.trainer import (
    PPOTrainer,
    TrainerSettings,
    TrainingStats,
    observed_features,
    rollout_batch,
)
from tamiyo_bus.policy.baselines import RandomPolicy
from tamiyo_bus.policy.schema import NODE_TYPES
from tamiyo_bus.sim import SimSettings, VectorSim
from tamiyo_bus.sim.returns import episode_returns
from tamiyo_bus.sim.rollout import graph_builder, run_episode

ONE_EPOCH = SimSettings(epochs=1)  # 25 decisions per episode
TINY_TRAINING = TrainerSettings(runs_per_rollout=2, sim=ONE_EPOCH)


def test_the_batch_holds_every_decision_with_gae_over_each_episode() -> None:
    sim = VectorSim(ONE_EPOCH, runs=3, seed=4)
    episodes = run_episode(
        sim, [RandomPolicy()] * 3, graph_builder(sim), generator=torch.Generator().manual_seed(4)
    )
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


def test_each_update_reports_its_figures_to_the_sink() -> None:
    seen: list[TrainingStats] = []
    trainer = PPOTrainer(TINY_TRAINING, sink=seen.append)
    before = trainer.normalizer.snapshot
    first = trainer.iterate()
    second = trainer.iterate()
    assert seen == [first, second]
    decisions = ONE_EPOCH.total_steps // ONE_EPOCH.decision_every_steps
    assert (second.update, second.decisions) == (2, 2 * 2 * decisions)
    assert second.env_steps == 2 * 2 * ONE_EPOCH.total_steps
    ppo = second.ppo
    assert ppo.applied_steps >= 1 and ppo.refused is None
    for value in (ppo.policy_loss, ppo.value_loss, ppo.entropy, ppo.grad_norm, ppo.learning_rate):
        assert math.isfinite(value)
    assert math.isfinite(second.mean_episode_return) and second.rollout_s > 0
    # Warm-up and two rollouts were merged into the feature statistics.
    counts = trainer.normalizer.snapshot.count["global"]
    assert counts.max() == 3 * 2 * decisions > before.count["global"].max()
    # The actor serves the learner's weights.
    for name, tensor in trainer.policy.state_dict().items():
        assert torch.equal(tensor, trainer.actor.state_dict()[name]), name


def test_the_same_seed_trains_the_same_policy() -> None:
    runs = [PPOTrainer(TINY_TRAINING) for _ in range(2)]
    stats = [trainer.iterate() for trainer in runs]
    assert stats[0].mean_episode_return == stats[1].mean_episode_return
    assert stats[0].ppo.policy_loss == stats[1].ppo.policy_loss
    for a, b in zip(runs[0].policy.parameters(), runs[1].policy.parameters(), strict=True):
        assert torch.equal(a, b)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="runs_per_rollout"):
        TrainerSettings(runs_per_rollout=0)
    with pytest.raises(ValueError, match="reward_scale"):
        TrainerSettings(reward_scale=0.0)
