"""PPO on the simulator: collect episodes, estimate advantages, update, repeat.

One iteration (``PPOTrainer.iterate``): every simulated run plays one whole episode
under the current policy, sampling its actions (``sim.rollout.run_episode``, so each
decision goes the step path's way and records the action's exact log-probability and
the critic's value); the rollout's raw features extend the running feature statistics;
GAE turns the interval rewards into advantages and returns; ``PPOLearner`` runs its
epochs of minibatches over the rollout, every step through the LearningGuard and the
LR controller. The learner trains a ``ReferencePolicy``; the actor is a
``ServingPolicy`` reloaded with the learner's weights after each update, as a
PolicyUpdate reloads Tamiyo, so what is trained is what serves.

The episode's end is terminal, not a cut: a training run that has ended has no future
reward, and the policy sees the epoch and global step, so the critic can tell.

The feature statistics are merged once per rollout, in the trainer's thread (not by
the normaliser's background worker), so a run is reproducible from its seed and the
policy sees one fixed normalisation within a rollout. Before the first rollout they are
fitted to episodes of the random policy, so the first update does not learn from
unnormalised inputs that the next rollout would no longer show.

The prioritised replay is not used: PPO's clipped ratio is a trust region around the
policy that collected the batch, and each rollout is consumed by the update that
follows it; stale or re-weighted samples from a replay would leave that region (see
docs/learning.md). Nothing here does IO: each update's figures go to a sink callback.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from leyline_vocab.events import BreakerName
from oona.breaker import BreakerSettings, CircuitBreaker
from tamiyo_bus.learning.episodes import demonstrations, observed_features, rollout_batch
from tamiyo_bus.learning.gae import GAESettings
from tamiyo_bus.learning.graph_evaluation import GraphPolicyEvaluator
from tamiyo_bus.learning.guard import LearningGuard, LearningGuardSettings
from tamiyo_bus.learning.imitation import ImitationSettings, imitate
from tamiyo_bus.learning.learner import PPOLearner, PPOUpdateStats
from tamiyo_bus.learning.ppo import PPOSettings
from tamiyo_bus.policy.baselines import RandomPolicy
from tamiyo_bus.policy.features import RunningNormalizer
from tamiyo_bus.policy.heuristic import HeuristicPolicy
from tamiyo_bus.policy.profiles import PROFILES, Profile
from tamiyo_bus.policy.reference import ReferencePolicy
from tamiyo_bus.policy.serving import ServingPolicy
from tamiyo_bus.sim.env import VectorSim
from tamiyo_bus.sim.rollout import Episode, graph_builder, run_episode
from tamiyo_bus.sim.settings import SimSettings
from tamiyo_bus.tolaria.lr import LRController, LRSettings

# Minibatches of 256 (not PPO's 64): a quarter of the optimiser steps for the same data,
# each a less noisy gradient, and 1.6x the transitions/s of the update. At 0.01 a rollout
# of 2,400 decisions stopped after two or three of them; 0.02 lets an update use its data.
TRAINER_PPO = PPOSettings(minibatch_transitions=256, target_kl=0.02)
# 4 decisions an epoch, 48 an episode (the simulator's default asks every 4 steps: 300):
# the lifecycle's delays then span a few decisions, as in the real loop, rollouts are
# steadier and an episode costs a sixth (docs/learning.md, "What was tried").
TRAINER_SIM = SimSettings(decision_every_steps=25)
# Cloning the heuristic first (3,072 of its decisions at 16 runs, 8 passes): the policy
# starts from the seed chain the heuristic walks, which PPO from scratch never found;
# twice the episodes cloned no better (docs/learning.md, "What was tried").
TRAINER_IMITATION = ImitationSettings(episodes=4, epochs=8)


def constant_lr(base_lr: float) -> LRSettings:
    """A learning rate without warm-up or decay."""
    return LRSettings(base_lr=base_lr, warmup_steps=0, total_steps=1, min_lr_ratio=1.0)


@dataclass(frozen=True)
class TrainerSettings:
    """One PPO training on the simulator: its size, its seed and each part's settings."""

    runs_per_rollout: int = 16  # simulated runs, one episode each, per update
    profile: Profile = Profile.SMALL
    reward_scale: float = 1.0  # rewards are multiplied by this before GAE
    normalizer_warmup_episodes: int = 1  # random-policy episodes (of every run) first
    seed: int = 0  # weights, simulated runs and sampling
    sim: SimSettings = field(default_factory=lambda: TRAINER_SIM)
    gae: GAESettings = field(default_factory=GAESettings)
    ppo: PPOSettings = field(default_factory=lambda: TRAINER_PPO)
    lr: LRSettings = field(default_factory=lambda: constant_lr(3e-4))
    imitation: ImitationSettings = field(default_factory=lambda: TRAINER_IMITATION)

    def __post_init__(self) -> None:
        if self.runs_per_rollout < 1 or self.normalizer_warmup_episodes < 0:
            raise ValueError("need runs_per_rollout >= 1 and normalizer_warmup_episodes >= 0")
        if not self.reward_scale > 0:
            raise ValueError("reward_scale must be > 0")


@dataclass(frozen=True, slots=True)
class TrainingStats:
    """One iteration: the rollout's returns and the update it fed."""

    update: int  # 1 for the first
    env_steps: int  # optimiser steps of all simulated runs so far
    decisions: int  # transitions learnt from so far
    mean_episode_return: float  # of this rollout's episodes, unscaled
    ppo: PPOUpdateStats
    rollout_s: float  # collecting the episodes and building the batch


TrainingSink = Callable[[TrainingStats], None]


def offline_guard(max_grad_norm: float) -> LearningGuard:
    """A guard for training outside a live run: its own learning breaker, never paused
    (there is no conservative mode to honour)."""
    breaker = CircuitBreaker(BreakerName.LEARNING, BreakerSettings())
    return LearningGuard(breaker, lambda: False, LearningGuardSettings(max_grad_norm))


class PPOTrainer:
    """The loop's state: simulator, policy (learner and actor), normaliser, learner."""

    def __init__(
        self,
        settings: TrainerSettings | None = None,
        *,
        guard: LearningGuard | None = None,
        sink: TrainingSink | None = None,
    ) -> None:
        self.settings = s = settings or TrainerSettings()
        torch.manual_seed(s.seed)
        config = PROFILES[s.profile]
        self.policy = ReferencePolicy(config)
        self.actor = ServingPolicy(config)
        self.actor.load_state_dict(self.policy.state_dict())
        self.normalizer = RunningNormalizer(update=False)
        self.sim = VectorSim(s.sim, runs=s.runs_per_rollout, seed=s.seed)
        self.builder = graph_builder(self.sim, self.normalizer)
        self.generator = torch.Generator().manual_seed(s.seed)
        self.lr = LRController(s.lr)
        self.learner = PPOLearner(
            GraphPolicyEvaluator(self.policy),
            guard or offline_guard(s.ppo.max_grad_norm),
            self.lr,
            s.ppo,
            generator=torch.Generator().manual_seed(s.seed),
        )
        self.sink = sink
        self.updates = 0
        self.env_steps = 0
        self.decisions = 0
        self.warmed_up = False
        self.imitation_losses: list[float] = []  # of each cloning step, in order

    def _observe(self, episodes: Sequence[Episode]) -> None:
        merged = self.normalizer.snapshot.merged(observed_features(episodes))
        self.normalizer.load(merged)

    def warm_up(self) -> None:
        """Once: fit the feature statistics to random-policy episodes, then clone the
        heuristic if the settings ask for it."""
        if self.warmed_up:
            return
        self.warmed_up = True
        s = self.settings
        policies = [RandomPolicy()] * self.sim.runs
        for _ in range(s.normalizer_warmup_episodes):
            self._observe(run_episode(self.sim, policies, self.builder, generator=self.generator))
        taught: list[Episode] = []
        for _ in range(s.imitation.episodes):
            teachers = [HeuristicPolicy() for _ in range(self.sim.runs)]
            played = run_episode(self.sim, teachers, self.builder, generator=self.generator)
            self._observe(played)
            taught.extend(played)
        if taught:
            learner = self.learner
            self.imitation_losses = imitate(
                learner.evaluator,
                learner.optimizer,
                learner.guard,
                demonstrations(taught, s.gae.gamma, s.reward_scale),
                s.imitation,
                learner.generator,
            )
            self.actor.load_state_dict(self.policy.state_dict())

    def iterate(self) -> TrainingStats:
        """One rollout of every run, then one PPO update on it."""
        self.warm_up()
        s = self.settings
        started = time.perf_counter()
        episodes = run_episode(
            self.sim, [self.actor] * self.sim.runs, self.builder, generator=self.generator
        )
        self._observe(episodes)
        batch = rollout_batch(episodes, s.gae, s.reward_scale)
        rollout_s = time.perf_counter() - started
        ppo = self.learner.update(batch)
        self.actor.load_state_dict(self.policy.state_dict())
        self.updates += 1
        self.env_steps += self.sim.runs * s.sim.total_steps
        self.decisions += len(batch)
        stats = TrainingStats(
            update=self.updates,
            env_steps=self.env_steps,
            decisions=self.decisions,
            mean_episode_return=float(np.mean([e.episode_return for e in episodes])),
            ppo=ppo,
            rollout_s=rollout_s,
        )
        if self.sink is not None:
            self.sink(stats)
        return stats
