"""PPO on the cart-pole with small MLPs: rollouts of vectorised environments."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tamiyo_bus.learning.evaluation import CategoricalEvaluator, CategoricalInputs
from tamiyo_bus.learning.gae import compute_gae, next_state_values
from tamiyo_bus.learning.learner import PPOBatch, PPOLearner

from .cartpole import CartPoles

REWARD_SCALE = 0.1  # keeps returns near 10, so the critic's gradient does not swamp the clip


class ActorCritic(nn.Module):
    """Separate tanh MLPs for the logits and the value (no shared body)."""

    def __init__(self, observations: int = 4, actions: int = 2, hidden: int = 64) -> None:
        super().__init__()

        def mlp(out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Linear(observations, hidden),
                nn.Tanh(),
                nn.Linear(hidden, hidden),
                nn.Tanh(),
                nn.Linear(hidden, out),
            )

        self.actor, self.critic = mlp(actions), mlp(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.actor(x), self.critic(x).squeeze(-1)


def collect(
    model: ActorCritic, env: CartPoles, steps: int, generator: torch.Generator
) -> PPOBatch[CategoricalInputs]:
    """``steps`` steps of every environment under the current policy, with GAE."""
    n = len(env.elapsed)
    obs = np.zeros((steps, n, 4), np.float32)
    actions = np.zeros((steps, n), np.int64)
    log_probs, values, rewards, finals = (np.zeros((steps, n), np.float32) for _ in range(4))
    terminated, truncated = np.zeros((steps, n), np.bool_), np.zeros((steps, n), np.bool_)
    with torch.no_grad():
        for t in range(steps):
            obs[t] = env.observation
            logits, value = model(torch.from_numpy(obs[t]))
            action = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)[:, 0]
            log_probs[t] = torch.log_softmax(logits, -1).gather(1, action[:, None])[:, 0]
            values[t], actions[t] = value.numpy(), action.numpy()
            step = env.step(actions[t])
            rewards[t] = step.reward * REWARD_SCALE
            terminated[t], truncated[t] = step.terminated, step.truncated
            if step.truncated.any():
                finals[t] = model(torch.from_numpy(step.final_observation))[1].numpy()
        last = model(torch.from_numpy(env.observation))[1].numpy()
    next_values = next_state_values(values, last, truncated, finals)
    gae = compute_gae(rewards, values, next_values, terminated, truncated)
    inputs = CategoricalInputs(
        torch.from_numpy(obs.reshape(steps * n, 4)), torch.from_numpy(actions.reshape(-1))
    )
    return PPOBatch.of(inputs, log_probs, values, gae)


def train(
    learner: PPOLearner[CategoricalInputs], model: ActorCritic, env: CartPoles, updates: int
) -> list[float]:
    """Mean length of the last 20 finished episodes after each update."""
    generator = torch.Generator().manual_seed(0)
    means = []
    for _ in range(updates):
        learner.update(collect(model, env, 128, generator))
        means.append(float(np.mean(env.finished_lengths[-20:])))
    return means


def evaluator(model: ActorCritic) -> CategoricalEvaluator:
    return CategoricalEvaluator(model)
