"""A simulated actor: plays the simulator with the running policy and publishes what it
decided as rewarded trajectory segments (the actors of an actor-learner split).

Each episode every simulated run plays under the policy the holder runs now (a
PolicyUpdate from the learner replaces it between episodes); each decision becomes a
TrajectoryStep exactly as Tamiyo's step path records one (the same encoder and
segments), with its interval reward and the episode's end filled in, so a learner
trains on the segment as it arrives. A segment cut before the episode's end carries the
value of the state after it (the next segment's first), so its last decision is learnt
from too: a change of the run's structure cuts a segment, and without it every decision
that changed the structure (a germination, a cull) went unlearnt. While
``publishing_allowed`` says no (the actor's conservative mode), episodes are played and
nothing is published.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import torch

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.experience.recorder import TrajectorySink
from tamiyo_bus.experience.segments import ExperienceSettings, Segmenter
from tamiyo_bus.experience.steps import StepOutcome, trajectory_step
from tamiyo_bus.learning.replay.codec import Topology
from tamiyo_bus.learning.reward import Progress
from tamiyo_bus.policy.default import default_feature_statistics
from tamiyo_bus.policy.features import NormalizerSnapshot, RunningNormalizer
from tamiyo_bus.policy.serving import DecisionPolicy
from tamiyo_bus.policy.structure import GraphStructure
from tamiyo_bus.security.policy_update import PolicyHolder
from tamiyo_bus.sim.env import VectorSim
from tamiyo_bus.sim.rollout import Episode, graph_builder, run_episode
from tamiyo_bus.sim.settings import SimSettings

# A rewarded step carries its reward: the progress a learner would compute it from is
# not needed, and is left unreported.
_NOT_NEEDED = Progress(loss=math.nan, accuracy=math.nan, parameter_ratio=math.nan)


@dataclass(frozen=True)
class ActorSettings:
    """One simulated actor: how many runs it plays side by side, and their seed."""

    runs: int = 4
    seed: int = 0
    sim: SimSettings = field(default_factory=SimSettings)
    experience: ExperienceSettings = field(default_factory=ExperienceSettings)


@dataclass(slots=True)
class ActorStats:
    episodes: int = 0
    decisions: int = 0
    segments: int = 0
    withheld_episodes: int = 0  # played while publishing was not allowed
    last_mean_return: float = 0.0
    policy_version: int = 0  # of the last episode


def actor_statistics() -> NormalizerSnapshot:
    """The feature statistics every actor decides on, fixed, and the learner's gate
    judges candidates on: the shipped default policy's, fitted to the simulator's
    states. Without statistics the features reach the network unscaled, and one
    learner step moves the policy by whole nats (measured: docs/learning.md)."""
    return default_feature_statistics()


class SimActor:
    def __init__(
        self,
        settings: ActorSettings,
        holder: PolicyHolder,
        sink: TrajectorySink,
        *,
        actor_id: str,
        publishing_allowed: Callable[[], bool] = lambda: True,
        statistics: NormalizerSnapshot | None = None,
    ) -> None:
        self.settings = settings
        self.holder = holder
        self.actor_id = actor_id
        self.stats = ActorStats()
        self._sink = sink
        self._publishing_allowed = publishing_allowed
        self._sim = VectorSim(settings.sim, runs=settings.runs, seed=settings.seed)
        features = RunningNormalizer(update=False)
        features.load(statistics if statistics is not None else actor_statistics())
        self._builder = graph_builder(self._sim, features)
        self._generator = torch.Generator().manual_seed(settings.seed)
        self._topologies: dict[int, Topology] = {}

    def play(self) -> list[Episode]:
        """One episode of every run under the running policy; its segments go out."""
        running = self.holder.current()
        policy = cast(DecisionPolicy, running.module)
        episodes = run_episode(
            self._sim, [policy] * self._sim.runs, self._builder, generator=self._generator
        )
        s = self.stats
        s.episodes += 1
        s.policy_version = running.version
        s.last_mean_return = sum(e.episode_return for e in episodes) / len(episodes)
        if not self._publishing_allowed():
            s.withheld_episodes += 1
            return episodes
        for episode in episodes:
            for segment in self._segments(episode, running.version, running.architecture_id):
                self._sink(segment)
                s.segments += 1
            s.decisions += len(episode.records)
        return episodes

    def _topology(self, structure: GraphStructure) -> Topology:
        known = self._topologies.get(id(structure))
        if known is None or known.structure is not structure:
            known = self._topologies[id(structure)] = Topology(structure)
        return known

    def _segments(self, episode: Episode, version: int, architecture: str) -> list[pb.Trajectory]:
        segments = Segmenter(self.settings.experience, self.actor_id)
        closed: list[pb.Trajectory] = []
        now = time.monotonic()
        for record in episode.records:
            packet_step = record.command.global_step
            step = trajectory_step(
                self._topology(record.graph.structure),
                record.graph,
                record.action,
                log_prob=record.log_prob,
                value=record.value,
                policy_version=version,
                decision_step=packet_step,
                progress=_NOT_NEEDED,
                outcome=StepOutcome(
                    command_id=f"{episode.training_run_id}/{packet_step}",
                    applied_step=packet_step,
                    acted=record.command.command_type != pb.COMMAND_TYPE_NO_OP,
                    risk_category=0,
                ),
            )
            step.reward = record.reward
            step.done = record.done
            closed += segments.add(
                episode.training_run_id,
                self._topology(record.graph.structure),
                architecture,
                step,
                now_s=now,
            )
        closed.append(
            segments.end_run(episode.training_run_id, Progress.of_packet(episode.final_state))
        )
        for segment, following in itertools.pairwise(closed):
            if segment.steps and not segment.steps[-1].done and following.steps:
                segment.bootstrap_value = following.steps[0].behaviour_value
        for segment in closed:
            segment.rewarded = True
        return closed
