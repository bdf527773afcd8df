"""From played episodes to what learning consumes (pure: no IO, no module).

A rollout becomes a PPO batch (GAE over each episode, its last decision terminal), a
teacher's episodes become demonstrations (its choices and discounted returns), and
every decision's raw features become the feature statistics' next observations. All
keep the decisions in order, episode after episode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from tamiyo_bus.learning.gae import GAESettings, compute_gae, next_state_values
from tamiyo_bus.learning.graph_batch import GraphTransitions
from tamiyo_bus.learning.learner import PPOBatch
from tamiyo_bus.policy.features import RawFeatures
from tamiyo_bus.policy.schema import NODE_TYPES
from tamiyo_bus.sim.rollout import Episode


def decision_inputs(episodes: Sequence[Episode]) -> GraphTransitions:
    """Every decision's graph and the choice made on it."""
    records = [r for episode in episodes for r in episode.records]
    return GraphTransitions.of([r.graph for r in records], [r.action for r in records])


def episode_rewards(episode: Episode, reward_scale: float) -> npt.NDArray[np.float32]:
    return np.array([r.reward for r in episode.records], np.float32) * reward_scale


def terminal(episode: Episode) -> npt.NDArray[np.bool_]:
    """Where the episode ended: a training run that ended has no future reward."""
    return np.array([r.done for r in episode.records], np.bool_)


def rollout_batch(
    episodes: Sequence[Episode], gae: GAESettings, reward_scale: float = 1.0
) -> PPOBatch[GraphTransitions]:
    """The episodes' decisions as one PPO batch, with GAE over each episode."""
    log_probs, values, advantages, returns = [], [], [], []
    for episode in episodes:
        value = np.array([r.value for r in episode.records], np.float32)
        ended = terminal(episode)
        cut = np.zeros_like(ended)
        following = next_state_values(value, np.float32(0.0), cut)
        estimate = compute_gae(
            episode_rewards(episode, reward_scale), value, following, ended, cut, gae
        )
        log_probs.append(np.array([r.log_prob for r in episode.records], np.float32))
        values.append(value)
        advantages.append(estimate.advantages)
        returns.append(estimate.returns)
    return PPOBatch(
        decision_inputs(episodes),
        torch.from_numpy(np.concatenate(log_probs)),
        torch.from_numpy(np.concatenate(values)),
        torch.from_numpy(np.concatenate(advantages)),
        torch.from_numpy(np.concatenate(returns)),
    )


@dataclass(frozen=True, slots=True)
class Demonstrations:
    """The teacher's decisions and its discounted return from each one."""

    inputs: GraphTransitions
    returns: Tensor  # [T]

    def __len__(self) -> int:
        return len(self.inputs)


def demonstrations(
    episodes: Sequence[Episode], gamma: float, reward_scale: float = 1.0
) -> Demonstrations:
    """A teacher's episodes; each return is discounted to its episode's end."""
    monte_carlo = GAESettings(gamma=gamma, gae_lambda=1.0)
    returns = []
    for episode in episodes:
        rewards = episode_rewards(episode, reward_scale)
        zeros = np.zeros_like(rewards)
        ended = terminal(episode)
        estimate = compute_gae(rewards, zeros, zeros, ended, np.zeros_like(ended), monte_carlo)
        returns.append(estimate.returns)
    return Demonstrations(decision_inputs(episodes), torch.from_numpy(np.concatenate(returns)))


def observed_features(episodes: Sequence[Episode]) -> dict[str, list[RawFeatures]]:
    """Every decision's raw features, per node type (what the normaliser merges)."""
    batch: dict[str, list[RawFeatures]] = {t: [] for t in NODE_TYPES}
    for episode in episodes:
        for record in episode.records:
            for node_type, raw in record.graph.raw.items():
                batch[node_type].append(raw)
    return batch
