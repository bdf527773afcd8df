"""Simulated runs as the experience a Tamiyo publishes: trajectories and field reports.

Each episode's decisions go through the same encoder and segmenter as the step path's
(``experience.steps``, ``experience.segments``), each with the command id the
simulator's Kasmina and field reports know it by; a decision acted when its command
was not a NO_OP and the simulated Kasmina applied it (only those open a field-report
window). Segments also carry the simulator's interval reward and episode end
(``TrajectoryStep.reward``, ``done``), which a simulated actor knows at once. The
learner's tests and benchmark use this for volume; a learner cannot tell it from a run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.experience.segments import ExperienceSettings, Segmenter
from tamiyo_bus.experience.steps import StepOutcome, trajectory_step
from tamiyo_bus.learning.replay.codec import Topology
from tamiyo_bus.learning.reward import Progress
from tamiyo_bus.policy.structure import GraphStructure
from tamiyo_bus.risk import Category
from tamiyo_bus.sim.rollout import Episode


@dataclass(frozen=True)
class SimulatedExperience:
    segments: list[pb.Trajectory]  # in publishing order
    reports: list[pb.FieldReport]


def episode_experience(
    episodes: Sequence[Episode],
    *,
    architecture_id: str,
    policy_version: int,
    actor_id: str = "simulated",
    settings: ExperienceSettings | None = None,
) -> SimulatedExperience:
    """The segments and field reports of ``episodes``, each run ended with its end."""
    segmenter = Segmenter(settings or ExperienceSettings(), actor_id)
    topologies: dict[int, tuple[GraphStructure, Topology]] = {}
    segments: list[pb.Trajectory] = []
    reports: list[pb.FieldReport] = []
    for episode in episodes:
        run = episode.training_run_id
        for record in episode.records:
            structure = record.graph.structure
            if id(structure) not in topologies:
                topologies[id(structure)] = (structure, Topology(structure))
            topology = topologies[id(structure)][1]
            command = record.command
            acted = command.command_type != pb.COMMAND_TYPE_NO_OP and record.result.applied
            step = trajectory_step(
                topology,
                record.graph,
                record.action,
                log_prob=record.log_prob,
                value=record.value,
                policy_version=policy_version,
                decision_step=command.global_step,
                progress=record.progress,
                outcome=StepOutcome(
                    record.result.command_id, command.global_step, acted, Category.GREEN
                ),
            )
            step.reward = record.reward
            step.done = record.done
            segments.extend(segmenter.add(run, topology, architecture_id, step, now_s=0.0))
        segments.append(segmenter.end_run(run, Progress.of_packet(episode.final_state)))
        reports.extend(episode.reports)
    return SimulatedExperience(segments, reports)
